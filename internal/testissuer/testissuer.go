// Package testissuer runs a real OAuth 2.1 / OpenID Connect authorization
// server for tests, in process, on 127.0.0.1 with a random port.
//
// The server is the OpenID provider of github.com/zitadel/oidc/v3/pkg/op on
// top of that module's in-memory example storage, wrapped to add what an MCP
// client needs and zitadel lacks:
//
//   - RFC 8414 metadata at /.well-known/oauth-authorization-server (and the
//     OpenID discovery document at /.well-known/openid-configuration), both
//     listing registration_endpoint, code_challenge_methods_supported ["S256"],
//     the scopes of [Options.Scopes], the introspection endpoint and
//     authorization_response_iss_parameter_supported;
//   - RFC 7591 dynamic client registration at /register;
//   - RFC 8707 resource indicators: the resource parameter of the
//     authorization request (or of the token request) becomes the access
//     token's audience;
//   - RFC 9207: the authorization response carries iss;
//   - JWT access tokens with client_id and a space-separated scope claim, or
//     opaque ones checked by RFC 7662 introspection ([Options.Opaque]);
//   - a login step without a page: the user is the login_hint of the
//     authorization request ("alice" without one), so that an HTTP client
//     that follows redirects ends at the client's redirect URI with
//     ?code=...&state=...&iss=....
//
// Because the issuer advertises RFC 9207 support, an AuthorizationCodeFetcher
// of the go-sdk's auth package must copy the iss parameter of the redirect
// into AuthorizationResult.Iss.
package testissuer

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// Options configures an issuer started by [Start].
type Options struct {
	// Opaque makes the issuer hand out opaque access tokens (checked by
	// introspection) instead of JWTs.
	Opaque bool
	// AccessTokenLifetime is how long access tokens live. Default 1h.
	AccessTokenLifetime time.Duration
	// Scopes are the scopes the issuer supports besides
	// openid/profile/email/offline_access (e.g. "mcp:tools"), listed in its
	// metadata. An authorization request without a scope parameter is
	// granted all of them (or "openid" when there are none).
	Scopes []string
}

// Issuer is a running authorization server. Its methods are safe for
// concurrent use.
type Issuer struct {
	url      string
	opts     Options
	store    *issuerStorage
	provider *op.Provider
	server   *http.Server
	client   *http.Client

	rsID     string
	rsSecret string
}

// Paths the issuer serves besides zitadel's own endpoints.
const (
	registerPath = "/register"
	loginPath    = "/login"
)

// The users the issuer knows: their subject (sub) is their name.
var userNames = []string{"alice", "bob"}

// defaultUser is the user logged in when the authorization request has no
// login_hint.
const defaultUser = "alice"

// Start starts an issuer on 127.0.0.1:0 and stops it with t.Cleanup.
func Start(t testing.TB, opts Options) *Issuer {
	t.Helper()
	i, err := New(opts)
	if err != nil {
		t.Fatalf("testissuer: %v", err)
	}
	t.Cleanup(i.Close)
	return i
}

// New starts an issuer on 127.0.0.1:0, for programs other than tests (the
// benchmark); Close stops it.
func New(opts Options) (*Issuer, error) {
	if opts.AccessTokenLifetime <= 0 {
		opts.AccessTokenLifetime = time.Hour
	}
	opts.Scopes = append([]string(nil), opts.Scopes...)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	i := &Issuer{
		url:      "http://" + ln.Addr().String(),
		opts:     opts,
		rsID:     "resource-server",
		rsSecret: rand.Text(),
	}
	store, err := newIssuerStorage(i.url, opts)
	if err != nil {
		ln.Close()
		return nil, err
	}
	i.store = store
	store.addClient(store.newClient(storage.WebClient(i.rsID, i.rsSecret), oidc.AuthMethodBasic, i.rsSecret))

	var cryptoKey [32]byte
	if _, err := rand.Read(cryptoKey[:]); err != nil {
		ln.Close()
		return nil, err
	}
	config := &op.Config{
		CryptoKey:             cryptoKey,
		CodeMethodS256:        true,
		AuthMethodPost:        true,
		GrantTypeRefreshToken: true,
		SupportedScopes:       supportedScopes(opts.Scopes),
	}
	i.provider, err = op.NewProvider(config, store, op.StaticIssuer(i.url), op.WithAllowInsecure())
	if err != nil {
		ln.Close()
		return nil, err
	}

	transport := http.DefaultTransport.(*http.Transport).Clone()
	i.client = &http.Client{Transport: transport, Timeout: 30 * time.Second}
	i.server = &http.Server{Handler: i.handler(), ReadHeaderTimeout: 10 * time.Second}
	go i.server.Serve(ln)
	return i, nil
}

