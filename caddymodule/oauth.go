package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/oauthex"
)

// OAuthConfig makes the handler an OAuth 2.1 resource server, as the MCP
// authorization spec asks: it serves its protected resource metadata
// (RFC 9728), answers requests without a valid access token with 401 and
// a WWW-Authenticate header that leads clients to the authorization
// server, and accepts the access tokens that server issued for it.
type OAuthConfig struct {
	// Issuer is the authorization server's issuer identifier. Its metadata
	// (RFC 8414, or OpenID Connect discovery) names its key set and
	// introspection endpoint. It must be an https:// URL, or http:// on a
	// loopback address (for development and tests).
	Issuer string `json:"issuer"`

	// Audience is the resource identifier that access tokens must name
	// in their aud claim (RFC 8707), and that the protected resource
	// metadata gives. Default: the URL the client reached the endpoint
	// at (the scheme, the Host and the endpoint's path, as
	// https://mcp.example.com/mcp), so that a site with automatic HTTPS
	// needs no line. Set it when a proxy in front changes the scheme or
	// host.
	Audience string `json:"audience,omitempty"`

	// Scopes are the scopes every access token must carry. They are also
	// listed in the metadata and in the challenge of a 401, so that
	// clients ask for them. A token without one gets 403
	// insufficient_scope.
	Scopes []string `json:"scopes,omitempty"`

	// IntrospectionURL makes the handler check tokens by introspection
	// (RFC 7662) at this URL instead of reading them as JWTs: for
	// authorization servers that issue opaque tokens. Answers are cached
	// briefly (30s, never past the token's expiry). When ClientID is set
	// and this is not, the issuer's introspection_endpoint is used.
	IntrospectionURL string `json:"introspection_url,omitempty"`

	// ClientID and ClientSecret are the resource server's credentials for
	// the introspection endpoint (HTTP Basic). Placeholders such as
	// {env.INTROSPECTION_SECRET} are replaced.
	ClientID     string `json:"client_id,omitempty"`
	ClientSecret string `json:"client_secret,omitempty"`

	// ResourceName is the human-readable name the metadata gives the
	// server (resource_name). Default: none.
	ResourceName string `json:"resource_name,omitempty"`
}

// Token validation's fixed settings.
const (
	// clockSkew is the leeway on exp, nbf and iat.
	clockSkew = 30 * time.Second
	// keySetMinRefresh bounds how often a token naming an unknown key
	// makes the key set be fetched again: forged tokens cannot make the
	// bridge hammer the authorization server.
	keySetMinRefresh = time.Second
	// keySetMaxAge is how long a fetched key set is trusted: a key the
	// issuer withdrew stops passing within it.
	keySetMaxAge = time.Hour
	// introspectionTTL is how long an introspection answer is used.
	introspectionTTL = 30 * time.Second
	// rejectionTTL is how long a token found invalid stays so without
	// another look (a flood of one bad token costs one check).
	rejectionTTL = 10 * time.Second
	// tokenCacheSize bounds each half of the cache of checked tokens (the
	// valid ones, the rejected ones): garbage cannot evict valid tokens.
	tokenCacheSize = 10000
	// authServerTimeout bounds every request to the authorization server.
	authServerTimeout = 10 * time.Second
	// maxAuthServerBody bounds what is read of its answers.
	maxAuthServerBody = 1 << 20
)

// signingAlgorithms are the JWS algorithms accepted on access tokens:
// asymmetric ones only ("none" and HMAC never).
var signingAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// tokenInfo is what a valid access token says.
type tokenInfo struct {
	Subject  string
	Client   string
	Scopes   []string
	Audience []string
	Expiry   time.Time // zero: none given
}

// errAuthServer wraps failures to reach the authorization server: the
// token may be fine, and the client gets 503, not 401.
var errAuthServer = errors.New("the authorization server cannot be reached")

// errKeyNotFetched is a token naming a key the cached key set lacks, when
// the set was fetched too lately to be fetched again: the token may turn
// out good a moment later, so it is not the token's fault either.
var errKeyNotFetched = fmt.Errorf("%w: its key set, fetched a moment ago, lacks the token's key", errAuthServer)

// tokenValidator checks access tokens for one issuer.
type tokenValidator struct {
	cfg    OAuthConfig
	client *http.Client

	metaMu    sync.Mutex // serializes discovery
	meta      atomic.Pointer[oauthex.AuthServerMeta]
	metaTried time.Time // guarded by metaMu

	keys  keySet
	cache tokenCache
}

