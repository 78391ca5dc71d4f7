package caddymodule

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/modelcontextprotocol/go-sdk/oauthex"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/testissuer"
)

// The OAuth tests run a real authorization server (internal/testissuer:
// zitadel's OpenID provider, with dynamic registration, PKCE, resource
// indicators, JWT or opaque tokens) and a real Caddy whose bridge takes
// its tokens, and send real clients through the whole flow.

// oauthScope is the scope the bridge requires.
const oauthScope = "mcp:tools"

// oauthCaddy runs a Caddy whose bridge (in front of teamchild) takes the
// issuer's tokens; block is more mcp_bridge options, oauthLines more oauth
// options. It returns the site's base URL and the admin address.
func oauthCaddy(t *testing.T, issuer *testissuer.Issuer, block string, oauthLines ...string) (string, string) {
	t.Helper()
	c, bases := secCaddy(t, secSite{command: teamChild(t), block: fmt.Sprintf(`oauth {
			issuer %s
			scopes %s
			%s
		}
		%s`, issuer.URL(), oauthScope, strings.Join(oauthLines, "\n\t\t\t"), block)})
	return bases[0], c.AdminAddr
}

// oauthHandler is the go-sdk's authorization code handler as a desktop
// client sets it up: dynamic registration with a loopback redirect URI,
// and a "browser" that logs user in at the issuer.
func oauthHandler(t *testing.T, issuer *testissuer.Issuer, user string) *auth.AuthorizationCodeHandler {
	t.Helper()
	redirect := fmt.Sprintf("http://127.0.0.1:%d/callback", mcptest.FreePort(t))
	h, err := auth.NewAuthorizationCodeHandler(&auth.AuthorizationCodeHandlerConfig{
		DynamicClientRegistrationConfig: &auth.DynamicClientRegistrationConfig{
			Metadata: &oauthex.ClientRegistrationMetadata{
				ClientName:              "bridge-test-" + user,
				RedirectURIs:            []string{redirect},
				TokenEndpointAuthMethod: "none",
				GrantTypes:              []string{"authorization_code", "refresh_token"},
				ResponseTypes:           []string{"code"},
			},
		},
		RedirectURL: redirect,
		AuthorizationCodeFetcher: func(ctx context.Context, args *auth.AuthorizationArgs) (*auth.AuthorizationResult, error) {
			back, err := issuer.Authorize(ctx, args.URL, user, redirect)
			if err != nil {
				return nil, err
			}
			q := back.Query()
			return &auth.AuthorizationResult{Code: q.Get("code"), State: q.Get("state"), Iss: q.Get("iss")}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestOAuthGoSDKClient: a go-sdk client with no token gets 401, and its
// WWW-Authenticate alone leads it through the protected resource metadata,
// the issuer's metadata, dynamic registration, PKCE and the token request
// to working calls; the token is bound to the bridge's URL (RFC 8707). A
// policy on the token's subject applies: bob does not see admin_reset.
func TestOAuthGoSDKClient(t *testing.T) {
	issuer := testissuer.Start(t, testissuer.Options{Scopes: []string{oauthScope}})
	base, _ := oauthCaddy(t, issuer, `policy interns {
			match subject bob
			tools deny admin_*
		}`)

	resp, _ := secDo(t, http.MethodPost, base+"/mcp", secInit)
	challenge := resp.Header.Get("WWW-Authenticate")
	if resp.StatusCode != http.StatusUnauthorized ||
		challenge != `Bearer resource_metadata="`+base+`/.well-known/oauth-protected-resource/mcp", scope="`+oauthScope+`"` {
		t.Fatalf("no token: %d, WWW-Authenticate %q", resp.StatusCode, challenge)
	}

	for _, who := range []struct {
		user  string
		admin bool
	}{{"alice", true}, {"bob", false}} {
		t.Run(who.user, func(t *testing.T) {
			for _, version := range []string{"2025-11-25", ""} {
				handler := oauthHandler(t, issuer, who.user)
				cs := teamConnect(t, &mcp.StreamableClientTransport{Endpoint: base + "/mcp", OAuthHandler: handler}, version, nil)
				tools := names(t, cs.Tools(t.Context(), nil), func(x *mcp.Tool) string { return x.Name })
				if slices.Contains(tools, "admin_reset") != who.admin || !slices.Contains(tools, "search") {
					t.Errorf("version %q: tools/list = %v", version, tools)
				}
				res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "search", Arguments: map[string]any{}})
				if err != nil || res.IsError {
					t.Fatalf("version %q: search: %v", version, err)
				}
				ts, err := handler.TokenSource(t.Context())
				if err != nil || ts == nil {
					t.Fatalf("no token source: %v", err)
				}
				tok, err := ts.Token()
				if err != nil {
					t.Fatal(err)
				}
				if aud := fmt.Sprint(tokenClaim(t, tok.AccessToken, "aud")); aud != "["+base+"/mcp]" {
					t.Errorf("the token's aud is %v, want %s", aud, base+"/mcp")
				}
			}
		})
	}
}

// tokenClaim reads one claim of a JWT the test got from its own issuer.
func tokenClaim(t *testing.T, token, claim string) any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", token)
	}
	payload, err := decodeSegment(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	return claims[claim]
}

// TestOAuthProtectedResourceMetadata: the metadata is served at the
// endpoint's path-suffixed well-known URI and at the root, naming the
// resource as the client reached it, the issuer and the scopes; browsers
// may read it.
func TestOAuthProtectedResourceMetadata(t *testing.T) {
	issuer := testissuer.Start(t, testissuer.Options{Scopes: []string{oauthScope}})
	base, _ := oauthCaddy(t, issuer, "")
	for path, resource := range map[string]string{
		"/.well-known/oauth-protected-resource/mcp": base + "/mcp",
		"/.well-known/oauth-protected-resource/sse": base + "/sse",
		"/.well-known/oauth-protected-resource":     base,
	} {
		resp, body := secDo(t, http.MethodGet, base+path, "", "Origin", "https://inspector.example")
		var doc oauthex.ProtectedResourceMetadata
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &doc) != nil {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
		}
		if doc.Resource != resource || !slices.Equal(doc.AuthorizationServers, []string{issuer.URL()}) || !slices.Equal(doc.ScopesSupported, []string{oauthScope}) {
			t.Errorf("%s: %+v", path, doc)
		}
		if resp.Header.Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("%s: browsers may not read it", path)
		}
	}
	// Another resource's metadata is not the bridge's to serve: the
	// request goes on to the site's next handler (none here).
	if _, body := secDo(t, http.MethodGet, base+"/.well-known/oauth-protected-resource/elsewhere", ""); len(body) != 0 {
		t.Errorf("metadata of a resource the bridge does not serve: %s", body)
	}
}

