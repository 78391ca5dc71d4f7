package testissuer

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// issuerStorage is zitadel's in-memory example storage with what the issuer
// changes: its own clients (registered dynamically), its own rotating keys,
// the RFC 8707 audience of auth requests and tokens, the access token
// lifetime, a scope claim in JWT access tokens, and an introspection answer
// with aud, client_id, scope, iss and exp for the resource server.
type issuerStorage struct {
	*storage.Storage

	issuer string
	opts   Options
	keys   *keyRing
	users  users

	mu          sync.Mutex
	clients     map[string]*client
	authAud     map[string][]string      // auth request id → audience
	tokens      map[string]*tokenInfo    // access token id → what introspection tells
	refreshInfo map[string]*refreshEntry // refresh token → audience and access token
}

// tokenInfo is what the issuer remembers of an access token.
type tokenInfo struct {
	subject  string
	clientID string
	audience []string
	scopes   []string
	issuedAt time.Time
	expires  time.Time
}

// refreshEntry is what the issuer remembers of a refresh token.
type refreshEntry struct {
	audience      []string
	accessTokenID string
}

var (
	_ op.Storage                        = (*issuerStorage)(nil)
	_ op.CanGetPrivateClaimsFromRequest = (*issuerStorage)(nil)
)

func newIssuerStorage(issuer string, opts Options) (*issuerStorage, error) {
	keys, err := newKeyRing()
	if err != nil {
		return nil, err
	}
	users := newUserStore()
	return &issuerStorage{
		// The storage's own client map stays empty: GetClientByClientID and
		// AuthorizeClientIDSecret below answer from s.clients, which
		// registration writes under s.mu.
		Storage:     storage.NewStorageWithClients(users, map[string]*storage.Client{}),
		issuer:      issuer,
		opts:        opts,
		keys:        keys,
		users:       users,
		clients:     make(map[string]*client),
		authAud:     make(map[string][]string),
		tokens:      make(map[string]*tokenInfo),
		refreshInfo: make(map[string]*refreshEntry),
	}, nil
}

// resourceKey is the context key of the RFC 8707 resource parameters of the
// request being served (see Issuer.captureResource).
type resourceKey struct{}

func withResources(ctx context.Context, resources []string) context.Context {
	return context.WithValue(ctx, resourceKey{}, resources)
}

func resourcesFrom(ctx context.Context) []string {
	r, _ := ctx.Value(resourceKey{}).([]string)
	return r
}

// narrow returns the audience of a token request: the resources of the
// token request, which must be among those granted, or else those granted.
func narrow(granted, requested []string) ([]string, error) {
	if len(requested) == 0 {
		return granted, nil
	}
	if len(granted) == 0 {
		return requested, nil
	}
	for _, r := range requested {
		if !slices.Contains(granted, r) {
			return nil, oidc.ErrInvalidTarget().WithDescription("resource %s was not granted", r)
		}
	}
	return requested, nil
}

// authRequest is the storage's auth request with the RFC 8707 audience.
type authRequest struct {
	*storage.AuthRequest
	audience []string
}

// GetAudience returns the requested resources, or the client id (zitadel's
// default) when there were none.
func (a *authRequest) GetAudience() []string {
	if len(a.audience) > 0 {
		return a.audience
	}
	return a.AuthRequest.GetAudience()
}

// refreshRequest is the storage's refresh token request with the RFC 8707
// audience.
type refreshRequest struct {
	*storage.RefreshTokenRequest
	audience []string
}

// GetAudience returns the audience of the refreshed access token.
func (r *refreshRequest) GetAudience() []string {
	if len(r.audience) > 0 {
		return r.audience
	}
	return r.RefreshTokenRequest.GetAudience()
}

func (s *issuerStorage) wrapAuthRequest(req op.AuthRequest, audience []string) (op.AuthRequest, error) {
	ar, ok := req.(*storage.AuthRequest)
	if !ok {
		return nil, fmt.Errorf("testissuer: unexpected auth request type %T", req)
	}
	return &authRequest{AuthRequest: ar, audience: audience}, nil
}

// CreateAuthRequest stores the auth request and the resources of the
// authorization request it came from.
func (s *issuerStorage) CreateAuthRequest(ctx context.Context, req *oidc.AuthRequest, userID string) (op.AuthRequest, error) {
	created, err := s.Storage.CreateAuthRequest(ctx, req, userID)
	if err != nil {
		return nil, err
	}
	resources := resourcesFrom(ctx)
	s.mu.Lock()
	s.authAud[created.GetID()] = resources
	s.mu.Unlock()
	return s.wrapAuthRequest(created, resources)
}

