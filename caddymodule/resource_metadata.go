package caddymodule

import (
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

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
// endpoints' URLs or the site's root URL, as the client reached them (a
// token a client got for /mcp also serves its legacy SSE or WebSocket
// client), but only when the request's Host is verified to be this
// server's own address: else a token for another server (another port of
// this machine, say) would pass with that server's Host.
func (h *Handler) audienceAccepted(r *http.Request, audience []string) bool {
	if h.OAuth.Audience != "" {
		return slices.ContainsFunc(audience, func(a string) bool { return sameResource(a, h.OAuth.Audience) })
	}
	if !h.ownHost(r) {
		return false
	}
	base := requestBase(r)
	prefix := base + mountPrefix(r)
	ours := []string{base, base + "/"}
	for _, e := range h.server.ClientEndpoints() {
		ours = append(ours, prefix+e)
	}
	// Exact matches first: the usual case parses no URL.
	for _, same := range []func(a, b string) bool{func(a, b string) bool { return a == b }, sameResource} {
		for _, a := range audience {
			if slices.ContainsFunc(ours, func(o string) bool { return same(a, o) }) {
				return true
			}
		}
	}
	return false
}

// sameResource compares resource identifiers, the scheme and host
// case-insensitively as URLs compare.
func sameResource(a, b string) bool {
	if a == b {
		return true
	}
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && strings.EqualFold(ua.Scheme, ub.Scheme) && strings.EqualFold(ua.Host, ub.Host) &&
		ua.Path == ub.Path && ua.RawQuery == ub.RawQuery && ua.User == nil && ub.User == nil
}

// ownHost reports whether the request's Host names the address it came
// to: its port is the connection's own, and its name is the connection's
// IP address, localhost on a loopback connection, a name a site of this
// server is addressed by, or one in allowed_hosts.
func (h *Handler) ownHost(r *http.Request) bool {
	local, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr)
	if !ok {
		return false
	}
	name, port, err := net.SplitHostPort(r.Host)
	if err != nil {
		name, port = r.Host, "80"
		if r.TLS != nil {
			port = "443"
		}
	}
	if port != strconv.Itoa(local.Port) {
		return false
	}
	name = strings.ToLower(strings.TrimSuffix(strings.Trim(name, "[]"), "."))
	if ip := net.ParseIP(name); ip != nil {
		return ip.Equal(local.IP)
	}
	if name == "localhost" {
		return local.IP.IsLoopback()
	}
	if slices.ContainsFunc(h.AllowedHosts, func(allowed string) bool { return hostMatches(strings.ToLower(allowed), name) }) {
		return true
	}
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return srv != nil && servesHost(srv.Routes, r)
}

// resourceMetadataURL is the metadata document a 401 names: the
// configured resource_metadata; else, with an audience, the document at
// the audience's own well-known URI; else the one for the request's
// endpoint.
func (h *Handler) resourceMetadataURL(r *http.Request) string {
	if h.ResourceMetadata != "" {
		return h.ResourceMetadata
	}
	if a, err := url.Parse(h.OAuth.Audience); h.OAuth.Audience != "" && err == nil {
		return a.Scheme + "://" + a.Host + resourceMetadataPath + a.Path
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
	// RFC 9728 section 3.3: the document's resource is the one its URI
	// was made from: the endpoint's URL for the path-suffixed form, the
	// site's for the root form. With an audience, the audience's path is
	// the one suffix served (and the root form names the audience too,
	// for clients that only look there).
	resource := ""
	switch {
	case h.OAuth.Audience != "":
		a, err := url.Parse(h.OAuth.Audience)
		if err == nil && (suffix == "" || suffix == "/" || suffix == a.Path) {
			resource = h.OAuth.Audience
		}
	case suffix == "" || suffix == "/":
		resource = requestBase(r)
	default:
		for _, e := range h.server.ClientEndpoints() {
			if suffix == e {
				resource = h.resourceFor(r, e)
			}
		}
	}
	if resource == "" {
		return false
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
			b.WriteString(`, error_description="` + challengeText(description) + `"`)
		}
	}
	return b.String()
}

// challengeText is description as RFC 6750 allows it in error_description:
// printable ASCII without " and \.
func challengeText(description string) string {
	return strings.Map(func(c rune) rune {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return '?'
		}
		return c
	}, description)
}
