package testissuer

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/rs/cors"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// handler routes the issuer's own endpoints and hands the rest to the
// OpenID provider, behind the RFC 8707 and RFC 9207 middleware.
func (i *Issuer) handler() http.Handler {
	// The issuer's own metadata and registration endpoints answer browsers
	// from any origin, as zitadel's endpoints do.
	anyOrigin := cors.AllowAll().Handler
	mux := http.NewServeMux()
	mux.Handle(oidc.DiscoveryEndpoint, anyOrigin(http.HandlerFunc(i.serveMetadata)))
	mux.Handle(oidc.AuthorizationServerMetadataEndpoint, anyOrigin(http.HandlerFunc(i.serveMetadata)))
	mux.Handle(registerPath, anyOrigin(http.HandlerFunc(i.serveRegister)))
	mux.HandleFunc(loginPath, op.NewIssuerInterceptor(i.provider.IssuerFromRequest).HandlerFunc(i.serveLogin))
	mux.Handle("/", i.captureResource(i.addIss(i.provider)))
	return mux
}

// serveMetadata serves zitadel's discovery document with what an OAuth
// client of MCP needs added: it is both the OpenID discovery document and
// the RFC 8414 metadata.
func (i *Issuer) serveMetadata(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "invalid_request", "method not allowed")
		return
	}
	inner := r.Clone(r.Context())
	inner.Method = http.MethodGet
	inner.URL.Path = oidc.DiscoveryEndpoint
	inner.URL.RawPath = ""
	rec := httptest.NewRecorder()
	i.provider.ServeHTTP(rec, inner)
	if rec.Code != http.StatusOK {
		writeError(w, http.StatusInternalServerError, "server_error", fmt.Sprintf("discovery answered %d: %s", rec.Code, rec.Body.String()))
		return
	}
	var meta map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &meta); err != nil {
		writeError(w, http.StatusInternalServerError, "server_error", "discovery: "+err.Error())
		return
	}
	meta["registration_endpoint"] = i.url + registerPath
	meta["code_challenge_methods_supported"] = []string{string(oidc.CodeChallengeMethodS256)}
	meta["scopes_supported"] = supportedScopes(i.opts.Scopes)
	meta["response_types_supported"] = []string{string(oidc.ResponseTypeCode)}
	meta["response_modes_supported"] = []string{string(oidc.ResponseModeQuery)}
	meta["authorization_response_iss_parameter_supported"] = true
	meta["introspection_endpoint_auth_methods_supported"] = []string{string(oidc.AuthMethodBasic)}
	if methods, _ := meta["token_endpoint_auth_methods_supported"].([]any); !slices.Contains(methods, any(string(oidc.AuthMethodNone))) {
		meta["token_endpoint_auth_methods_supported"] = append(methods, string(oidc.AuthMethodNone))
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, meta)
}

// registration is an RFC 7591 client registration request, and, with the
// fields the server fills in, its answer.
type registration struct {
	RedirectURIs            []string `json:"redirect_uris"`
	TokenEndpointAuthMethod string   `json:"token_endpoint_auth_method,omitempty"`
	GrantTypes              []string `json:"grant_types,omitempty"`
	ResponseTypes           []string `json:"response_types,omitempty"`
	ClientName              string   `json:"client_name,omitempty"`
	ClientURI               string   `json:"client_uri,omitempty"`
	Scope                   string   `json:"scope,omitempty"`
	ApplicationType         string   `json:"application_type,omitempty"`

	ClientID              string `json:"client_id,omitempty"`
	ClientSecret          string `json:"client_secret,omitempty"`
	ClientIDIssuedAt      int64  `json:"client_id_issued_at,omitempty"`
	ClientSecretExpiresAt *int64 `json:"client_secret_expires_at,omitempty"`
}

// serveRegister implements RFC 7591 dynamic client registration. A client
// that asks for token_endpoint_auth_method "none", or for none at all, is a
// public client that must use PKCE; one that asks for client_secret_basic or
// client_secret_post gets a secret.
func (i *Issuer) serveRegister(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeError(w, http.StatusMethodNotAllowed, "invalid_request", "method not allowed")
		return
	}
	var reg registration
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&reg); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_client_metadata", "cannot parse the client metadata: "+err.Error())
		return
	}
	if len(reg.RedirectURIs) == 0 {
		writeError(w, http.StatusBadRequest, "invalid_redirect_uri", "redirect_uris is required")
		return
	}
	for _, u := range reg.RedirectURIs {
		p, err := url.Parse(u)
		if err != nil || !p.IsAbs() || p.Fragment != "" {
			writeError(w, http.StatusBadRequest, "invalid_redirect_uri", fmt.Sprintf("redirect URI %q is not an absolute URI without a fragment", u))
			return
		}
	}
	for _, g := range reg.GrantTypes {
		if g != string(oidc.GrantTypeCode) && g != string(oidc.GrantTypeRefreshToken) {
			writeError(w, http.StatusBadRequest, "invalid_client_metadata", "unsupported grant type "+g)
			return
		}
	}
	for _, t := range reg.ResponseTypes {
		if t != string(oidc.ResponseTypeCode) {
			writeError(w, http.StatusBadRequest, "invalid_client_metadata", "unsupported response type "+t)
			return
		}
	}

	id := rand.Text()
	var c *client
	switch reg.TokenEndpointAuthMethod {
	case "", string(oidc.AuthMethodNone):
		reg.TokenEndpointAuthMethod = string(oidc.AuthMethodNone)
		c = i.store.newClient(storage.NativeClient(id, reg.RedirectURIs...), oidc.AuthMethodNone, "")
	case string(oidc.AuthMethodBasic), string(oidc.AuthMethodPost):
		reg.ClientSecret = rand.Text()
		never := int64(0)
		reg.ClientSecretExpiresAt = &never
		c = i.store.newClient(storage.WebClient(id, reg.ClientSecret, reg.RedirectURIs...), oidc.AuthMethod(reg.TokenEndpointAuthMethod), reg.ClientSecret)
	default:
		writeError(w, http.StatusBadRequest, "invalid_client_metadata", "unsupported token_endpoint_auth_method "+reg.TokenEndpointAuthMethod)
		return
	}
	i.store.addClient(c)

	reg.ClientID = id
	reg.ClientIDIssuedAt = time.Now().Unix()
	reg.GrantTypes = []string{string(oidc.GrantTypeCode), string(oidc.GrantTypeRefreshToken)}
	reg.ResponseTypes = []string{string(oidc.ResponseTypeCode)}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, reg)
}

