package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/oauthex"
	"go.uber.org/zap"
	"golang.org/x/oauth2"
)

// connectOAuth is the OAuth client of `caddy mcp-bridge connect --oauth`.
// On a 401 whose challenge names protected resource metadata, it runs the
// authorization-code flow (the go-sdk's auth.AuthorizationCodeHandler:
// metadata discovery, dynamic registration, PKCE, resource indicators)
// with a redirect to a listener of its own on 127.0.0.1, and keeps the
// tokens, with what refreshing them takes, in a file of the user's config
// dir, readable by the user alone, so that the next start signs in with
// no browser.
type connectOAuth struct {
	resource string // the remote's URL, whose tokens these are
	path     string // the token file
	browser  bool   // try to open the authorization URL in a browser
	stderr   io.Writer
	log      *zap.Logger

	mu     sync.Mutex
	ts     oauth2.TokenSource // nil before the first sign-in
	record connectTokens      // the token file, but the token
	saved  string             // the access token last written to the file
	flight *authFlight        // the sign-in under way, if any
}

// authFlight is a sign-in that every request refused meanwhile waits for.
type authFlight struct {
	done chan struct{}
	err  error
}

// connectTokens is the token file: the tokens, and the client registration
// and endpoints that refreshing them takes.
type connectTokens struct {
	URL          string           `json:"url"`
	ClientID     string           `json:"client_id"`
	ClientSecret string           `json:"client_secret,omitempty"`
	AuthURL      string           `json:"auth_url"`
	TokenURL     string           `json:"token_url"`
	AuthStyle    oauth2.AuthStyle `json:"auth_style"`
	RedirectURL  string           `json:"redirect_url"`
	Scopes       []string         `json:"scopes,omitempty"`
	Token        *oauth2.Token    `json:"token"`
}

func (t *connectTokens) config() *oauth2.Config {
	return &oauth2.Config{
		ClientID: t.ClientID, ClientSecret: t.ClientSecret,
		Endpoint:    oauth2.Endpoint{AuthURL: t.AuthURL, TokenURL: t.TokenURL, AuthStyle: t.AuthStyle},
		RedirectURL: t.RedirectURL, Scopes: t.Scopes,
	}
}

// connectTokenFile is where the tokens for the remote at resource are
// kept: <config dir>/caddy-mcp-bridge/tokens/<hash of the URL>.json.
func connectTokenFile(resource string) (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("--oauth keeps tokens in the user's config directory: %w", err)
	}
	sum := sha256.Sum256([]byte(resource))
	return filepath.Join(dir, "caddy-mcp-bridge", "tokens", hex.EncodeToString(sum[:16])+".json"), nil
}

// newConnectOAuth returns the OAuth client for the remote at resource,
// with the tokens of an earlier start, if any.
func newConnectOAuth(resource string, browser bool, stderr io.Writer, log *zap.Logger) (*connectOAuth, error) {
	path, err := connectTokenFile(resource)
	if err != nil {
		return nil, err
	}
	o := &connectOAuth{resource: resource, path: path, browser: browser, stderr: stderr, log: log}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return o, nil
	case err != nil:
		return nil, err
	}
	var saved connectTokens
	if err := json.Unmarshal(data, &saved); err != nil || saved.URL != resource || saved.Token == nil {
		log.Warn("ignoring a token file that is not for this URL, or not readable; signing in again", zap.String("file", path))
		return o, nil
	}
	o.ts = saved.config().TokenSource(context.Background(), saved.Token)
	o.saved = saved.Token.AccessToken
	saved.Token = nil
	o.record = saved
	log.Debug("using the OAuth tokens of an earlier sign-in", zap.String("file", path))
	return o, nil
}

// Apply sets the current access token, refreshed if it expired. A token
// that cannot be refreshed is left out: the remote refuses the request,
// and Refused signs in again.
func (o *connectOAuth) Apply(_ context.Context, h http.Header) error {
	o.mu.Lock()
	ts := o.ts
	o.mu.Unlock()
	if ts == nil {
		return nil
	}
	tok, err := ts.Token()
	if err != nil {
		o.log.Warn("cannot refresh the OAuth access token; signing in again if the remote refuses", zap.Error(err))
		return nil
	}
	h["Authorization"] = []string{"Bearer " + tok.AccessToken}
	o.keep(tok)
	return nil
}

// keep writes tok to the token file, when it is not what the file holds.
func (o *connectOAuth) keep(tok *oauth2.Token) {
	o.mu.Lock()
	if tok.AccessToken == o.saved {
		o.mu.Unlock()
		return
	}
	o.saved = tok.AccessToken
	record := o.record
	o.mu.Unlock()
	record.Token = tok
	data, err := json.MarshalIndent(record, "", "  ")
	if err == nil {
		err = os.MkdirAll(filepath.Dir(o.path), 0o700)
	}
	if err == nil {
		err = writeFileAtomic(o.path, string(data)+"\n")
	}
	if err != nil {
		o.log.Warn("cannot keep the OAuth tokens; the next start signs in again", zap.String("file", o.path), zap.Error(err))
	}
}

