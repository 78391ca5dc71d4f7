package caddymodule

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// CORSConfig turns on CORS answers for the origins in allowed_origins.
type CORSConfig struct {
	// AllowCredentials lets browsers send credentials (cookies, HTTP auth)
	// and read the answers. It cannot be combined with the origin "*".
	AllowCredentials bool `json:"allow_credentials,omitempty"`

	// MaxAge is how long browsers may cache a preflight answer. Default: 1h.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// AllowHeaders are request headers allowed on top of those MCP uses.
	AllowHeaders []string `json:"allow_headers,omitempty"`
}

// corsAllowHeaders are the request headers MCP clients send.
var corsAllowHeaders = []string{
	"Authorization", "X-API-Key", "Content-Type", "Accept", "Mcp-Session-Id",
	"MCP-Protocol-Version", "Last-Event-ID", "Mcp-Method", "Mcp-Name",
}

// corsExposeHeaders are the response headers browser clients must read.
const corsExposeHeaders = "Mcp-Session-Id, MCP-Protocol-Version, WWW-Authenticate"

const corsAllowMethods = "GET, POST, DELETE, OPTIONS"

// isPreflight reports whether r is a CORS preflight request.
func isPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions && r.Header.Get("Origin") != "" && r.Header.Get("Access-Control-Request-Method") != ""
}

// preflight answers a CORS preflight from an allowed origin.
func (c *CORSConfig) preflight(w http.ResponseWriter, r *http.Request) {
	c.allowOrigin(w, r)
	h := w.Header()
	h.Set("Access-Control-Allow-Methods", corsAllowMethods)
	h.Set("Access-Control-Allow-Headers", strings.Join(append(corsAllowHeaders, c.AllowHeaders...), ", "))
	maxAge := time.Duration(c.MaxAge)
	if maxAge <= 0 {
		maxAge = time.Hour
	}
	h.Set("Access-Control-Max-Age", strconv.Itoa(int(maxAge.Seconds())))
	w.WriteHeader(http.StatusNoContent)
}

// allowOrigin adds the CORS headers of an answer to an allowed origin.
func (c *CORSConfig) allowOrigin(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Add("Vary", "Origin")
	origin := r.Header.Get("Origin")
	if origin == "" {
		return
	}
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
	if c.AllowCredentials {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
}
