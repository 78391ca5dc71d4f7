package caddymodule

import (
	"errors"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
)

// The collectors are created once and registered on each config load's
// registry (Caddy gives every load a new one). Their "server" label is the
// server's name; "pool" is the first 12 hex digits of a pool's config
// hash, as the admin API shows it (a server with policies that give
// principals an environment has several pools).
var (
	childSpawns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp_bridge", Name: "child_spawns_total",
		Help: "Child processes started, by role: spare, isolated, shared, stateless, probe.",
	}, []string{"server", "pool", "role"})
	childExits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp_bridge", Name: "child_exits_total",
		Help: "Child processes that exited, by role; crashed is true when the bridge did not stop them.",
	}, []string{"server", "pool", "role", "crashed"})
	childHung = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp_bridge", Name: "child_hung_total",
		Help: "Child processes killed by the health check because they stopped answering, by role.",
	}, []string{"server", "pool", "role"})
	requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp_bridge", Name: "requests_total",
		Help: "Client requests answered by the child, by method and outcome (ok or error).",
	}, []string{"server", "pool", "method", "outcome"})
	requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "mcp_bridge", Name: "request_duration_seconds",
		Help:    "Time from a client request to the child's answer.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
	}, []string{"server", "pool", "method"})
	messageBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp_bridge", Name: "message_bytes_total",
		Help: "JSON-RPC message bytes from clients (in) and to clients (out).",
	}, []string{"server", "pool", "direction"})
	sessionStarts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp_bridge", Name: "session_starts_total",
		Help: "Sessions asked for, by outcome: ok, busy (503), too_many (429), closed, error.",
	}, []string{"server", "pool", "outcome"})
	acquireWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "mcp_bridge", Name: "session_start_wait_seconds",
		Help:    "Time a new session waited for a child.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
	}, []string{"server", "pool"})
	authDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp_bridge", Name: "auth_refusals_total",
		Help: "Requests refused before the bridge, by reason: missing_credential (401), invalid_token (401: a wrong key, or a bad, expired or foreign token), insufficient_scope (403), auth_server_unavailable (503).",
	}, []string{"reason"})
	policyDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp_bridge", Name: "policy_decisions_total",
		Help: "Requests that passed a policy, by decision (allowed, denied) and reason: ok, tool_hidden, prompt_hidden, resource_hidden, rate_limit, tool_rate_limit, quota.",
	}, []string{"policy", "decision", "reason"})

	sessionsDesc = prometheus.NewDesc("caddy_mcp_bridge_sessions",
		"Open sessions, by transport.", []string{"server", "pool", "transport"}, nil)
	childrenDesc = prometheus.NewDesc("caddy_mcp_bridge_children",
		"Child processes alive, by role: spare, isolated, shared, stateless, probe. Together they stay within max_processes.", []string{"server", "pool", "role"}, nil)
)

// registerMetrics adds the bridge's collectors to a config load's registry.
func registerMetrics(ctx caddy.Context) error {
	registry := ctx.GetMetricsRegistry()
	if registry == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{
		childSpawns, childExits, childHung, requests, requestDuration, messageBytes, sessionStarts, acquireWait,
		authDecisions, policyDecisions, stateCollector{},
	} {
		if err := registry.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// stateCollector reports the gauges from the pools themselves at scrape
// time, so that nothing needs keeping in step.
type stateCollector struct{}

func (stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sessionsDesc
	ch <- childrenDesc
}

func (stateCollector) Collect(ch chan<- prometheus.Metric) {
	backends.Range(func(key, value any) bool {
		pool := key.(string)[:12]
		b := value.(backendHandle)
		server := b.Name()
		sessions := map[string]int{"streamable": 0, "sse": 0, "ws": 0}
		for _, s := range b.Status().Sessions {
			sessions[s.Transport]++
		}
		for transport, n := range sessions {
			ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(n), server, pool, transport)
		}
		for role, n := range b.Counts() {
			ch <- prometheus.MustNewConstMetric(childrenDesc, prometheus.GaugeValue, float64(n), server, pool, role)
		}
		return true
	})
}

// poolObserver feeds one pool's events to the collectors.
type poolObserver struct {
	pool, server string
	// bytesIn and bytesOut find the pool's message byte counters once, at
	// the first message each way: every message counts, and a lookup by
	// label values hashes them each time.
	bytesIn, bytesOut func() prometheus.Counter
}

func newPoolObserver(pool, server string) poolObserver {
	counter := func(direction string) func() prometheus.Counter {
		return sync.OnceValue(func() prometheus.Counter { return messageBytes.WithLabelValues(server, pool, direction) })
	}
	return poolObserver{pool: pool, server: server, bytesIn: counter("in"), bytesOut: counter("out")}
}

func (o poolObserver) ChildStarted(role string) {
	childSpawns.WithLabelValues(o.server, o.pool, role).Inc()
}

func (o poolObserver) ChildExited(role string, crashed bool) {
	label := "false"
	if crashed {
		label = "true"
	}
	childExits.WithLabelValues(o.server, o.pool, role, label).Inc()
}

func (o poolObserver) ChildHung(role string) { childHung.WithLabelValues(o.server, o.pool, role).Inc() }

func (o poolObserver) RequestDone(method, outcome string, d time.Duration) {
	requests.WithLabelValues(o.server, o.pool, method, outcome).Inc()
	requestDuration.WithLabelValues(o.server, o.pool, method).Observe(d.Seconds())
}

// MessageBytes counts n bytes of messages in direction, "in" (from
// clients) or "out" (from the child), the only two the bridge reports.
func (o poolObserver) MessageBytes(direction string, n int) {
	counter := o.bytesOut
	if direction == "in" {
		counter = o.bytesIn
	}
	counter().Add(float64(n))
}

func (o poolObserver) SessionStart(outcome string, d time.Duration) {
	sessionStarts.WithLabelValues(o.server, o.pool, outcome).Inc()
	if outcome == "ok" {
		acquireWait.WithLabelValues(o.server, o.pool).Observe(d.Seconds())
	}
}

// Interface guards
var (
	_ bridge.Observer      = poolObserver{}
	_ prometheus.Collector = stateCollector{}
)
