package caddymodule

import (
	"net/http"
	"os"
	"runtime"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Health details modes.
const (
	healthDetailsKey = "key"
	healthDetailsOn  = "on"
	healthDetailsOff = "off"
)

// showHealthDetails decides whether the health report shows its counts
// and errors to this request (see HealthDetails).
func (h *Handler) showHealthDetails(r *http.Request) bool {
	switch h.HealthDetails {
	case healthDetailsOn:
		return true
	case healthDetailsOff:
		return false
	}
	if fromLoopback(r) {
		return true
	}
	if !h.requiresAuth() {
		return false
	}
	_, failure := h.identify(r)
	return failure == nil
}

// warnIfOpen logs an error, once the config has started, for a site that
// anyone on the network can use: no API key, on an address that is not
// loopback only.
func (h *Handler) warnIfOpen(sites map[*caddyhttp.Server]string) {
	if h.requiresAuth() {
		return
	}
	var addrs []string
	for srv := range sites {
		addrs = append(addrs, srv.Listen...)
	}
	if !loopbackOnly(addrs) {
		h.logger.Error("this MCP bridge has no API key and listens beyond loopback: anyone who can reach it can run its tools; add api_key_file or oauth, or bind 127.0.0.1",
			zap.Strings("listen", addrs), zap.Strings("command", []string{h.Command}))
	}
}

// warnIfReadable logs an error for a key file that others can read.
func warnIfReadable(path string, logger *zap.Logger) {
	if runtime.GOOS == "windows" {
		return // no Unix modes to check
	}
	if info, err := os.Stat(path); err == nil && info.Mode().Perm()&0o077 != 0 {
		logger.Error("the API key file can be read by other users; chmod 600 it",
			zap.String("file", path), zap.String("mode", info.Mode().Perm().String()))
	}
}