// serveLogin is the login step: it logs in the user named by the login_hint
// of the auth request (alice without one) at once, with no page, and
// redirects back to the provider's callback.
func (i *Issuer) serveLogin(w http.ResponseWriter, r *http.Request) {
	id := r.FormValue("authRequestID")
	req, err := i.store.AuthRequestByID(r.Context(), id)
	if err != nil {
		http.Error(w, "unknown auth request: "+err.Error(), http.StatusBadRequest)
		return
	}
	name := defaultUser
	if ar, ok := req.(*authRequest); ok && ar.LoginHint != "" {
		name = ar.LoginHint
	}
	user := i.store.users.GetUserByUsername(name)
	if user == nil {
		http.Error(w, fmt.Sprintf("unknown user %q (the users are %s)", name, strings.Join(userNames, ", ")), http.StatusBadRequest)
		return
	}
	if err := i.store.CheckUsernamePassword(user.Username, user.Password, id); err != nil {
		http.Error(w, "login failed: "+err.Error(), http.StatusBadRequest)
		return
	}
	http.Redirect(w, r, op.AuthCallbackURL(i.provider)(r.Context(), id), http.StatusFound)
}

// captureResource reads the RFC 8707 resource parameters of authorization
// and token requests into the request context, where the storage finds
// them, and gives an authorization request without a scope the default one.
func (i *Issuer) captureResource(next http.Handler) http.Handler {
	authorize := i.provider.AuthorizationEndpoint().Relative()
	token := i.provider.TokenEndpoint().Relative()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != authorize && r.URL.Path != token {
			next.ServeHTTP(w, r)
			return
		}
		if err := r.ParseForm(); err != nil {
			writeError(w, http.StatusBadRequest, "invalid_request", "cannot parse the form: "+err.Error())
			return
		}
		resources := r.Form["resource"]
		for _, res := range resources {
			u, err := url.Parse(res)
			if err != nil || !u.IsAbs() || u.Fragment != "" {
				writeError(w, http.StatusBadRequest, "invalid_target", fmt.Sprintf("resource %q is not an absolute URI without a fragment", res))
				return
			}
		}
		if r.URL.Path == authorize && strings.TrimSpace(r.Form.Get("scope")) == "" {
			r.Form.Set("scope", i.defaultScope())
		}
		next.ServeHTTP(w, r.WithContext(withResources(r.Context(), resources)))
	})
}

// defaultScope is the scope granted to an authorization request without
// one: the extra scopes, or openid when there are none.
func (i *Issuer) defaultScope() string {
	if len(i.opts.Scopes) == 0 {
		return oidc.ScopeOpenID
	}
	return strings.Join(i.opts.Scopes, " ")
}

// addIss adds the RFC 9207 iss parameter to the authorization responses
// (success and error) that the provider redirects to a client.
func (i *Issuer) addIss(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&issWriter{ResponseWriter: w, issuer: i.url}, r)
	})
}

// issWriter rewrites the Location of a redirect to a client's redirect URI.
type issWriter struct {
	http.ResponseWriter
	issuer      string
	wroteHeader bool
}

func (w *issWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.wroteHeader = true
		if code == http.StatusFound || code == http.StatusSeeOther {
			if loc := w.Header().Get("Location"); loc != "" {
				w.Header().Set("Location", withIss(loc, w.issuer))
			}
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *issWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// withIss adds iss to loc if it is an authorization response (a code or an
// error in the query) to a URI that is not the issuer's own.
func withIss(loc, issuer string) string {
	u, err := url.Parse(loc)
	if err != nil || !u.IsAbs() || loc == issuer || strings.HasPrefix(loc, issuer+"/") {
		return loc
	}
	q := u.Query()
	if (q.Get("code") == "" && q.Get("error") == "") || q.Has("iss") {
		return loc
	}
	q.Set("iss", issuer)
	u.RawQuery = q.Encode()
	return u.String()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, description string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": description})
}