// checkIssuer refuses an issuer that is not https://, unless on loopback.
func checkIssuer(issuer string) error {
	u, err := url.Parse(issuer)
	if err != nil || u.Host == "" {
		return fmt.Errorf("oauth issuer %q is not an absolute URL", issuer)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if host := u.Hostname(); host == "localhost" || net.ParseIP(host) != nil && net.ParseIP(host).IsLoopback() {
			return nil
		}
	}
	return fmt.Errorf("oauth issuer %q must be an https:// URL (http:// only on a loopback address)", issuer)
}

func newTokenValidator(cfg OAuthConfig) (*tokenValidator, error) {
	if err := checkIssuer(cfg.Issuer); err != nil {
		return nil, err
	}
	v := &tokenValidator{cfg: cfg, client: &http.Client{Timeout: authServerTimeout}}
	v.keys.client = v.client
	return v, nil
}

// introspects reports whether tokens are checked by introspection.
func (v *tokenValidator) introspects() bool {
	return v.cfg.IntrospectionURL != "" || v.cfg.ClientID != ""
}

// validate checks a token, from the cache when it was checked lately.
// The caller checks audience and scopes, which depend on the request.
func (v *tokenValidator) validate(ctx context.Context, token string) (tokenInfo, error) {
	sum := sha256.Sum256([]byte(token))
	now := time.Now()
	if info, err, ok := v.cache.get(sum, now); ok {
		return info, err
	}
	var info tokenInfo
	var err error
	if v.introspects() {
		info, err = v.introspect(ctx, token)
	} else {
		info, err = v.verifyJWT(ctx, token, now)
	}
	switch {
	case errors.Is(err, errAuthServer):
		// Not the token's fault, or not yet known to be: nothing cached.
	case err != nil:
		v.cache.put(sum, tokenCacheEntry{err: err, until: now.Add(rejectionTTL)})
	default:
		until := info.Expiry.Add(clockSkew)
		if v.introspects() || info.Expiry.IsZero() {
			until = now.Add(introspectionTTL)
			if !info.Expiry.IsZero() && info.Expiry.Before(until) {
				until = info.Expiry
			}
		}
		v.cache.put(sum, tokenCacheEntry{info: info, until: until})
	}
	return info, err
}

// metadata returns the issuer's metadata, discovering it on first use
// (not when the config loads: caddy validate makes no requests). A failed
// discovery is tried again after keySetMinRefresh.
func (v *tokenValidator) metadata(ctx context.Context) (*oauthex.AuthServerMeta, error) {
	if m := v.meta.Load(); m != nil {
		return m, nil
	}
	v.metaMu.Lock()
	defer v.metaMu.Unlock()
	if m := v.meta.Load(); m != nil {
		return m, nil
	}
	if time.Since(v.metaTried) < keySetMinRefresh {
		return nil, fmt.Errorf("%w: discovery of %s failed a moment ago", errAuthServer, v.cfg.Issuer)
	}
	v.metaTried = time.Now()
	// Not the request's context: the fetch serves every request waiting.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), authServerTimeout)
	defer cancel()
	m, err := auth.GetAuthServerMetadata(ctx, v.cfg.Issuer, v.client)
	if err == nil && m == nil {
		err = errors.New("it serves no metadata (RFC 8414 or OpenID Connect discovery)")
	}
	if err != nil {
		return nil, fmt.Errorf("%w: discovering %s: %v", errAuthServer, v.cfg.Issuer, err)
	}
	v.keys.setURL(m.JWKSURI) // before the metadata shows: requests then find the URL
	v.meta.Store(m)
	return m, nil
}

// accessTokenClaims are the claims of a JWT access token (RFC 9068) the
// bridge reads besides the registered ones.
type accessTokenClaims struct {
	Scope    string          `json:"scope"`
	Scp      json.RawMessage `json:"scp"` // Okta and Entra: a list, or a string
	ClientID string          `json:"client_id"`
	AZP      string          `json:"azp"`
}

func (c accessTokenClaims) scopes() []string {
	scopes := strings.Fields(c.Scope)
	var list []string
	var one string
	switch {
	case json.Unmarshal(c.Scp, &list) == nil:
		scopes = append(scopes, list...)
	case json.Unmarshal(c.Scp, &one) == nil:
		scopes = append(scopes, strings.Fields(one)...)
	}
	return scopes
}