// AuthRequestByID returns the auth request with its audience.
func (s *issuerStorage) AuthRequestByID(ctx context.Context, id string) (op.AuthRequest, error) {
	req, err := s.Storage.AuthRequestByID(ctx, id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	aud := s.authAud[id]
	s.mu.Unlock()
	return s.wrapAuthRequest(req, aud)
}

// AuthRequestByCode returns the auth request of a code with its audience,
// narrowed to the resources of the token request, if it has any.
func (s *issuerStorage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	req, err := s.Storage.AuthRequestByCode(ctx, code)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	aud := s.authAud[req.GetID()]
	s.mu.Unlock()
	aud, err = narrow(aud, resourcesFrom(ctx))
	if err != nil {
		return nil, err
	}
	return s.wrapAuthRequest(req, aud)
}

// DeleteAuthRequest deletes the auth request and its audience.
func (s *issuerStorage) DeleteAuthRequest(ctx context.Context, id string) error {
	s.mu.Lock()
	delete(s.authAud, id)
	s.mu.Unlock()
	return s.Storage.DeleteAuthRequest(ctx, id)
}

// unwrap returns the request as the example storage knows it (its token
// methods look at the concrete type), and the client id of the request.
func unwrap(req op.TokenRequest) (op.TokenRequest, string) {
	switch r := req.(type) {
	case *authRequest:
		return r.AuthRequest, r.GetClientID()
	case *refreshRequest:
		return r.RefreshTokenRequest, r.GetClientID()
	case interface{ GetClientID() string }:
		return req, r.GetClientID()
	}
	return req, ""
}

// remember records an access token issued now, and returns its expiry.
func (s *issuerStorage) remember(id string, req op.TokenRequest, clientID string) time.Time {
	now := time.Now()
	info := &tokenInfo{
		subject:  req.GetSubject(),
		clientID: clientID,
		audience: req.GetAudience(),
		scopes:   slices.Clone(req.GetScopes()),
		issuedAt: now,
		expires:  now.Add(s.opts.AccessTokenLifetime),
	}
	if len(info.audience) == 0 {
		info.audience = []string{clientID}
	}
	s.mu.Lock()
	s.tokens[id] = info
	s.mu.Unlock()
	return info.expires
}

// CreateAccessToken creates the access token in the storage and returns the
// issuer's lifetime for it.
func (s *issuerStorage) CreateAccessToken(ctx context.Context, req op.TokenRequest) (string, time.Time, error) {
	inner, clientID := unwrap(req)
	id, _, err := s.Storage.CreateAccessToken(ctx, inner)
	if err != nil {
		return "", time.Time{}, err
	}
	return id, s.remember(id, req, clientID), nil
}

// CreateAccessAndRefreshTokens creates the tokens in the storage, keeps the
// audience for the refresh token, and returns the issuer's lifetime for the
// access token.
func (s *issuerStorage) CreateAccessAndRefreshTokens(ctx context.Context, req op.TokenRequest, currentRefreshToken string) (string, string, time.Time, error) {
	inner, clientID := unwrap(req)
	id, refresh, _, err := s.Storage.CreateAccessAndRefreshTokens(ctx, inner, currentRefreshToken)
	if err != nil {
		return "", "", time.Time{}, err
	}
	exp := s.remember(id, req, clientID)
	s.mu.Lock()
	if old, ok := s.refreshInfo[currentRefreshToken]; ok {
		// The storage deleted the access token of the old refresh token.
		delete(s.tokens, old.accessTokenID)
		delete(s.refreshInfo, currentRefreshToken)
	}
	s.refreshInfo[refresh] = &refreshEntry{audience: req.GetAudience(), accessTokenID: id}
	s.mu.Unlock()
	return id, refresh, exp, nil
}

// TokenRequestByRefreshToken returns the refresh token request with its
// audience, narrowed to the resources of the token request, if it has any.
func (s *issuerStorage) TokenRequestByRefreshToken(ctx context.Context, refreshToken string) (op.RefreshTokenRequest, error) {
	req, err := s.Storage.TokenRequestByRefreshToken(ctx, refreshToken)
	if err != nil {
		return nil, err
	}
	rr, ok := req.(*storage.RefreshTokenRequest)
	if !ok {
		return nil, fmt.Errorf("testissuer: unexpected refresh token request type %T", req)
	}
	var aud []string
	s.mu.Lock()
	if e, ok := s.refreshInfo[refreshToken]; ok {
		aud = e.audience
	}
	s.mu.Unlock()
	aud, err = narrow(aud, resourcesFrom(ctx))
	if err != nil {
		return nil, err
	}
	return &refreshRequest{RefreshTokenRequest: rr, audience: aud}, nil
}

// RevokeToken revokes the token in the storage and forgets it.
func (s *issuerStorage) RevokeToken(ctx context.Context, tokenOrTokenID, userID, clientID string) *oidc.Error {
	if err := s.Storage.RevokeToken(ctx, tokenOrTokenID, userID, clientID); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tokens[tokenOrTokenID]; ok && t.clientID == clientID {
		delete(s.tokens, tokenOrTokenID)
	}
	if e, ok := s.refreshInfo[tokenOrTokenID]; ok {
		if t, ok := s.tokens[e.accessTokenID]; ok && t.clientID == clientID {
			delete(s.tokens, e.accessTokenID)
			delete(s.refreshInfo, tokenOrTokenID)
		}
	}
	return nil
}

// TerminateSession ends the user's tokens for the client, in the storage and
// here.
func (s *issuerStorage) TerminateSession(ctx context.Context, userID, clientID string) error {
	if err := s.Storage.TerminateSession(ctx, userID, clientID); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, t := range s.tokens {
		if t.subject == userID && t.clientID == clientID {
			delete(s.tokens, id)
		}
	}
	return nil
}

// SetIntrospectionFromToken answers an RFC 7662 introspection request of
// clientID (authenticated by zitadel) about an access token. A confidential
// client, such as the introspection client, may introspect any token; a
// public one only a token issued to it or meant for it.
func (s *issuerStorage) SetIntrospectionFromToken(ctx context.Context, resp *oidc.IntrospectionResponse, tokenID, subject, clientID string) error {
	s.mu.Lock()
	t, ok := s.tokens[tokenID]
	var info tokenInfo
	if ok {
		info = *t
	}
	caller, known := s.clients[clientID]
	introspector := known && caller.secret != ""
	s.mu.Unlock()
	if !ok {
		return errors.New("token is unknown")
	}
	if info.subject != subject {
		return errors.New("token subject mismatch")
	}
	if !time.Now().Before(info.expires) {
		return errors.New("token is expired")
	}
	if !introspector && clientID != info.clientID && !slices.Contains(info.audience, clientID) {
		return errors.New("token is not for this client")
	}
	resp.Subject = info.subject
	resp.Username = info.subject
	resp.ClientID = info.clientID
	resp.Audience = info.audience
	resp.Scope = info.scopes
	resp.Issuer = s.issuer
	resp.IssuedAt = oidc.FromTime(info.issuedAt)
	resp.NotBefore = oidc.FromTime(info.issuedAt)
	resp.Expiration = oidc.FromTime(info.expires)
	resp.JWTID = tokenID
	resp.TokenType = oidc.BearerToken
	return nil
}

// GetPrivateClaimsFromRequest adds the granted scopes, space-separated, as
// the scope claim of JWT access tokens (zitadel sets client_id itself).
func (s *issuerStorage) GetPrivateClaimsFromRequest(ctx context.Context, req op.TokenRequest, _ []string) (map[string]any, error) {
	scopes := req.GetScopes()
	if len(scopes) == 0 {
		return nil, nil
	}
	return map[string]any{"scope": strings.Join(scopes, " ")}, nil
}

// GetClientByClientID returns a client registered with the issuer.
func (s *issuerStorage) GetClientByClientID(ctx context.Context, clientID string) (op.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[clientID]
	if !ok {
		return nil, errors.New("client not found")
	}
	return c, nil
}

// AuthorizeClientIDSecret checks a confidential client's secret.
func (s *issuerStorage) AuthorizeClientIDSecret(ctx context.Context, clientID, clientSecret string) error {
	s.mu.Lock()
	c, ok := s.clients[clientID]
	s.mu.Unlock()
	if !ok {
		return errors.New("client not found")
	}
	if c.secret == "" || subtle.ConstantTimeCompare([]byte(c.secret), []byte(clientSecret)) != 1 {
		return errors.New("invalid secret")
	}
	return nil
}

// SigningKey returns the current signing key.
func (s *issuerStorage) SigningKey(context.Context) (op.SigningKey, error) {
	return s.keys.current(), nil
}

// SignatureAlgorithms returns RS256, the algorithm of every key.
func (s *issuerStorage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

// KeySet returns the public keys the JWKS serves.
func (s *issuerStorage) KeySet(context.Context) ([]op.Key, error) {
	return s.keys.published(), nil
}

// client is a client of the example storage with the issuer's settings.
type client struct {
	*storage.Client
	authMethod      oidc.AuthMethod
	secret          string
	accessTokenType op.AccessTokenType
	scopes          []string
}

// newClient wraps a client of the example storage.
func (s *issuerStorage) newClient(c *storage.Client, authMethod oidc.AuthMethod, secret string) *client {
	t := op.AccessTokenTypeJWT
	if s.opts.Opaque {
		t = op.AccessTokenTypeBearer
	}
	return &client{Client: c, authMethod: authMethod, secret: secret, accessTokenType: t, scopes: s.opts.Scopes}
}

func (s *issuerStorage) addClient(c *client) {
	s.mu.Lock()
	s.clients[c.GetID()] = c
	s.mu.Unlock()
}

// AuthMethod returns the registered token endpoint auth method.
func (c *client) AuthMethod() oidc.AuthMethod { return c.authMethod }

// AccessTokenType returns JWT, or Bearer (opaque) with Options.Opaque.
func (c *client) AccessTokenType() op.AccessTokenType { return c.accessTokenType }

// LoginURL returns the issuer's login path, which logs the user in at once.
func (c *client) LoginURL(id string) string { return loginPath + "?authRequestID=" + id }

// IsScopeAllowed allows the scopes of Options.Scopes.
func (c *client) IsScopeAllowed(scope string) bool { return slices.Contains(c.scopes, scope) }

// DevMode allows any registered redirect URI, http ones included.
func (c *client) DevMode() bool { return true }

// ResponseTypes returns "code", the only one the issuer's clients use.
func (c *client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}

// GrantTypes returns authorization_code and refresh_token.
func (c *client) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeRefreshToken}
}

