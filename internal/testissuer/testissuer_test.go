package testissuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/oauthex"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const resource = "http://127.0.0.1:1234/mcp"

// httpClient returns a client of its own, whose connections are closed when
// the test ends (so that goleak finds no connection goroutine).
func httpClient(t *testing.T) *http.Client {
	c := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone(), Timeout: 30 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// accessClaims are the claims of the issuer's JWT access tokens.
type accessClaims struct {
	Iss      string   `json:"iss"`
	Sub      string   `json:"sub"`
	Aud      []string `json:"aud"`
	Exp      int64    `json:"exp"`
	Iat      int64    `json:"iat"`
	Jti      string   `json:"jti"`
	ClientID string   `json:"client_id"`
	Scope    string   `json:"scope"`
}

// verify checks tok with go-oidc against the issuer's discovery and JWKS,
// for the audience aud, and returns its claims.
func verify(t *testing.T, hc *http.Client, iss *Issuer, aud, tok string) (*accessClaims, error) {
	t.Helper()
	ctx := oidc.ClientContext(t.Context(), hc)
	provider, err := oidc.NewProvider(ctx, iss.URL())
	if err != nil {
		t.Fatalf("oidc.NewProvider: %v", err)
	}
	idt, err := provider.VerifierContext(ctx, &oidc.Config{ClientID: aud}).Verify(ctx, tok)
	if err != nil {
		return nil, err
	}
	var c accessClaims
	if err := idt.Claims(&c); err != nil {
		t.Fatalf("claims: %v", err)
	}
	return &c, nil
}

// introspection is the part of an RFC 7662 answer the tests look at.
type introspection struct {
	Active   bool     `json:"active"`
	Sub      string   `json:"sub"`
	ClientID string   `json:"client_id"`
	Aud      []string `json:"aud"`
	Scope    string   `json:"scope"`
	Exp      int64    `json:"exp"`
	Iss      string   `json:"iss"`
}

// introspect asks the introspection endpoint about tok with the
// introspection client's credentials (client_secret_basic).
func introspect(t *testing.T, hc *http.Client, iss *Issuer, tok string) *introspection {
	t.Helper()
	meta := metadata(t, hc, iss.URL()+"/.well-known/oauth-authorization-server")
	endpoint, _ := meta["introspection_endpoint"].(string)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, endpoint, strings.NewReader(url.Values{"token": {tok}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(iss.IntrospectionClient())
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("introspection: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("introspection: %s: %s", resp.Status, body)
	}
	var in introspection
	if err := json.Unmarshal(body, &in); err != nil {
		t.Fatalf("introspection: %v: %s", err, body)
	}
	return &in
}

// metadata GETs a metadata document.
func metadata(t *testing.T, hc *http.Client, u string) map[string]any {
	t.Helper()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", u, resp.Status)
	}
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	return m
}

func kid(t *testing.T, tok string) string {
	t.Helper()
	jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("parsing %q: %v", tok, err)
	}
	return jws.Signatures[0].Header.KeyID
}

func TestTokenFlow(t *testing.T) {
	hc := httpClient(t)
	iss := Start(t, Options{Scopes: []string{"mcp:tools", "mcp:admin"}})
	if !strings.HasPrefix(iss.URL(), "http://127.0.0.1:") || strings.HasSuffix(iss.URL(), "/") {
		t.Fatalf("URL() = %q", iss.URL())
	}
	if got := iss.Users(); !slices.Equal(got, []string{"alice", "bob"}) {
		t.Fatalf("Users() = %v", got)
	}

	tok, err := iss.Token(t.Context(), "bob", resource, "mcp:tools")
	if err != nil {
		t.Fatal(err)
	}
	c, err := verify(t, hc, iss, resource, tok)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if c.Sub != "bob" || c.Iss != iss.URL() || c.ClientID == "" || c.Jti == "" {
		t.Errorf("claims %+v: want sub bob, iss %s, a client_id and a jti", c, iss.URL())
	}
	if !slices.Equal(c.Aud, []string{resource}) {
		t.Errorf("aud = %v, want [%s]", c.Aud, resource)
	}
	if !slices.Contains(strings.Fields(c.Scope), "mcp:tools") || slices.Contains(strings.Fields(c.Scope), "mcp:admin") {
		t.Errorf("scope = %q, want mcp:tools and not mcp:admin", c.Scope)
	}
	if d := c.Exp - c.Iat; d < 3590 || d > 3610 {
		t.Errorf("exp - iat = %ds, want the default lifetime, 1h", d)
	}

	// Introspection works for JWTs too.
	in := introspect(t, hc, iss, tok)
	if !in.Active || in.Sub != "bob" || !slices.Equal(in.Aud, []string{resource}) || in.ClientID != c.ClientID || in.Iss != iss.URL() || in.Exp != c.Exp {
		t.Errorf("introspection = %+v, want active, sub bob, aud %s, client_id %s, iss, exp %d", in, resource, c.ClientID, c.Exp)
	}
	if !slices.Contains(strings.Fields(in.Scope), "mcp:tools") {
		t.Errorf("introspection scope = %q", in.Scope)
	}

	t.Run("default user and scope", func(t *testing.T) {
		tok, err := iss.Token(t.Context(), "", resource)
		if err != nil {
			t.Fatal(err)
		}
		c, err := verify(t, hc, iss, resource, tok)
		if err != nil {
			t.Fatal(err)
		}
		if c.Sub != "alice" || c.Scope != "mcp:tools mcp:admin" {
			t.Errorf("sub %q, scope %q: want alice and every extra scope", c.Sub, c.Scope)
		}
	})
	t.Run("no resource", func(t *testing.T) {
		tok, err := iss.Token(t.Context(), "alice", "", "openid")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := verify(t, hc, iss, resource, tok); err == nil {
			t.Fatal("a token without resource verified for the resource")
		}
		jws, _ := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.RS256})
		var c accessClaims
		json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &c)
		if !slices.Equal(c.Aud, []string{c.ClientID}) {
			t.Errorf("aud %v, want the client id %s", c.Aud, c.ClientID)
		}
	})
	t.Run("unknown user", func(t *testing.T) {
		_, err := iss.Token(t.Context(), "mallory", resource)
		if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "mallory") {
			t.Fatalf("err = %v, want a 400 naming the user", err)
		}
	})
	t.Run("wrong audience", func(t *testing.T) {
		tok, err := iss.Token(t.Context(), "bob", "http://127.0.0.1:1234/other")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := verify(t, hc, iss, resource, tok); err == nil {
			t.Fatal("a token for another resource verified")
		}
	})
}