// verifyJWT checks a JWT access token's signature against the issuer's
// key set, and its issuer and times.
func (v *tokenValidator) verifyJWT(ctx context.Context, token string, now time.Time) (tokenInfo, error) {
	tok, err := jwt.ParseSigned(token, signingAlgorithms)
	if err != nil {
		return tokenInfo{}, fmt.Errorf("not a signed JWT: %v", err)
	}
	// RFC 9068 access tokens say at+jwt; many issuers still say JWT or
	// nothing. Other types (an ID token's id+jwt, a logout token) are not
	// access tokens.
	if typ, _ := tok.Headers[0].ExtraHeaders[jose.HeaderType].(string); typ != "" && !slices.ContainsFunc([]string{"at+jwt", "application/at+jwt", "jwt"}, func(t string) bool { return strings.EqualFold(t, typ) }) {
		return tokenInfo{}, fmt.Errorf("a JWT of type %q is not an access token", typ)
	}
	// A token of another issuer is refused before any key is looked up:
	// it cannot make the bridge fetch the key set again.
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return tokenInfo{}, fmt.Errorf("unreadable claims: %v", err)
	}
	if unverified.Issuer != v.cfg.Issuer {
		return tokenInfo{}, fmt.Errorf("the token was issued by %q", unverified.Issuer)
	}
	if _, err := v.metadata(ctx); err != nil {
		return tokenInfo{}, err
	}
	key, err := v.keys.find(ctx, tok.Headers[0].KeyID)
	if err != nil {
		return tokenInfo{}, err
	}
	var std jwt.Claims
	var extra accessTokenClaims
	if err := tok.Claims(key, &std, &extra); err != nil {
		return tokenInfo{}, fmt.Errorf("bad signature: %v", err)
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: v.cfg.Issuer, Time: now}, clockSkew); err != nil {
		return tokenInfo{}, err
	}
	if std.Expiry == nil {
		return tokenInfo{}, errors.New("the token has no expiry (exp)")
	}
	info := tokenInfo{Subject: std.Subject, Client: extra.ClientID, Scopes: extra.scopes(), Audience: std.Audience, Expiry: std.Expiry.Time()}
	if info.Client == "" {
		info.Client = extra.AZP
	}
	if info.Subject == "" {
		return tokenInfo{}, errors.New("the token names no subject")
	}
	return info, nil
}

// introspectionAnswer is an RFC 7662 answer.
type introspectionAnswer struct {
	Active   bool            `json:"active"`
	Scope    string          `json:"scope"`
	ClientID string          `json:"client_id"`
	Sub      string          `json:"sub"`
	Exp      int64           `json:"exp"`
	Iss      string          `json:"iss"`
	Aud      json.RawMessage `json:"aud"`
}

// introspect asks the authorization server about an opaque token.
func (v *tokenValidator) introspect(ctx context.Context, token string) (tokenInfo, error) {
	endpoint := v.cfg.IntrospectionURL
	if endpoint == "" {
		m, err := v.metadata(ctx)
		if err != nil {
			return tokenInfo{}, err
		}
		if endpoint = m.IntrospectionEndpoint; endpoint == "" {
			return tokenInfo{}, fmt.Errorf("%w: %s has no introspection_endpoint; set introspection_url", errAuthServer, v.cfg.Issuer)
		}
	}
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return tokenInfo{}, fmt.Errorf("%w: %v", errAuthServer, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.SetBasicAuth(url.QueryEscape(v.cfg.ClientID), url.QueryEscape(v.cfg.ClientSecret))
	resp, err := v.client.Do(req)
	if err != nil {
		return tokenInfo{}, fmt.Errorf("%w: introspection: %v", errAuthServer, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAuthServerBody))
	if err != nil || resp.StatusCode != http.StatusOK {
		return tokenInfo{}, fmt.Errorf("%w: introspection answered %s", errAuthServer, resp.Status)
	}
	var a introspectionAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return tokenInfo{}, fmt.Errorf("%w: introspection answer: %v", errAuthServer, err)
	}
	if !a.Active {
		return tokenInfo{}, errors.New("the authorization server says the token is not active")
	}
	if a.Iss != "" && a.Iss != v.cfg.Issuer {
		return tokenInfo{}, fmt.Errorf("the token was issued by %q", a.Iss)
	}
	var aud jwt.Audience
	if len(a.Aud) > 0 {
		if err := aud.UnmarshalJSON(a.Aud); err != nil {
			return tokenInfo{}, fmt.Errorf("introspection aud: %v", err)
		}
	}
	info := tokenInfo{Subject: a.Sub, Client: a.ClientID, Scopes: strings.Fields(a.Scope), Audience: aud}
	if a.Exp > 0 {
		info.Expiry = time.Unix(a.Exp, 0)
		if time.Now().After(info.Expiry.Add(clockSkew)) {
			return tokenInfo{}, errors.New("the token has expired")
		}
	}
	if info.Subject == "" {
		info.Subject = info.Client // a client credentials token
	}
	return info, nil
}