// TestOAuthBadTokens: each bad token gets 401 with error="invalid_token"
// (or 403 insufficient_scope), and nothing reaches a child: no session
// opens. The bad ones: none at all, garbage, a token for another resource,
// an expired one, one signed by another issuer, one without the required
// scope, and an API key's place taken by a token of no key. A key rotation
// at the issuer is followed: a token signed with the new key passes.
func TestOAuthBadTokens(t *testing.T) {
	issuer := testissuer.Start(t, testissuer.Options{Scopes: []string{oauthScope}})
	other := testissuer.Start(t, testissuer.Options{Scopes: []string{oauthScope}})
	base, admin := oauthCaddy(t, issuer, teamKeys)
	resource := base + "/mcp"
	token := func(iss *testissuer.Issuer, user, resource string, scopes ...string) string {
		tok, err := iss.Token(t.Context(), user, resource, scopes...)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	for _, c := range []struct {
		name, token string
		status      int
		challenge   string
	}{
		{"none", "", 401, ""},
		{"garbage", "not-a-token", 401, `error="invalid_token"`},
		{"another resource", token(issuer, "alice", "http://127.0.0.1:1/mcp", oauthScope), 401, `error="invalid_token"`},
		{"expired", issuer.Mint(map[string]any{"sub": "alice", "aud": resource, "scope": oauthScope, "client_id": "c",
			"iat": time.Now().Add(-2 * time.Hour).Unix(), "exp": time.Now().Add(-time.Hour).Unix()}), 401, `error="invalid_token"`},
		{"another issuer", token(other, "alice", resource, oauthScope), 401, `error="invalid_token"`},
		{"no expiry", issuer.Mint(map[string]any{"sub": "alice", "aud": resource, "scope": oauthScope, "client_id": "c", "exp": nil}), 401, `error="invalid_token"`},
		{"missing scope", token(issuer, "alice", resource, "openid"), 403, `error="insufficient_scope"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var kv []string
			if c.token != "" {
				kv = []string{"Authorization", "Bearer " + c.token}
			}
			resp, body := secDo(t, http.MethodPost, base+"/mcp", secInit, kv...)
			challenge := resp.Header.Get("WWW-Authenticate")
			if resp.StatusCode != c.status || !strings.Contains(challenge, `resource_metadata="`+base+`/.well-known/oauth-protected-resource/mcp"`) ||
				!strings.Contains(challenge, c.challenge) {
				t.Errorf("%d %q: %s", resp.StatusCode, challenge, body)
			}
			if code, _ := secRPCError(t, body); code != -32004 {
				t.Errorf("JSON-RPC code %d", code)
			}
		})
	}
	// A token minted for another server on this machine, sent with that
	// server's Host (any IP address passes the Host check): the Host is
	// not this server's own address, so no derived audience counts.
	foreign := token(issuer, "alice", "http://127.0.0.1:1/mcp", oauthScope)
	req, _ := http.NewRequest(http.MethodPost, resource, strings.NewReader(secInit))
	req.Host = "127.0.0.1:1"
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Authorization", "Bearer "+foreign)
	if resp, err := secClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a token for another server, with its Host: %v %v", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}
	if n := adminSessions(t, admin); n != 0 {
		t.Errorf("%d sessions opened for bad tokens", n)
	}

	// Named keys still work beside OAuth.
	if resp, body := secDo(t, http.MethodPost, base+"/mcp", secInit, "Authorization", "Bearer "+aliceKey); resp.StatusCode != http.StatusOK {
		t.Errorf("alice's API key: %d %s", resp.StatusCode, body)
	}

	// The issuer rotates its key: the bridge fetches the key set again for
	// a token naming the new key (at most once a second).
	good := token(issuer, "bob", resource, oauthScope)
	if resp, body := secDo(t, http.MethodPost, base+"/mcp", secInit, "Authorization", "Bearer "+good); resp.StatusCode != http.StatusOK {
		t.Fatalf("a good token: %d %s", resp.StatusCode, body)
	}
	issuer.RotateKey(false)
	rotated := token(issuer, "bob", resource, oauthScope)
	mcptest.WaitFor(t, 5*time.Second, "a token signed with the new key to pass", func() bool {
		resp, _ := secDo(t, http.MethodPost, base+"/mcp", secInit, "Authorization", "Bearer "+rotated)
		return resp.StatusCode == http.StatusOK
	})
}

// adminSessions counts the sessions the admin API shows.
func adminSessions(t *testing.T, admin string) int {
	t.Helper()
	resp, body := secDo(t, http.MethodGet, "http://"+admin+"/mcp_bridge/", "")
	var status struct {
		Pools []struct {
			Sessions []json.RawMessage `json:"sessions"`
		} `json:"pools"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &status) != nil {
		t.Fatalf("admin: %d %s", resp.StatusCode, body)
	}
	n := 0
	for _, p := range status.Pools {
		n += len(p.Sessions)
	}
	return n
}

// TestOAuthIntrospection: with an issuer of opaque tokens, the bridge asks
// its introspection endpoint (RFC 7662) with the resource server's
// credentials; a good token works, a token for another resource does not.
func TestOAuthIntrospection(t *testing.T) {
	issuer := testissuer.Start(t, testissuer.Options{Scopes: []string{oauthScope}, Opaque: true})
	id, secret := issuer.IntrospectionClient()
	base, _ := oauthCaddy(t, issuer, "", "client_id "+id, "client_secret "+secret)
	good, err := issuer.Token(t.Context(), "alice", base+"/mcp", oauthScope)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(good, ".") == 2 {
		t.Fatalf("the issuer gave a JWT: %q", good)
	}
	cs := teamConnect(t, &mcp.StreamableClientTransport{Endpoint: base + "/mcp", HTTPClient: mcptest.Bearer(good).Client()}, "2025-11-25", nil)
	if res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "search", Arguments: map[string]any{}}); err != nil || res.IsError {
		t.Fatalf("search: %v", err)
	}
	foreign, err := issuer.Token(t.Context(), "alice", "http://127.0.0.1:1/mcp", oauthScope)
	if err != nil {
		t.Fatal(err)
	}
	if resp, body := secDo(t, http.MethodPost, base+"/mcp", secInit, "Authorization", "Bearer "+foreign); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a token for another resource: %d %s", resp.StatusCode, body)
	}
}