// Close shuts the server down and closes the connections of its own
// client.
func (i *Issuer) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := i.server.Shutdown(ctx); err != nil {
		i.server.Close()
	}
	i.client.CloseIdleConnections()
}

// supportedScopes returns the scopes listed in the metadata: the OpenID ones
// the issuer handles, then the extra ones, without duplicates.
func supportedScopes(extra []string) []string {
	scopes := []string{oidc.ScopeOpenID, oidc.ScopeProfile, oidc.ScopeEmail, oidc.ScopeOfflineAccess}
	for _, s := range extra {
		if !slices.Contains(scopes, s) {
			scopes = append(scopes, s)
		}
	}
	return scopes
}

// URL returns the issuer identifier, "http://127.0.0.1:PORT" (no trailing
// slash). It equals the iss claim of its tokens and the "issuer" of its
// metadata.
func (i *Issuer) URL() string { return i.url }

// Users returns the names of the users the issuer knows, "alice" and "bob".
// A user's subject (the sub claim) is its name.
func (i *Issuer) Users() []string { return append([]string(nil), userNames...) }

// IntrospectionClient returns the client id and secret of a confidential
// client that may call the introspection endpoint (RFC 7662) with
// client_secret_basic: the resource server's credentials.
func (i *Issuer) IntrospectionClient() (id, secret string) { return i.rsID, i.rsSecret }

// RotateKey makes a new RSA signing key with a new kid; tokens are signed
// with it from now on, and the JWKS serves the new key (and, if keepOld, the
// keys it served before too).
func (i *Issuer) RotateKey(keepOld bool) {
	if err := i.store.keys.rotate(keepOld); err != nil {
		panic(fmt.Sprintf("testissuer: rotating the key: %v", err))
	}
}

// Mint signs an access token with the issuer's current signing key and the
// given claims, for tests of bad tokens (expired, another audience). The
// claims override the defaults: iss = URL, iat = now, exp = now + the access
// token lifetime, jti random. Minted tokens are unknown to the introspection
// endpoint, which reports them inactive.
func (i *Issuer) Mint(claims map[string]any) string {
	now := time.Now()
	all := map[string]any{
		"iss": i.url,
		"iat": now.Unix(),
		"exp": now.Add(i.opts.AccessTokenLifetime).Unix(),
		"jti": rand.Text(),
	}
	for k, v := range claims {
		all[k] = v
	}
	payload, err := json.Marshal(all)
	if err != nil {
		panic(fmt.Sprintf("testissuer: Mint: claims: %v", err))
	}
	key := i.store.keys.current()
	signer, err := jose.NewSigner(jose.SigningKey{
		Algorithm: jose.RS256,
		Key:       &jose.JSONWebKey{Key: key.private, KeyID: key.id},
	}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		panic(fmt.Sprintf("testissuer: Mint: %v", err))
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		panic(fmt.Sprintf("testissuer: Mint: %v", err))
	}
	token, err := jws.CompactSerialize()
	if err != nil {
		panic(fmt.Sprintf("testissuer: Mint: %v", err))
	}
	return token
}

// tokenRedirectURI is the redirect URI of the clients Token registers. Nothing
// listens there: Token stops at the redirect to it.
const tokenRedirectURI = "http://127.0.0.1:9/callback"

// Token runs the whole authorization-code flow with PKCE over HTTP, as a
// client would: it registers a public client by dynamic client
// registration, GETs the authorize URL with login_hint=user, follows the
// redirects up to the redirect URI, and exchanges the code at the token
// endpoint. It returns the access token. resource, unless empty, is sent as
// the RFC 8707 resource parameter of both requests and becomes the token's
// aud; scopes are requested (all of Options.Scopes when none are given).
func (i *Issuer) Token(ctx context.Context, user, resource string, scopes ...string) (string, error) {
	meta, err := i.metadata(ctx)
	if err != nil {
		return "", err
	}
	clientID, err := i.register(ctx, meta.RegistrationEndpoint)
	if err != nil {
		return "", err
	}

	verifier := rand.Text() + rand.Text()
	sum := sha256.Sum256([]byte(verifier))
	state := rand.Text()
	q := url.Values{
		"response_type":         {"code"},
		"client_id":             {clientID},
		"redirect_uri":          {tokenRedirectURI},
		"state":                 {state},
		"code_challenge":        {base64.RawURLEncoding.EncodeToString(sum[:])},
		"code_challenge_method": {"S256"},
	}
	if len(scopes) > 0 {
		q.Set("scope", strings.Join(scopes, " "))
	}
	if resource != "" {
		q.Set("resource", resource)
	}
	if user != "" {
		q.Set("login_hint", user)
	}
	callback, err := i.authorize(ctx, meta.AuthorizationEndpoint+"?"+q.Encode(), tokenRedirectURI)
	if err != nil {
		return "", err
	}
	cq := callback.Query()
	if e := cq.Get("error"); e != "" {
		return "", fmt.Errorf("testissuer: authorization failed: %s: %s", e, cq.Get("error_description"))
	}
	if cq.Get("state") != state {
		return "", fmt.Errorf("testissuer: authorization response state %q, want %q", cq.Get("state"), state)
	}
	if cq.Get("iss") != i.url {
		return "", fmt.Errorf("testissuer: authorization response iss %q, want %q", cq.Get("iss"), i.url)
	}

	form := url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {cq.Get("code")},
		"redirect_uri":  {tokenRedirectURI},
		"client_id":     {clientID},
		"code_verifier": {verifier},
	}
	if resource != "" {
		form.Set("resource", resource)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := i.postForm(ctx, meta.TokenEndpoint, form, &tok); err != nil {
		return "", fmt.Errorf("testissuer: token request: %w", err)
	}
	if tok.AccessToken == "" {
		return "", errors.New("testissuer: token response without access_token")
	}
	return tok.AccessToken, nil
}

