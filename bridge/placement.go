package bridge

import (
	"context"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/supervisor"
)

// placement puts a session, or a stateless request, on a child: a child of
// its own (isolatedPlacement) or a share of one (sharedPlacement). Every
// transport uses it the same way; the children come from the backend's
// supervisor, within its one budget.
type placement interface {
	// start starts what the placement keeps ready (warm spares, minimum
	// shared children). It is idempotent.
	start()
	// acquire places one client on a child, waiting for room up to the
	// pool's AcquireTimeout.
	acquire(ctx context.Context, req leaseRequest) (lease, error)
	// close stops the children the placement holds that no lease does and
	// the goroutines it started; children held by leases are stopped by
	// their Release.
	close()
	// ready counts the children started and carrying no client.
	ready() int
	// lastError is the last failure to start a child, if any.
	lastError() error
}

// leaseRequest says where a lease's messages from the child go.
type leaseRequest struct {
	// deliver gets each message from the child for this client, one at a
	// time; it owns the slice.
	deliver func(msg []byte)
	// oversize gets the start of a message over max_message_size.
	oversize func(prefix []byte)
	// exited runs once if the child exits while the lease is held.
	exited func()
	// bind gets the lease before any message is delivered, so that the
	// callbacks above can use it.
	bind func(lease)
}

// lease is one client's way to its child.
type lease interface {
	// Send forwards a client message; it takes ownership of msg.
	Send(msg []byte, env *jsonrpc.Envelope) error
	// Release lets go of the child: an isolated child is stopped; on a
	// shared one, what the client left in flight is cancelled.
	Release()
	Pid() int
	Started() time.Time
	// Shared reports whether other clients share the child.
	Shared() bool
}

// Errors of placing a client on a child.
var (
	// ErrPoolExhausted: no room became free in time (503).
	ErrPoolExhausted = supervisor.ErrBusy
	// ErrPoolClosed: the backend is shutting down.
	ErrPoolClosed = supervisor.ErrClosed
)
