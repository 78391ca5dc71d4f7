// Package placement puts sessions and stateless requests on children: a
// child of their own (Isolated) or a share of one through a multiplexer
// (Shared), behind one interface that every transport uses the same way.
// Every placement takes its children from the backend's supervisor, within
// its one budget.
package placement

import (
	"context"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/supervisor"
)

// Placement puts a session, or a stateless request, on a child: a child of
// its own (Isolated) or a share of one (Shared). Every
// transport uses it the same way; the children come from the backend's
// supervisor, within its one budget.
type Placement interface {
	// Start starts what the placement keeps ready (warm spares, minimum
	// shared children). It is idempotent.
	Start()
	// Acquire places one client on a child, waiting for room up to the
	// pool's AcquireTimeout.
	Acquire(ctx context.Context, req Request) (Lease, error)
	// Close stops the children the placement holds that no lease does and
	// the goroutines it started; children held by leases are stopped by
	// their Release.
	Close()
	// Ready counts the children started and carrying no client.
	Ready() int
	// LastError is the last failure to start a child, if any.
	LastError() error
}

// Request says where a lease's messages from the child go.
type Request struct {
	// Deliver gets each message from the child for this client, one at a
	// time; it owns the slice.
	Deliver func(msg []byte)
	// Oversize gets the start of a message over max_message_size.
	Oversize func(prefix []byte)
	// Exited runs once if the child exits while the lease is held.
	Exited func()
	// Bind gets the lease before any message is delivered, so that the
	// callbacks above can use it.
	Bind func(Lease)
	// Group is whose client this is. A shared child carries the clients
	// of one group only, the first it carried.
	Group string
}

// Lease is one client's way to its child.
type Lease interface {
	// Send forwards a client message; it takes ownership of msg.
	Send(msg []byte, env *jsonrpc.Envelope) error
	// Release lets go of the child: an isolated child is stopped; on a
	// shared one, what the client left in flight is cancelled.
	Release()
	Pid() int
	Started() time.Time
	// Shared reports whether other clients share the child.
	Shared() bool
	// ExitReason says, for the client, why the child has gone, once it
	// has: it exited, or it stopped answering and was killed.
	ExitReason() string
}

// Config sizes a placement; the bridge fills in every default.
type Config struct {
	// AcquireTimeout is how long Acquire waits for room.
	AcquireTimeout time.Duration
	// MinIdle warm spares wait for the next isolated session.
	MinIdle int
	// HealthCheck, when set, pings each warm spare this often; one that
	// does not answer within HealthCheckTimeout is replaced.
	HealthCheck, HealthCheckTimeout time.Duration
	// StartTimeout is how long a new spare may take to answer its first
	// ping.
	StartTimeout time.Duration
	// SessionsPerProcess is how many clients one shared child carries.
	SessionsPerProcess int
	// MinProcesses shared children run even when they carry nobody.
	MinProcesses int
	// ProcessIdleTimeout retires a shared child beyond MinProcesses that
	// carried nobody for this long.
	ProcessIdleTimeout time.Duration
}

// Errors of placing a client on a child.
var (
	// ErrPoolExhausted: no room became free in time (503).
	ErrPoolExhausted = supervisor.ErrBusy
	// ErrPoolClosed: the backend is shutting down.
	ErrPoolClosed = supervisor.ErrClosed
)
