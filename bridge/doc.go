// Package bridge serves stdio MCP servers over HTTP: Streamable HTTP
// (2025-11-25 sessions and 2026-07-28 stateless requests), the legacy
// HTTP+SSE transport and WebSocket. It does not import Caddy; the
// caddymodule package puts it in front of Caddy's HTTP server.
//
// A Backend owns the children of one configuration. Its supervisor
// (internal/supervisor) starts, counts, watches and ends every child, in
// one budget (max_processes), whatever the child is for: a warm spare, an
// isolated or shared session's, a stateless request's, or the probe's.
// Placements (internal/placement) decide what a child is for: Isolated
// gives a session a child of its own; Shared multiplexes clients (shared
// sessions, or stateless requests on children of their own) onto a few
// children through a multiplexer (internal/mux). Sessions and the
// transports reach their child through a lease and never know which
// placement they have. internal/child starts and stops one process, per
// OS; internal/jsonrpc reads and rewrites messages without decoding them.
//
// Connect (internal/connector) goes the other way: it serves a stdio
// client by relaying its messages to a remote MCP endpoint, this bridge's
// or any other's. Its locks are leaves.
//
// # Lock order
//
// A goroutine that holds several locks took them in this order:
//
//	Backend.mu → Session.mu → stream.mu
//	placement.Shared.mu → mux.Mux.mu
//	mux.Mux.ctl → placement.Shared.mu (a member's Release tells its placement)
//	placement.Isolated.mu or placement.Shared.mu → their failures' lock
//
// supervisor.Supervisor.mu, prober.mu, the lock of a Server's detached
// streams, the parked streams' poller's lock and a child's input queue
// lock (internal/child) are leaves: nothing else is locked while they are
// held.
// No lock is held across I/O to a client or to a child, or across a call
// into the supervisor. A message to a child is queued, within a bound, for
// the child's one stdin writer, so that a child that stops reading blocks
// nobody (the health check kills it); mux.Mux.ctl is held while a
// member's control messages (log level, subscriptions, cancellations) are
// queued, which keeps them in order. The supervisor calls the placements'
// reclaim and freed hooks, and a Mux delivers to its sessions, with their
// own locks released; a lease's Bind runs under the placement's and the
// Mux's locks, and only stores the lease.
package bridge