// asMetadata holds the fields of the authorization server metadata that
// Token uses.
type asMetadata struct {
	AuthorizationEndpoint string `json:"authorization_endpoint"`
	TokenEndpoint         string `json:"token_endpoint"`
	RegistrationEndpoint  string `json:"registration_endpoint"`
}

// metadata fetches the RFC 8414 metadata, as a client discovers it.
func (i *Issuer) metadata(ctx context.Context) (*asMetadata, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, i.url+"/.well-known/oauth-authorization-server", nil)
	if err != nil {
		return nil, err
	}
	var meta asMetadata
	if err := i.do(req, http.StatusOK, &meta); err != nil {
		return nil, fmt.Errorf("testissuer: metadata: %w", err)
	}
	return &meta, nil
}

// register registers a public client by RFC 7591 and returns its id.
func (i *Issuer) register(ctx context.Context, endpoint string) (string, error) {
	body, _ := json.Marshal(map[string]any{
		"redirect_uris":              []string{tokenRedirectURI},
		"client_name":                "testissuer.Token",
		"grant_types":                []string{"authorization_code", "refresh_token"},
		"response_types":             []string{"code"},
		"token_endpoint_auth_method": "none",
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(string(body)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	var reg struct {
		ClientID string `json:"client_id"`
	}
	if err := i.do(req, http.StatusCreated, &reg); err != nil {
		return "", fmt.Errorf("testissuer: client registration: %w", err)
	}
	return reg.ClientID, nil
}

// authorize GETs the authorization URL and follows the redirects (the login
// step and the callback) until the one to the redirect URI, whose URL it
// returns without requesting it.
// Authorize does what a user's browser does with a client's authorization
// URL: it logs user in (as login_hint) and follows the redirects until the
// client's redirectURI, whose URL, with code, state and iss, it returns.
func (i *Issuer) Authorize(ctx context.Context, authURL, user, redirectURI string) (*url.URL, error) {
	u, err := url.Parse(authURL)
	if err != nil {
		return nil, err
	}
	q := u.Query()
	q.Set("login_hint", user)
	u.RawQuery = q.Encode()
	return i.authorize(ctx, u.String(), redirectURI)
}

func (i *Issuer) authorize(ctx context.Context, authURL, redirectURI string) (*url.URL, error) {
	c := *i.client
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if strings.HasPrefix(req.URL.String(), redirectURI) {
			return http.ErrUseLastResponse
		}
		if len(via) >= 10 {
			return errors.New("too many redirects")
		}
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, authURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("testissuer: authorization request: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	loc := resp.Header.Get("Location")
	if resp.StatusCode/100 != 3 || !strings.HasPrefix(loc, redirectURI) {
		return nil, fmt.Errorf("testissuer: authorization request ended at %s with %s: %s", resp.Request.URL, resp.Status, strings.TrimSpace(string(body)))
	}
	return url.Parse(loc)
}

// postForm POSTs form to endpoint and decodes the JSON answer into v.
func (i *Issuer) postForm(ctx context.Context, endpoint string, form url.Values, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return i.do(req, http.StatusOK, v)
}

// do sends req with the issuer's own client and decodes the JSON answer into
// v, if its status is want.
func (i *Issuer) do(req *http.Request, want int, v any) error {
	req.Header.Set("Accept", "application/json")
	resp, err := i.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return json.Unmarshal(body, v)
}

// newRSAKey makes an RSA 2048 key.
func newRSAKey() (*rsa.PrivateKey, error) {
	return rsa.GenerateKey(rand.Reader, 2048)
}
