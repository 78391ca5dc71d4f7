package bridge

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// Health is the report of GET <mount>/health.
type Health struct {
	// Server is the server's name.
	Server string `json:"server,omitempty"`
	// Status is "ok", or "unavailable" when no child can be started.
	Status     string   `json:"status"`
	Transports []string `json:"transports"`
	Isolation  string   `json:"isolation"`
	// Era is what protocol eras the child speaks: "stateless", "legacy" or
	// "dual", from the last probe; empty before it.
	Era       string          `json:"era,omitempty"`
	Processes HealthProcesses `json:"processes"`
	Sessions  int             `json:"sessions"`
	// Tools is the number of tools a child reports, from the last probe;
	// -1 before the first probe has finished.
	Tools int `json:"tools"`
	// Crashes counts children that exited on their own; a pool that keeps
	// crashing restarts them ever more slowly (up to 30s apart).
	Crashes int64 `json:"crashes"`
	// Hung counts, among those, the children the health check killed
	// because they stopped answering.
	Hung int64 `json:"hung"`
	// LastExit says how the last child that crashed or hung ended.
	LastExit  string `json:"last_exit,omitempty"`
	LastError string `json:"last_error,omitempty"`
}

// HealthProcesses counts the children.
type HealthProcesses struct {
	// Running counts every child alive, whatever its role.
	Running int `json:"running"`
	// Idle counts the children started and carrying nothing: warm spares,
	// shared children without sessions.
	Idle     int `json:"idle"`
	Starting int `json:"starting"`
	// Max is the budget, max_processes; zero means no cap.
	Max int `json:"max"`
}

// Health reports on the backend. It starts a probe of a child of its own
// when it has none, or when a child said its tools changed.
func (b *Backend) Health() Health {
	b.Start()
	probe := b.prober.result()
	counts := b.sup.Counts()
	h := Health{
		Server:    b.cfg.Name,
		Status:    "ok",
		Isolation: b.cfg.Pool.Isolation,
		Processes: HealthProcesses{
			Running:  counts.Running(),
			Idle:     b.placement.Ready() + b.stateless.Ready(),
			Starting: counts.Starting,
			Max:      max(b.cfg.Pool.MaxProcesses, 0),
		},
		Sessions: b.sessionCount(),
		Tools:    probe.Tools,
		Crashes:  counts.Crashes,
		Hung:     counts.Hung,
		LastExit: counts.LastExit,
		Era:      probe.Era,
	}
	if probe.CheckedAt.IsZero() {
		h.Tools = -1
	}
	switch {
	case counts.CrashLoop != nil:
		h.Status, h.LastError = "unavailable", counts.CrashLoop.Error()
	case probe.Err != nil:
		h.Status, h.LastError = "unavailable", probe.Err.Error()
	case h.Processes.Running == 0 && b.lastError() != nil:
		h.Status, h.LastError = "unavailable", b.lastError().Error()
	}
	return h
}

type healthDetailsKey struct{}

// WithoutHealthDetails returns a context whose health report says only
// whether the bridge works: not its counts, nor its errors (which can name
// paths). The report is public: a handler in front decides who sees the
// details.
func WithoutHealthDetails(ctx context.Context) context.Context {
	return context.WithValue(ctx, healthDetailsKey{}, false)
}

// healthSummary is the report without details.
type healthSummary struct {
	Server     string   `json:"server,omitempty"`
	Status     string   `json:"status"`
	Transports []string `json:"transports"`
}

// serveHealth answers the health path: 200 when children can be started,
// else 503.
func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		WriteError(w, http.StatusMethodNotAllowed, jsonrpc.CodeInvalidRequest, "method not allowed")
		return
	}
	h := s.backend.Health()
	for _, t := range []struct {
		bit  Transports
		name string
	}{{TransportStreamable, "streamable"}, {TransportSSE, "sse"}, {TransportWebSocket, "ws"}} {
		if s.cfg.Transports&t.bit != 0 {
			h.Transports = append(h.Transports, t.name)
		}
	}
	var body []byte
	if details, ok := r.Context().Value(healthDetailsKey{}).(bool); ok && !details {
		body, _ = json.Marshal(healthSummary{Server: h.Server, Status: h.Status, Transports: h.Transports})
	} else {
		body, _ = json.Marshal(h)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if h.Status != "ok" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write(body)
}