func TestMetadata(t *testing.T) {
	hc := httpClient(t)
	iss := Start(t, Options{Scopes: []string{"mcp:tools"}})
	for _, path := range []string{"/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"} {
		m := metadata(t, hc, iss.URL()+path)
		str := func(k string) string { s, _ := m[k].(string); return s }
		list := func(k string) []string {
			var l []string
			for _, v := range m[k].([]any) {
				l = append(l, v.(string))
			}
			return l
		}
		if str("issuer") != iss.URL() || str("registration_endpoint") != iss.URL()+"/register" ||
			str("introspection_endpoint") == "" || str("jwks_uri") == "" || m["authorization_response_iss_parameter_supported"] != true {
			t.Errorf("%s: %v", path, m)
		}
		if !slices.Equal(list("code_challenge_methods_supported"), []string{"S256"}) ||
			!slices.Contains(list("scopes_supported"), "mcp:tools") || !slices.Contains(list("scopes_supported"), "openid") ||
			!slices.Contains(list("token_endpoint_auth_methods_supported"), "none") {
			t.Errorf("%s: %v", path, m)
		}
	}
}

// authorize GETs authURL and returns the Location of the redirect to
// redirectURI.
func authorize(t *testing.T, hc *http.Client, authURL, redirectURI string) (*url.URL, error) {
	t.Helper()
	c := *hc
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if strings.HasPrefix(req.URL.String(), redirectURI) {
			return http.ErrUseLastResponse
		}
		return nil
	}
	resp, err := c.Get(authURL)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, redirectURI) {
		return nil, fmt.Errorf("%s at %s: %s", resp.Status, resp.Request.URL, body)
	}
	return url.Parse(loc)
}

