package caddymodule

import (
	"net"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// hostAllowed is the DNS-rebinding defence the MCP transports ask local
// servers for: a page of evil.example whose name the attacker made resolve
// to this machine reaches the bridge with "Host: evil.example", which this
// refuses. Allowed are: IP addresses and localhost names (a rebinding
// attack needs a name of its own), the names in allowed_hosts, and any
// name a site of this server is addressed by (Caddy routes requests by
// their Host; a site like ":8080" names none, so only allowed_hosts add
// names to it).
func (h *Handler) hostAllowed(r *http.Request) bool {
	host := r.Host
	if name, _, err := net.SplitHostPort(host); err == nil {
		host = name
	}
	host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
	switch {
	case host == "":
		return false
	case net.ParseIP(host) != nil, host == "localhost", strings.HasSuffix(host, ".localhost"):
		return true
	case slices.ContainsFunc(h.AllowedHosts, func(allowed string) bool { return hostMatches(strings.ToLower(allowed), host) }):
		return true
	}
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return srv != nil && servesHost(srv.Routes, r)
}

// hostMatches matches a name against an allowed_hosts entry: a name, a
// pattern such as *.example.com, or * for any.
func hostMatches(allowed, host string) bool {
	if suffix, wildcard := strings.CutPrefix(allowed, "*"); wildcard {
		return strings.HasSuffix(host, suffix)
	}
	return allowed == host
}

// servesHost reports whether a route of the server matches the request's
// Host with a host matcher: the server has a site by that name.
func servesHost(routes caddyhttp.RouteList, r *http.Request) bool {
	for _, route := range routes {
		for _, set := range route.MatcherSets {
			for _, m := range set {
				if mh, ok := m.(*caddyhttp.MatchHost); ok { // modules are loaded as pointers
					if match, err := mh.MatchWithError(r); err == nil && match {
						return true
					}
				}
			}
		}
	}
	return false
}

// findSites finds, once the config has started, the servers whose routes
// hold h, and names each as siteOf does; siteOf then looks them up.
func (h *Handler) findSites() map[*caddyhttp.Server]string {
	sites := make(map[*caddyhttp.Server]string)
	if app, err := h.ctx.App("http"); err == nil {
		for _, srv := range app.(*caddyhttp.App).Servers {
			if holds(srv.Routes, h) {
				sites[srv] = siteName(srv)
			}
		}
	}
	h.sites.Store(&sites)
	return sites
}

// holds reports whether routes, or routes nested in them, run h.
func holds(routes caddyhttp.RouteList, h *Handler) bool {
	for _, route := range routes {
		for _, handler := range route.Handlers {
			switch handler := handler.(type) {
			case *Handler:
				if handler == h {
					return true
				}
			case *caddyhttp.Subroute:
				if holds(handler.Routes, h) {
					return true
				}
			}
		}
	}
	return false
}

// loopbackOnly reports whether every address listens on loopback only.
func loopbackOnly(addrs []string) bool {
	for _, addr := range addrs {
		na, err := caddy.ParseNetworkAddress(addr)
		if err != nil || !na.IsUnixNetwork() && !isLoopbackHost(na.Host) {
			return false
		}
	}
	return len(addrs) > 0
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// fromLoopback reports whether the request came in on a loopback address:
// from this machine.
func fromLoopback(r *http.Request) bool {
	addr, _ := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr)
	return addr != nil && addr.IP.IsLoopback()
}

// siteOf names the site a request came to by the addresses its server
// listens on: two sites with the same child configuration share a pool
// (which is how sessions survive a reload), but not their sessions, nor
// their per-key session counts. An HTTPS site and its HTTP twin listen on
// different ports.
func (h *Handler) siteOf(r *http.Request) string {
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil {
		return ""
	}
	if sites := h.sites.Load(); sites != nil {
		if name, ok := (*sites)[srv]; ok {
			return name
		}
	}
	return siteName(srv) // before the config has started
}

func siteName(srv *caddyhttp.Server) string { return strings.Join(srv.Listen, ",") }
