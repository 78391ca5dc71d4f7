package caddymodule

import (
	"github.com/caddyserver/caddy/v2"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
)

// backends holds the running pools, keyed by a hash of their child
// configuration. A reload provisions the new handlers before it cleans up
// the old ones, so a pool whose configuration did not change never drops
// to zero references, and its children and sessions carry on.
var backends = caddy.NewUsagePool()

// backendHandle lets the usage pool stop a backend once nothing uses it.
type backendHandle struct {
	*bridge.Backend
}

// Destruct retires the backend in the background: requests in flight
// finish (up to the drain timeout), then the children stop. Caddy calls it
// under its config lock, which must not wait for that. On process exit the
// "stopping" event has already done it.
func (b backendHandle) Destruct() error {
	go b.Shutdown()
	return nil
}

// Interface guards
var _ caddy.Destructor = backendHandle{}