func TestGoSDKDiscovery(t *testing.T) {
	hc := httpClient(t)
	ctx := t.Context()
	iss := Start(t, Options{Scopes: []string{"mcp:tools"}})

	asm, err := auth.GetAuthServerMetadata(ctx, iss.URL(), hc)
	if err != nil || asm == nil {
		t.Fatalf("GetAuthServerMetadata: %v, %v", asm, err)
	}
	if asm.Issuer != iss.URL() || asm.RegistrationEndpoint != iss.URL()+"/register" ||
		!slices.Contains(asm.CodeChallengeMethodsSupported, "S256") || !asm.AuthorizationResponseIssParameterSupported ||
		!slices.Contains(asm.ScopesSupported, "mcp:tools") || asm.IntrospectionEndpoint == "" {
		t.Fatalf("metadata %+v", asm)
	}
	if _, err := oauthex.GetAuthServerMeta(ctx, iss.URL()+"/.well-known/openid-configuration", iss.URL(), hc); err != nil {
		t.Fatalf("OpenID discovery: %v", err)
	}

	t.Run("DCR", func(t *testing.T) {
		for _, redirect := range []string{"http://127.0.0.1:45678/callback", "http://localhost:45679/callback"} {
			reg, err := oauthex.RegisterClient(ctx, asm.RegistrationEndpoint, &oauthex.ClientRegistrationMetadata{
				RedirectURIs:            []string{redirect},
				ClientName:              "test",
				GrantTypes:              []string{"authorization_code", "refresh_token"},
				ResponseTypes:           []string{"code"},
				TokenEndpointAuthMethod: "none",
			}, hc)
			if err != nil {
				t.Fatal(err)
			}
			if reg.ClientID == "" || reg.ClientSecret != "" || reg.TokenEndpointAuthMethod != "none" ||
				!slices.Equal(reg.RedirectURIs, []string{redirect}) || reg.ClientIDIssuedAt.IsZero() {
				t.Fatalf("registration %+v", reg)
			}
			// The registered loopback redirect URI works, and so does the
			// same with another port (RFC 8252, section 7.3).
			other := strings.Replace(redirect, ":4567", ":3456", 1)
			for _, uri := range []string{redirect, other} {
				q := url.Values{
					"response_type": {"code"}, "client_id": {reg.ClientID}, "redirect_uri": {uri},
					"scope": {"mcp:tools"}, "state": {"s"}, "code_challenge": {strings.Repeat("a", 43)},
					"code_challenge_method": {"S256"}, "resource": {resource},
				}
				loc, err := authorize(t, hc, asm.AuthorizationEndpoint+"?"+q.Encode(), uri)
				if err != nil {
					t.Fatalf("authorize with %s: %v", uri, err)
				}
				if q := loc.Query(); q.Get("code") == "" || q.Get("state") != "s" || q.Get("iss") != iss.URL() {
					t.Fatalf("redirect %s", loc)
				}
			}
		}

		reg, err := oauthex.RegisterClient(ctx, asm.RegistrationEndpoint, &oauthex.ClientRegistrationMetadata{
			RedirectURIs:            []string{"http://127.0.0.1:45678/callback"},
			TokenEndpointAuthMethod: "client_secret_basic",
		}, hc)
		if err != nil {
			t.Fatal(err)
		}
		if reg.ClientSecret == "" || reg.TokenEndpointAuthMethod != "client_secret_basic" {
			t.Fatalf("confidential registration %+v", reg)
		}
		_, err = oauthex.RegisterClient(ctx, asm.RegistrationEndpoint, &oauthex.ClientRegistrationMetadata{}, hc)
		var regErr *oauthex.ClientRegistrationError
		if !errors.As(err, &regErr) || regErr.ErrorCode != "invalid_redirect_uri" {
			t.Fatalf("registration without redirect URIs: %v", err)
		}
	})

	t.Run("AuthorizationCodeHandler", func(t *testing.T) { goSDKFlow(t, hc, Options{Scopes: []string{"mcp:tools"}}) })
	t.Run("refresh keeps the audience", func(t *testing.T) {
		// With a lifetime under oauth2's expiry delta (10s), every Token()
		// of the token source refreshes.
		goSDKFlow(t, hc, Options{Scopes: []string{"mcp:tools"}, AccessTokenLifetime: 5 * time.Second})
	})
}

