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
// # Lock order
//
// A goroutine that holds several locks took them in this order:
//
//	Backend.mu → Session.mu
//	placement.Shared.mu → mux.Mux.mu
//
// Every other lock (placement.Isolated.mu, the placements' failures,
// supervisor.Supervisor.mu, stream.mu, prober.mu) is a leaf: nothing else
// is locked while it is held. No lock is held across I/O to a client,
// across a call into the supervisor, or while a callback runs: a Mux
// delivers to its sessions, and the supervisor calls the placements'
// reclaim and freed hooks, with their own locks released. The one lock held across I/O is a
// child's own write lock (internal/child), which keeps the messages on its
// stdin whole.
package bridge
