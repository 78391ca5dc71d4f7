package bridge

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// A Gate is what the layer in front of the bridge lets one principal do.
// WithGate attaches it to a request. The bridge asks it about every
// request the client sends, on every transport, before the server sees
// it, and about each item of the tools, prompts and resources lists that
// the server answers with. A session keeps the gate of the last request
// that used it (a WebSocket, the gate of its handshake).
type Gate interface {
	// Admit decides whether a request reaches the server; nil lets it
	// through. name is what the request is about: the tool's or prompt's
	// name for tools/call and prompts/get, the URI for resources/read,
	// resources/subscribe and resources/unsubscribe, and for
	// completion/complete "prompt:" and the prompt's name or "resource:"
	// and the template's URI; else empty.
	Admit(method, name string) *Refusal

	// Shown returns the test that an item of a list must pass to be
	// shown, or nil when the list is shown whole. list is "tools",
	// "prompts", "resources" or "resourceTemplates"; an item is named by
	// its name, a resource by its URI, a template by its URI template.
	Shown(list string) func(name string) bool
}

// A Refusal is why a request does not reach the server: the client gets
// the JSON-RPC error, to the request's id.
type Refusal struct {
	Code    int
	Message string

	// Status, when set, is the HTTP status that answers a request that
	// came alone in its own HTTP request (429 for a rate limit), with
	// RetryAfter in a Retry-After header. A request inside a WebSocket,
	// a batch or an open stream gets the JSON-RPC error alone. Without
	// Status the error is answered as the server answers errors (a call
	// to a hidden tool looks like a call to a tool that does not exist).
	Status     int
	RetryAfter time.Duration
}

type gateKey struct{}

// WithGate returns a context whose requests pass through gate.
func WithGate(ctx context.Context, gate Gate) context.Context {
	return context.WithValue(ctx, gateKey{}, gate)
}

func gateFrom(ctx context.Context) Gate {
	g, _ := ctx.Value(gateKey{}).(Gate)
	return g
}

// admit asks the request's gate about one client message.
func admit(ctx context.Context, env *jsonrpc.Envelope) *Refusal {
	return admitThrough(gateFrom(ctx), env)
}

// admitThrough asks gate about one client message; only requests are
// asked.
func admitThrough(g Gate, env *jsonrpc.Envelope) *Refusal {
	if g == nil || env.Kind() != jsonrpc.KindRequest {
		return nil
	}
	method := env.MethodName()
	return g.Admit(method, subjectOf(method, env.Params))
}

// subjectOf is what a request is about, for the gate (see Gate.Admit).
func subjectOf(method string, params []byte) string {
	switch method {
	case "tools/call", "prompts/get":
		return jsonrpc.StringValue(jsonrpc.Member(params, "name"))
	case "resources/read", "resources/subscribe", "resources/unsubscribe":
		return jsonrpc.StringValue(jsonrpc.Member(params, "uri"))
	case "completion/complete":
		ref := jsonrpc.Member(params, "ref")
		switch jsonrpc.StringValue(jsonrpc.Member(ref, "type")) {
		case "ref/prompt":
			return "prompt:" + jsonrpc.StringValue(jsonrpc.Member(ref, "name"))
		case "ref/resource":
			return "resource:" + jsonrpc.StringValue(jsonrpc.Member(ref, "uri"))
		}
	}
	return ""
}

// response is the JSON-RPC error that answers the refused request id.
func (r *Refusal) response(id []byte) []byte {
	return jsonrpc.ErrorResponse(id, r.Code, r.Message)
}

// writeHTTP answers an HTTP request that carried only the refused request.
func (r *Refusal) writeHTTP(w http.ResponseWriter, id []byte) {
	status := r.Status
	if status == 0 {
		status = http.StatusOK
	}
	if r.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(max(r.RetryAfter.Round(time.Second), time.Second).Seconds())))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(r.response(id))
}

// listFilter is how a list result is filtered: which member holds the
// items, which member of an item names it, and the test.
type listFilter struct {
	items, name string
	shown       func(string) bool
}

// listFilterFor returns the filter for the result of a request, or nil
// when its result passes whole (not a list, or a list the gate shows).
func listFilterFor(gate Gate, method string) *listFilter {
	if gate == nil {
		return nil
	}
	var f listFilter
	switch method {
	case "tools/list":
		f = listFilter{items: "tools", name: "name"}
	case "prompts/list":
		f = listFilter{items: "prompts", name: "name"}
	case "resources/list":
		f = listFilter{items: "resources", name: "uri"}
	case "resources/templates/list":
		f = listFilter{items: "resourceTemplates", name: "uriTemplate"}
	default:
		return nil
	}
	if f.shown = gate.Shown(f.items); f.shown == nil {
		return nil
	}
	return &f
}

// apply returns the response with the items the gate hides left out of
// its result. Everything else in the result (nextCursor among it) stays,
// so paging goes on. A response it cannot read passes as it is.
func (f *listFilter) apply(msg []byte, env *jsonrpc.Envelope) []byte {
	if env.Result == nil {
		return msg
	}
	raw := jsonrpc.Member(env.Result, f.items)
	if raw == nil {
		return msg
	}
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil {
		return msg
	}
	kept := items[:0]
	for _, item := range items {
		if f.shown(jsonrpc.StringValue(jsonrpc.Member(item, f.name))) {
			kept = append(kept, item)
		}
	}
	if len(kept) == len(items) {
		return msg
	}
	filtered, err := json.Marshal(kept)
	if err != nil {
		return msg
	}
	return jsonrpc.ApplySplices(msg, jsonrpc.Splice{Old: raw, New: filtered})
}
