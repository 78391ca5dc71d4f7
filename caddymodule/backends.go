package caddymodule

import (
	"context"
	"sync"

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
	go func() {
		b.Shutdown()
		unfinished.Delete(b.Backend)
	}()
	return nil
}

// unfinished holds every backend until its Shutdown has returned, so that
// the process's exit can wait for all of them, those in use and those
// being retired (Caddy stops its apps, and so destructs the pools, before
// the exit callbacks run).
var unfinished sync.Map // *bridge.Backend → struct{}

// newBackendHandle makes a backend and counts it among those the exit
// waits for.
func newBackendHandle(b *bridge.Backend) backendHandle {
	unfinished.Store(b, struct{}{})
	return backendHandle{b}
}

// registerExit registers shutdownAll with Caddy, once per process (a
// module's own Context.OnExit is lost with the copy of the Context that
// Provision gets).
var registerExit sync.Once

// shutdownAll drains and stops every pool at once, and returns when every
// child is gone: Caddy exits only then, and a child's descendants that
// left its process group are found and stopped too.
func shutdownAll(context.Context) {
	var wg sync.WaitGroup
	unfinished.Range(func(b, _ any) bool {
		wg.Go(b.(*bridge.Backend).Shutdown)
		return true
	})
	wg.Wait()
}

// Interface guards
var _ caddy.Destructor = backendHandle{}
