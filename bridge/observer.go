package bridge

import (
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/placement"
)

// Observer is told what metrics count. Its methods must be cheap and safe
// for concurrent use; the bridge calls them on its hot paths.
type Observer interface {
	// ChildStarted: a child process started for role (spare, isolated,
	// shared, stateless or probe).
	ChildStarted(role string)
	// ChildExited: a child process in role exited; crashed when the bridge
	// did not stop it.
	ChildExited(role string, crashed bool)
	// ChildHung: the health check killed a child in role that stopped
	// answering.
	ChildHung(role string)
	// RequestDone: the child answered a client request, with a result or
	// an error (outcome "ok" or "error"), after d.
	RequestDone(method, outcome string, d time.Duration)
	// MessageBytes counts message bytes "in" (from clients) or "out" (to
	// clients).
	MessageBytes(direction string, n int)
	// SessionStart: a new session waited d for a child; outcome is "ok",
	// "busy" (503), "too_many" (429), "closed" or "error".
	SessionStart(outcome string, d time.Duration)
}

// nopObserver observes nothing.
type nopObserver struct{}

func (nopObserver) ChildStarted(string)                       {}
func (nopObserver) ChildExited(string, bool)                  {}
func (nopObserver) ChildHung(string)                          {}
func (nopObserver) RequestDone(string, string, time.Duration) {}
func (nopObserver) MessageBytes(string, int)                  {}
func (nopObserver) SessionStart(string, time.Duration)        {}

// knownMethods are the MCP methods metrics name; others count as "other",
// so that clients cannot grow the label set.
var knownMethods = map[string]bool{
	"initialize": true, "ping": true, "tools/list": true, "tools/call": true,
	"resources/list": true, "resources/read": true, "resources/templates/list": true,
	"resources/subscribe": true, "resources/unsubscribe": true, "prompts/list": true,
	"prompts/get": true, "completion/complete": true, "logging/setLevel": true,
	"server/discover": true, "subscriptions/listen": true,
}

// outcomeOf is a response's outcome in metrics: ok or error.
func outcomeOf(env *jsonrpc.Envelope) string {
	if env.Error != nil {
		return "error"
	}
	return "ok"
}

// metricMethod is the method label for a request method.
func metricMethod(method string) string {
	if knownMethods[method] {
		return method
	}
	return "other"
}

// sessionStartOutcome names the outcome of opening a session.
func sessionStartOutcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case err == placement.ErrPoolExhausted:
		return "busy"
	case err == ErrTooManySessions:
		return "too_many"
	case err == placement.ErrPoolClosed:
		return "closed"
	}
	return "error"
}