// goSDKFlow runs the go-sdk's AuthorizationCodeHandler against a protected
// resource whose authorization server is an issuer started with opts, and
// checks the access token it gets.
func goSDKFlow(t *testing.T, hc *http.Client, opts Options) {
	ctx := t.Context()
	iss := Start(t, opts)
	mux := http.NewServeMux()
	rs := httptest.NewServer(mux)
	t.Cleanup(rs.Close)
	mcpURL := rs.URL + "/mcp"
	mux.HandleFunc("/.well-known/oauth-protected-resource/mcp", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"resource":              mcpURL,
			"authorization_servers": []string{iss.URL()},
			"scopes_supported":      []string{"mcp:tools"},
		})
	})

	redirect := "http://127.0.0.1:45680/callback"
	h, err := auth.NewAuthorizationCodeHandler(&auth.AuthorizationCodeHandlerConfig{
		DynamicClientRegistrationConfig: &auth.DynamicClientRegistrationConfig{
			Metadata: &oauthex.ClientRegistrationMetadata{
				RedirectURIs:            []string{redirect},
				ClientName:              "go-sdk test",
				GrantTypes:              []string{"authorization_code", "refresh_token"},
				TokenEndpointAuthMethod: "none",
			},
		},
		RequestRefreshToken: true,
		Client:              hc,
		AuthorizationCodeFetcher: func(ctx context.Context, args *auth.AuthorizationArgs) (*auth.AuthorizationResult, error) {
			loc, err := authorize(t, hc, args.URL+"&login_hint=bob", redirect)
			if err != nil {
				return nil, err
			}
			q := loc.Query()
			return &auth.AuthorizationResult{Code: q.Get("code"), State: q.Get("state"), Iss: q.Get("iss")}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, mcpURL, nil)
	resp := &http.Response{
		StatusCode: http.StatusUnauthorized,
		Header:     http.Header{"Www-Authenticate": {`Bearer resource_metadata="` + rs.URL + `/.well-known/oauth-protected-resource/mcp"`}},
		Body:       io.NopCloser(strings.NewReader("")),
		Request:    req,
	}
	if err := h.Authorize(ctx, req, resp); err != nil {
		t.Fatalf("Authorize: %v", err)
	}
	ts, err := h.TokenSource(ctx)
	if err != nil || ts == nil {
		t.Fatalf("TokenSource: %v, %v", ts, err)
	}
	first, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	second, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	if opts.AccessTokenLifetime != 0 && (first.AccessToken == second.AccessToken || second.RefreshToken == "") {
		t.Errorf("the token was not refreshed")
	}
	for _, tok := range []string{first.AccessToken, second.AccessToken} {
		c, err := verify(t, hc, iss, mcpURL, tok)
		if err != nil {
			t.Fatalf("verify: %v", err)
		}
		if c.Sub != "bob" || !slices.Contains(strings.Fields(c.Scope), "mcp:tools") {
			t.Errorf("claims %+v", c)
		}
	}
}

func TestRotateKey(t *testing.T) {
	hc := httpClient(t)
	ctx := t.Context()
	iss := Start(t, Options{})
	jwksURL := iss.URL() + "/keys"
	jwksKids := func() []string {
		var set jose.JSONWebKeySet
		resp, err := hc.Get(jwksURL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		json.NewDecoder(resp.Body).Decode(&set)
		var kids []string
		for _, k := range set.Keys {
			kids = append(kids, k.KeyID)
		}
		return kids
	}
	verifies := func(tok string) bool {
		_, err := oidc.NewRemoteKeySet(oidc.ClientContext(ctx, hc), jwksURL).VerifySignature(ctx, tok)
		return err == nil
	}

	before, err := iss.Token(ctx, "alice", resource)
	if err != nil {
		t.Fatal(err)
	}
	oldKid := kid(t, before)
	if got := jwksKids(); !slices.Equal(got, []string{oldKid}) {
		t.Fatalf("JWKS kids %v, want [%s]", got, oldKid)
	}

	iss.RotateKey(false)
	after, err := iss.Token(ctx, "alice", resource)
	if err != nil {
		t.Fatal(err)
	}
	newKid := kid(t, after)
	if newKid == oldKid {
		t.Fatalf("the kid did not change: %s", newKid)
	}
	if got := jwksKids(); !slices.Equal(got, []string{newKid}) {
		t.Fatalf("JWKS kids %v, want [%s]", got, newKid)
	}
	if verifies(before) {
		t.Error("the token of the dropped key still verifies")
	}
	if !verifies(after) {
		t.Error("the token of the new key does not verify")
	}
	if _, err := verify(t, hc, iss, resource, after); err != nil {
		t.Errorf("verify: %v", err)
	}
	if in := introspect(t, hc, iss, before); in.Active {
		t.Errorf("introspection of the token of the dropped key: %+v", in)
	}

	iss.RotateKey(true)
	third := iss.Mint(map[string]any{"sub": "alice", "aud": resource})
	if got := jwksKids(); len(got) != 2 || got[0] != kid(t, third) || got[1] != newKid {
		t.Fatalf("JWKS kids %v, want [%s %s]", got, kid(t, third), newKid)
	}
	if !verifies(after) || !verifies(third) {
		t.Error("with keepOld, both keys must verify")
	}
}

func TestOpaqueIntrospection(t *testing.T) {
	hc := httpClient(t)
	iss := Start(t, Options{Opaque: true, Scopes: []string{"mcp:tools"}})
	tok, err := iss.Token(t.Context(), "bob", resource, "mcp:tools")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.RS256}); err == nil {
		t.Fatalf("the opaque token %q is a JWT", tok)
	}
	in := introspect(t, hc, iss, tok)
	if !in.Active || in.Sub != "bob" || !slices.Equal(in.Aud, []string{resource}) || in.ClientID == "" ||
		in.Iss != iss.URL() || !slices.Contains(strings.Fields(in.Scope), "mcp:tools") {
		t.Fatalf("introspection %+v", in)
	}
	if d := time.Until(time.Unix(in.Exp, 0)); d < 59*time.Minute || d > time.Hour {
		t.Errorf("exp in %v, want 1h", d)
	}
	if in := introspect(t, hc, iss, "not-a-token"); in.Active {
		t.Errorf("introspection of garbage: %+v", in)
	}
	if in := introspect(t, hc, iss, iss.Mint(map[string]any{"sub": "bob", "aud": resource})); in.Active {
		t.Errorf("introspection of a minted token: %+v", in)
	}

	// Wrong credentials are refused.
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, iss.URL()+"/oauth/introspect", strings.NewReader("token="+url.QueryEscape(tok)))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	id, _ := iss.IntrospectionClient()
	req.SetBasicAuth(id, "wrong")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("introspection with a wrong secret: %s", resp.Status)
	}
}