// keySet is the issuer's JSON Web Key Set, fetched again when a token
// names a key it lacks (the issuer rotated its keys), at most once per
// keySetMinRefresh.
type keySet struct {
	client  *http.Client
	keys    atomic.Pointer[jose.JSONWebKeySet]
	expires atomic.Int64 // unix nanoseconds after which keys is fetched again
	mu      sync.Mutex   // serializes fetches
	url     string       // guarded by mu
	fetched time.Time    // guarded by mu
}

func (k *keySet) setURL(u string) {
	k.mu.Lock()
	k.url = u
	k.mu.Unlock()
}

// find returns the key a token names (any key, when it names none). The
// set is fetched again for a key it lacks (at most once per
// keySetMinRefresh) and once it is keySetMaxAge old.
func (k *keySet) find(ctx context.Context, kid string) (*jose.JSONWebKey, error) {
	if key := k.lookup(kid); key != nil && time.Now().UnixNano() < k.expires.Load() {
		return key, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	stale := time.Now().UnixNano() >= k.expires.Load()
	if key := k.lookup(kid); key != nil && !stale {
		return key, nil // fetched meanwhile
	}
	if !stale && time.Since(k.fetched) < keySetMinRefresh {
		return nil, fmt.Errorf("%w (kid %q)", errKeyNotFetched, kid)
	}
	k.fetched = time.Now()
	// Not the request's context: the fetch serves every request waiting.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), authServerTimeout)
	defer cancel()
	set, err := k.fetch(ctx)
	switch {
	case err != nil && k.keys.Load() != nil && stale:
		// Keep the old set a while longer rather than refuse every token.
		k.expires.Store(time.Now().Add(keySetMinRefresh).UnixNano())
	case err != nil:
		return nil, err
	default:
		k.keys.Store(set)
		k.expires.Store(time.Now().Add(keySetMaxAge).UnixNano())
	}
	if key := k.lookup(kid); key != nil {
		return key, nil
	}
	return nil, fmt.Errorf("the issuer has no key %q", kid)
}

func (k *keySet) lookup(kid string) *jose.JSONWebKey {
	set := k.keys.Load()
	if set == nil {
		return nil
	}
	for i := range set.Keys {
		if key := &set.Keys[i]; (kid == "" || key.KeyID == kid) && key.Use != "enc" {
			return key
		}
	}
	return nil
}

func (k *keySet) fetch(ctx context.Context) (*jose.JSONWebKeySet, error) {
	if k.url == "" {
		return nil, fmt.Errorf("%w: its metadata names no jwks_uri", errAuthServer)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errAuthServer, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: fetching its keys: %v", errAuthServer, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAuthServerBody))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: fetching its keys: %s", errAuthServer, resp.Status)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("%w: its key set: %v", errAuthServer, err)
	}
	return &set, nil
}

// tokenCache remembers checked tokens by hash: a valid JWT until it
// expires (its signature cannot change), an introspected token briefly,
// an invalid token for rejectionTTL. It holds at most tokenCacheSize
// entries.
type tokenCache struct {
	mu       sync.Mutex
	entries  map[[sha256.Size]byte]tokenCacheEntry // valid tokens
	rejected map[[sha256.Size]byte]tokenCacheEntry
}

type tokenCacheEntry struct {
	info  tokenInfo
	err   error
	until time.Time
}

func (c *tokenCache) get(sum [sha256.Size]byte, now time.Time) (tokenInfo, error, bool) {
	c.mu.Lock()
	e, ok := c.entries[sum]
	if !ok {
		e, ok = c.rejected[sum]
	}
	c.mu.Unlock()
	if !ok || now.After(e.until) {
		return tokenInfo{}, nil, false
	}
	return e.info, e.err, true
}

func (c *tokenCache) put(sum [sha256.Size]byte, e tokenCacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := &c.entries
	if e.err != nil {
		m = &c.rejected
	}
	if *m == nil {
		*m = make(map[[sha256.Size]byte]tokenCacheEntry)
	}
	if len(*m) >= tokenCacheSize {
		now := time.Now()
		for k, old := range *m {
			if now.After(old.until) {
				delete(*m, k)
			}
		}
		if len(*m) >= tokenCacheSize {
			clear(*m) // all live: start again rather than grow
		}
	}
	(*m)[sum] = e
}
