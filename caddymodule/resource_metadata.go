package caddymodule

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/oauthex"
)

// resourceMetadataPath is where RFC 9728 puts a protected resource's
// metadata: at this path followed by the resource's own path (the form the
// MCP spec tries first), or at this path alone for the whole host.
const resourceMetadataPath = "/.well-known/oauth-protected-resource"

// requestBase is the scheme and host the client reached the handler at.
func requestBase(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// endpointOf is the client endpoint a request is for: the legacy SSE
// message path counts as its stream's.
func (h *Handler) endpointOf(r *http.Request) string {
	endpoints := h.server.ClientEndpoints()
	for _, e := range endpoints {
		if r.URL.Path == e {
			return e
		}
	}
	return endpoints[0]
}

// resourceFor is the resource identifier of the endpoint a request is
// for: the configured audience, or the URL the client reached it at.
func (h *Handler) resourceFor(r *http.Request, endpoint string) string {
	if h.OAuth.Audience != "" {
		return h.OAuth.Audience
	}
	return requestBase(r) + mountPrefix(r) + endpoint
}

// audienceAccepted reports whether a token for these audiences is meant
// for this handler: the configured audience; or, by default, any of its
// endpoints' URLs or the host's URL, as the client reached them (a token
// a client got for /mcp also serves its legacy SSE or WebSocket client).
func (h *Handler) audienceAccepted(r *http.Request, audience []string) bool {
	if h.OAuth.Audience != "" {
		for _, a := range audience {
			if a == h.OAuth.Audience {
				return true
			}
		}
		return false
	}
	base := requestBase(r)
	prefix := base + mountPrefix(r)
	for _, a := range audience {
		if a == base || a == base+"/" {
			return true
		}
		if path, ok := strings.CutPrefix(a, prefix); ok {
			for _, e := range h.server.ClientEndpoints() {
				if path == e {
					return true
				}
			}
		}
	}
	return false
}

// resourceMetadataURL is the metadata document a 401 names: the
// configured resource_metadata, else the one for the request's endpoint.
func (h *Handler) resourceMetadataURL(r *http.Request) string {
	if h.ResourceMetadata != "" {
		return h.ResourceMetadata
	}
	return requestBase(r) + resourceMetadataPath + mountPrefix(r) + h.endpointOf(r)
}

// serveResourceMetadata answers a request for the protected resource
// metadata of one of the handler's endpoints, or of the host (the root
// form), and reports whether it did. The document is public, for
// browsers too.
func (h *Handler) serveResourceMetadata(w http.ResponseWriter, r *http.Request) bool {
	suffix, ok := strings.CutPrefix(r.URL.Path, resourceMetadataPath)
	if !ok {
		return false
	}
	resource := ""
	if suffix == "" || suffix == "/" {
		resource = requestBase(r)
	} else {
		for _, e := range h.server.ClientEndpoints() {
			if suffix == e {
				resource = h.resourceFor(r, e)
			}
		}
		if resource == "" {
			return false
		}
	}
	if h.OAuth.Audience != "" {
		resource = h.OAuth.Audience
	}
	w.Header().Set("Access-Control-Allow-Origin", "*")
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodOptions:
		w.Header().Set("Access-Control-Allow-Methods", "GET")
		w.Header().Set("Access-Control-Allow-Headers", "*")
		w.WriteHeader(http.StatusNoContent)
		return true
	default:
		w.Header().Set("Allow", "GET, HEAD, OPTIONS")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return true
	}
	doc := oauthex.ProtectedResourceMetadata{
		Resource:               resource,
		AuthorizationServers:   []string{h.OAuth.Issuer},
		ScopesSupported:        h.OAuth.Scopes,
		BearerMethodsSupported: []string{"header"},
		ResourceName:           h.OAuth.ResourceName,
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=300")
	_ = json.NewEncoder(w).Encode(doc)
	return true
}

// challenge is the WWW-Authenticate value of a refused request: where
// the metadata is, which scopes to ask for, and what was wrong with a
// token that was sent (RFC 6750 section 3).
func (h *Handler) challenge(r *http.Request, errorCode, description string) string {
	var b strings.Builder
	b.WriteString(`Bearer resource_metadata="` + h.resourceMetadataURL(r) + `"`)
	if h.OAuth != nil && len(h.OAuth.Scopes) > 0 {
		b.WriteString(`, scope="` + strings.Join(h.OAuth.Scopes, " ") + `"`)
	}
	if errorCode != "" {
		b.WriteString(`, error="` + errorCode + `"`)
		if description != "" {
			b.WriteString(`, error_description="` + strings.ReplaceAll(description, `"`, `'`) + `"`)
		}
	}
	return b.String()
}