func TestShortLifetime(t *testing.T) {
	hc := httpClient(t)
	iss := Start(t, Options{AccessTokenLifetime: 2 * time.Second})
	tok, err := iss.Token(t.Context(), "bob", resource)
	if err != nil {
		t.Fatal(err)
	}
	c, err := verify(t, hc, iss, resource, tok)
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Exp - c.Iat; d < 1 || d > 3 {
		t.Errorf("exp - iat = %ds, want 2s", d)
	}
}

func TestMint(t *testing.T) {
	hc := httpClient(t)
	iss := Start(t, Options{})
	exp := time.Now().Add(-time.Hour).Unix()
	tok := iss.Mint(map[string]any{"sub": "x", "aud": "a", "exp": exp})

	jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("Mint made no JWT: %v", err)
	}
	var c struct {
		accessClaims
		Aud string `json:"aud"`
	}
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &c); err != nil {
		t.Fatal(err)
	}
	if c.Exp != exp || c.Sub != "x" || c.Aud != "a" || c.Iss != iss.URL() || c.Jti == "" || c.Iat == 0 {
		t.Errorf("claims %+v", c)
	}
	// The kid is the current key's, the one the JWKS serves.
	if _, err := oidc.NewRemoteKeySet(oidc.ClientContext(t.Context(), hc), iss.URL()+"/keys").VerifySignature(t.Context(), tok); err != nil {
		t.Errorf("signature: %v", err)
	}
	want := kid(t, iss.Mint(nil))
	if got := jws.Signatures[0].Header.KeyID; got != want || got == "" {
		t.Errorf("kid %q, want %q", got, want)
	}
	_, err = verify(t, hc, iss, "a", tok)
	var expired *oidc.TokenExpiredError
	if !errors.As(err, &expired) {
		t.Errorf("verify: %v, want an expired token", err)
	}
}
