package caddymodule

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
)

// apiKey is one accepted key, kept as its hash: comparisons then take the
// same time whatever the length of the key presented.
type apiKey struct {
	hash [sha256.Size]byte
	name string // what logs and sessions know the key by
}

// keyName names a key configured inline by a short hash of it: stable when
// the config is reordered, and no use to anyone who reads logs.
func keyName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "key:" + hex.EncodeToString(sum[:4])
}

// authenticate returns the name of the key the request presents, or false.
// It checks every key, so that the time taken does not tell which matched.
func (h *Handler) authenticate(r *http.Request) (string, bool) {
	presented := presentedKey(r, h.APIKeyQuery)
	if presented == "" {
		return "", false
	}
	sum := sha256.Sum256([]byte(presented))
	name, found := "", false
	for i := range h.keys {
		if subtle.ConstantTimeCompare(sum[:], h.keys[i].hash[:]) == 1 {
			name, found = h.keys[i].name, true
		}
	}
	return name, found
}

// presentedKey takes the key from `Authorization: Bearer`, `X-API-Key`,
// or, when allowed, the api_key query parameter, which it then removes
// from the URL so that nothing further down sees or logs it.
func presentedKey(r *http.Request, allowQuery bool) string {
	if scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(token)
	}
	if key := r.Header.Get("X-API-Key"); key != "" {
		return key
	}
	if !allowQuery {
		return ""
	}
	q := r.URL.Query()
	key := q.Get("api_key")
	if key != "" {
		q.Del("api_key")
		r.URL.RawQuery = q.Encode()
		r.RequestURI = r.URL.RequestURI()
	}
	return key
}

// stripCredentials removes the client's credentials from the request, so
// that nothing below the edge, and never the child, sees them.
func stripCredentials(r *http.Request) {
	r.Header.Del("Authorization")
	r.Header.Del("X-API-Key")
	r.Header.Del("Cookie")
}

// unauthorized answers a request without a valid key.
func (h *Handler) unauthorized(w http.ResponseWriter, r *http.Request) {
	challenge := "Bearer"
	if h.ResourceMetadata != "" {
		challenge += ` resource_metadata="` + h.ResourceMetadata + `"`
	}
	w.Header().Set("WWW-Authenticate", challenge)
	reason := "missing API key"
	if presentedKey(r, h.APIKeyQuery) != "" {
		reason = "wrong API key"
	}
	h.logger.Info("refused a request: "+reason, zap.String("remote_addr", r.RemoteAddr), zap.String("path", r.URL.Path))
	bridge.WriteError(w, http.StatusUnauthorized, bridge.CodeUnauthorized, "unauthorized: "+reason)
}