// Refused signs in after a 401 that names protected resource metadata,
// and reports whether the request is worth sending again: with a token
// obtained since it was sent, or by this sign-in. Concurrent refusals wait
// for one sign-in.
func (o *connectOAuth) Refused(ctx context.Context, resp *http.Response) (bool, error) {
	if !strings.Contains(resp.Header.Get("WWW-Authenticate"), "resource_metadata") {
		return false, nil
	}
	o.mu.Lock()
	if o.saved != "" && resp.Request.Header.Get("Authorization") != "Bearer "+o.saved {
		o.mu.Unlock()
		return true, nil // sent before the last sign-in or refresh
	}
	if f := o.flight; f != nil {
		o.mu.Unlock()
		select {
		case <-f.done:
			return f.err == nil, f.err
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	f := &authFlight{done: make(chan struct{})}
	o.flight = f
	o.mu.Unlock()
	f.err = o.signIn(ctx, resp)
	o.mu.Lock()
	o.flight = nil
	o.mu.Unlock()
	close(f.done)
	return f.err == nil, f.err
}

// callbackPath is where the authorization server sends the browser back.
const callbackPath = "/callback"

// signIn runs the authorization-code flow for the refused response resp,
// and keeps the tokens it gets.
func (o *connectOAuth) signIn(ctx context.Context, resp *http.Response) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("cannot listen for the sign-in's redirect: %w", err)
	}
	redirect := fmt.Sprintf("http://%s%s", l.Addr(), callbackPath)
	results := make(chan *auth.AuthorizationResult, 1)
	failures := make(chan error, 1)
	srv := &http.Server{Handler: callbackHandler(results, failures), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(l)
	}()
	defer func() {
		srv.Close()
		<-served
	}()

	var record connectTokens
	h, err := auth.NewAuthorizationCodeHandler(&auth.AuthorizationCodeHandlerConfig{
		DynamicClientRegistrationConfig: &auth.DynamicClientRegistrationConfig{
			Metadata: &oauthex.ClientRegistrationMetadata{
				ClientName:              "caddy mcp-bridge connect",
				RedirectURIs:            []string{redirect},
				TokenEndpointAuthMethod: "none",
				GrantTypes:              []string{"authorization_code", "refresh_token"},
				ResponseTypes:           []string{"code"},
			},
		},
		RedirectURL:         redirect,
		RequestRefreshToken: true,
		AuthorizationCodeFetcher: func(ctx context.Context, args *auth.AuthorizationArgs) (*auth.AuthorizationResult, error) {
			fmt.Fprintf(o.stderr, "\ncaddy mcp-bridge connect: %s asks you to sign in. Open this URL in a browser:\n\n  %s\n\n", o.resource, args.URL)
			if o.browser {
				openBrowser(ctx, args.URL)
			}
			select {
			case r := <-results:
				return r, nil
			case err := <-failures:
				return nil, err
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
		NewTokenSource: func(ctx context.Context, cfg *oauth2.Config, tok *oauth2.Token) (oauth2.TokenSource, error) {
			record = connectTokens{
				URL: o.resource, ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret,
				AuthURL: cfg.Endpoint.AuthURL, TokenURL: cfg.Endpoint.TokenURL, AuthStyle: cfg.Endpoint.AuthStyle,
				RedirectURL: cfg.RedirectURL, Scopes: cfg.Scopes,
			}
			return cfg.TokenSource(ctx, tok), nil
		},
	})
	if err != nil {
		return err
	}
	if err := h.Authorize(ctx, resp.Request, resp); err != nil {
		return fmt.Errorf("signing in: %w", err)
	}
	ts, err := h.TokenSource(ctx)
	if err != nil || ts == nil {
		return fmt.Errorf("signing in gave no token: %v", err)
	}
	tok, err := ts.Token()
	if err != nil {
		return err
	}
	o.mu.Lock()
	o.ts, o.record, o.saved = ts, record, ""
	o.mu.Unlock()
	o.keep(tok)
	o.log.Info("signed in; keeping the tokens for the next start", zap.String("file", o.path))
	return nil
}

// callbackHandler takes the browser back from the authorization server,
// once, and hands on what it brought.
func callbackHandler(results chan<- *auth.AuthorizationResult, failures chan<- error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+callbackPath, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if e := q.Get("error"); e != "" {
			msg := e
			if d := q.Get("error_description"); d != "" {
				msg += ": " + d
			}
			select {
			case failures <- fmt.Errorf("the authorization server refused: %s", msg):
			default:
			}
			fmt.Fprintf(w, "<!doctype html><p>Signing in failed: %s.</p>", html.EscapeString(msg))
			return
		}
		select {
		case results <- &auth.AuthorizationResult{Code: q.Get("code"), State: q.Get("state"), Iss: q.Get("iss")}:
		default:
		}
		io.WriteString(w, "<!doctype html><p>Signed in. You may close this window and go back to your MCP client.</p>")
	})
	return mux
}

// openBrowser tries to show url in the user's browser; the URL is printed
// anyway, so a failure only logs nothing.
func openBrowser(ctx context.Context, url string) {
	var name string
	var args []string
	switch runtime.GOOS {
	case "darwin":
		name, args = "open", []string{url}
	case "windows":
		name, args = "rundll32", []string{"url.dll,FileProtocolHandler", url}
	default:
		name, args = "xdg-open", []string{url}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// Its output must not reach stdout, which carries the protocol.
	_ = exec.CommandContext(ctx, name, args...).Run()
}