func decodeSegment(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// TestOAuthTypeScriptClient: the TypeScript SDK's client, with no token,
// finds its way from the 401 through discovery, dynamic registration and
// PKCE to a token, and lists and calls tools; bob's policy hides
// admin_reset from his list and his call to it fails as an unknown tool.
func TestOAuthTypeScriptClient(t *testing.T) {
	tools := toolsFrom(t, "MCPBRIDGE_NODE", "MCPBRIDGE_TS_SDK")
	node := tools[0]
	dir := tsScriptDir(t, tools[1], filepath.Join("testdata", "tsclient", "oauth.mjs"))
	issuer := testissuer.Start(t, testissuer.Options{Scopes: []string{oauthScope}})
	base, _ := oauthCaddy(t, issuer, `policy interns {
			match subject bob
			tools deny admin_*
		}`)
	for _, who := range []struct {
		user  string
		admin bool
	}{{"alice", true}, {"bob", false}} {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		cmd := exec.CommandContext(ctx, node, "oauth.mjs", base+"/mcp", who.user, "admin_reset")
		cmd.Dir = dir
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		cancel()
		if err != nil {
			t.Fatalf("%s: node oauth.mjs: %v\n%s%s", who.user, err, out, stderr.String())
		}
		var r struct {
			Tools     []string `json:"tools"`
			Call      string   `json:"call"`
			CallError string   `json:"callError"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("%s: %v: %s", who.user, err, out)
		}
		t.Logf("%s: %+v", who.user, r)
		if slices.Contains(r.Tools, "admin_reset") != who.admin || !slices.Contains(r.Tools, "search") {
			t.Errorf("%s: tools %v", who.user, r.Tools)
		}
		if who.admin && r.Call != "reset" || !who.admin && !strings.Contains(r.CallError, "Unknown tool: admin_reset") {
			t.Errorf("%s: admin_reset gave %q, error %q", who.user, r.Call, r.CallError)
		}
	}
}

// BenchmarkTokenValidation: what checking a JWT access token costs the
// first time (signature, claims) and later (a cache hit), once the key set
// is cached.
func BenchmarkTokenValidation(b *testing.B) {
	issuer := testissuer.Start(b, testissuer.Options{})
	token, err := issuer.Token(b.Context(), "alice", "http://127.0.0.1:1/mcp")
	if err != nil {
		b.Fatal(err)
	}
	v, err := newTokenValidator(OAuthConfig{Issuer: issuer.URL()})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := v.validate(b.Context(), token); err != nil {
		b.Fatal(err)
	}
	b.Run("first", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			v.cache.mu.Lock()
			clear(v.cache.entries)
			v.cache.mu.Unlock()
			if _, err := v.validate(b.Context(), token); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := v.validate(b.Context(), token); err != nil {
				b.Fatal(err)
			}
		}
	})
}