// users is the example storage's UserStore with alice and bob, whose ids are
// their names.
type users map[string]*storage.User

func newUserStore() users {
	u := users{}
	for _, name := range userNames {
		u[name] = &storage.User{
			ID:            name,
			Username:      name,
			Password:      rand.Text(),
			FirstName:     strings.ToUpper(name[:1]) + name[1:],
			LastName:      "Test",
			Email:         name + "@example.com",
			EmailVerified: true,
		}
	}
	return u
}

// GetUserByID returns the user whose id is id.
func (u users) GetUserByID(id string) *storage.User { return u[id] }

// GetUserByUsername returns the user whose name is name.
func (u users) GetUserByUsername(name string) *storage.User { return u[name] }

// ExampleClientID returns the example storage's service user id.
func (u users) ExampleClientID() string { return storage.ServiceUserID }

// signingKey is an RS256 key: an op.SigningKey, and through publicKey an
// op.Key of the JWKS.
type signingKey struct {
	id      string
	private *rsa.PrivateKey
}

func (k *signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k *signingKey) Key() any                                    { return k.private }
func (k *signingKey) ID() string                                  { return k.id }

type publicKey struct{ k *signingKey }

func (p publicKey) ID() string                         { return p.k.id }
func (p publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (p publicKey) Use() string                        { return "sig" }
func (p publicKey) Key() any                           { return &p.k.private.PublicKey }

// keyRing holds the current signing key and the older ones the JWKS still
// serves.
type keyRing struct {
	mu  sync.Mutex
	cur *signingKey
	old []*signingKey
}

func newKeyRing() (*keyRing, error) {
	k, err := newSigningKey()
	if err != nil {
		return nil, err
	}
	return &keyRing{cur: k}, nil
}

func newSigningKey() (*signingKey, error) {
	priv, err := newRSAKey()
	if err != nil {
		return nil, err
	}
	return &signingKey{id: rand.Text(), private: priv}, nil
}

func (r *keyRing) current() *signingKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

func (r *keyRing) published() []op.Key {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := []op.Key{publicKey{r.cur}}
	for _, k := range r.old {
		keys = append(keys, publicKey{k})
	}
	return keys
}

func (r *keyRing) rotate(keepOld bool) error {
	k, err := newSigningKey()
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if keepOld {
		r.old = append([]*signingKey{r.cur}, r.old...)
	} else {
		r.old = nil
	}
	r.cur = k
	return nil
}
