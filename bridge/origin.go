package bridge

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

// OriginPolicy decides which browser origins may call the bridge. It is the
// defense against DNS rebinding: a page on another site can make a browser
// send requests to a server on localhost, but not hide its Origin.
type OriginPolicy struct {
	// Allowed lists exact origins ("https://app.example.com"), wildcard
	// subdomain patterns ("https://*.example.com"), or "*". When empty, only
	// requests without an Origin are allowed, plus localhost origins on a
	// connection to a loopback address.
	Allowed []string
}

// Allow reports whether r's Origin may use the bridge.
func (p OriginPolicy) Allow(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if len(p.Allowed) == 0 {
		return isLoopbackConn(r) && isLocalhostOrigin(origin)
	}
	for _, pattern := range p.Allowed {
		if originMatches(pattern, origin) {
			return true
		}
	}
	return false
}

func originMatches(pattern, origin string) bool {
	if pattern == "*" || strings.EqualFold(pattern, origin) {
		return true
	}
	scheme, rest, ok := strings.Cut(pattern, "://*.")
	if !ok {
		return false
	}
	u, err := url.Parse(origin)
	if err != nil || !strings.EqualFold(u.Scheme, scheme) {
		return false
	}
	// rest is "example.com" or "example.com:8443"; compare host and port.
	host := u.Host
	return len(host) > len(rest)+1 && strings.EqualFold(host[len(host)-len(rest)-1:], "."+rest)
}

func isLocalhostOrigin(origin string) bool {
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	switch strings.ToLower(u.Hostname()) {
	case "localhost", "127.0.0.1", "::1":
		return true
	}
	return false
}

// isLoopbackConn reports whether the request came in on a loopback address
// of this server.
func isLoopbackConn(r *http.Request) bool {
	addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
