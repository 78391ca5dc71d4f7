package bridge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/placement"
)

// The stateless protocol (2026-07-28 on): every request stands alone,
// names its protocol version in _meta and in headers, and needs no
// session. The bridge serves it on shared children of a pool of its own,
// when the child speaks it.

// Codes of the stateless protocol.
const (
	CodeHeaderMismatch     = -32020
	CodeUnsupportedVersion = -32022
)

// statelessVersions are the stateless revisions the bridge serves.
var statelessVersions = []string{versionStateless}

// statelessMethods are the requests of the stateless protocol.
var statelessMethods = map[string]bool{
	"server/discover": true, "tools/list": true, "tools/call": true,
	"resources/list": true, "resources/read": true, "resources/templates/list": true,
	"prompts/list": true, "prompts/get": true, "completion/complete": true,
	"subscriptions/listen": true,
}

// nameField is the body field that the Mcp-Name header repeats.
var nameField = map[string]string{"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

// decodeHeaderValue undoes the =?base64?…?= encoding of header values.
func decodeHeaderValue(v string) (string, bool) {
	inner, ok := strings.CutPrefix(v, "=?base64?")
	if !ok {
		return v, true
	}
	inner, ok = strings.CutSuffix(inner, "?=")
	if !ok {
		return "", false
	}
	b, err := base64.StdEncoding.DecodeString(inner)
	return string(b), err == nil
}

// checkStatelessHeaders compares the headers of a stateless request with its
// body; it returns what is wrong, or "".
func checkStatelessHeaders(r *http.Request, env *jsonrpc.Envelope, version string) string {
	if meta := jsonrpc.StringValue(jsonrpc.Member(jsonrpc.Member(env.Params, "_meta"), jsonrpc.MetaProtocolVersion)); meta != version {
		return "MCP-Protocol-Version header " + version + " does not match _meta " + jsonrpc.MetaProtocolVersion + " '" + meta + "'"
	}
	method := env.MethodName()
	if h := r.Header.Get("Mcp-Method"); h != method {
		return "Mcp-Method header '" + h + "' does not match body method '" + method + "'"
	}
	if field, ok := nameField[method]; ok {
		name, valid := decodeHeaderValue(r.Header.Get("Mcp-Name"))
		if body := jsonrpc.StringValue(jsonrpc.Member(env.Params, field)); !valid || name != body {
			return "Mcp-Name header does not match body " + field + " '" + body + "'"
		}
	}
	return ""
}

// serveStateless serves one stateless request. It reports false, answering
// nothing, when the child does not speak the stateless protocol: the
// caller then answers so that the client falls back to initialize.
func (s *Server) serveStateless(w http.ResponseWriter, r *http.Request, version string) bool {
	if era := s.backend.prober.result().Era; era != "stateless" && era != "dual" {
		return false
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		WriteError(w, http.StatusMethodNotAllowed, jsonrpc.CodeInvalidRequest, "the stateless protocol has no GET or DELETE")
		return true
	}
	supported := false
	for _, v := range statelessVersions {
		supported = supported || v == version
	}
	if !supported {
		requested, _ := json.Marshal(version)
		body := `{"jsonrpc":"2.0","id":null,"error":{"code":-32022,"message":"unsupported protocol version","data":{"supported":["` +
			strings.Join(append(statelessVersions, version20251125, version20250618, version20250326), `","`) + `"],"requested":` +
			string(requested) + `}}}`
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(body))
		return true
	}
	body, ok := s.readBody(w, r)
	if !ok {
		return true
	}
	msgs, batch, ok := parseMessages(w, body)
	if !ok {
		return true
	}
	env, err := jsonrpc.ParseEnvelope(msgs[0])
	kind := env.Kind()
	switch {
	case batch || err != nil || kind == jsonrpc.KindInvalid || kind == jsonrpc.KindResponse:
		writeErrorID(w, http.StatusBadRequest, env.ID, jsonrpc.CodeInvalidRequest, "a stateless request must be one JSON-RPC request or notification")
		return true
	case kind == jsonrpc.KindNotification:
		// Cancellation comes from closing the request's stream; there is
		// nothing else a stateless notification can mean to a child here.
		w.WriteHeader(http.StatusAccepted)
		return true
	}
	if problem := checkStatelessHeaders(r, &env, version); problem != "" {
		writeErrorID(w, http.StatusBadRequest, env.ID, CodeHeaderMismatch, "Header mismatch: "+problem)
		return true
	}
	if !statelessMethods[env.MethodName()] {
		writeErrorID(w, http.StatusNotFound, env.ID, jsonrpc.CodeMethodNotFound, "method not found: "+env.MethodName())
		return true
	}
	s.forwardStateless(w, r, msgs[0], &env)
	return true
}

// forwardStateless sends one stateless request to a shared child and streams
// what belongs to it back as SSE, without event ids: stateless streams are
// not resumable. Closing the stream cancels the request at the child. A
// subscriptions/listen stream whose child dies is opened again on another.
func (s *Server) forwardStateless(w http.ResponseWriter, r *http.Request, msg []byte, env *jsonrpc.Envelope) {
	listen := env.MethodName() == "subscriptions/listen"
	var sw *sseWriter
	for {
		out := make(chan []byte, streamWindow)
		gone := make(chan struct{})
		member, err := s.backend.stateless.Acquire(r.Context(), placement.Request{Deliver: func(m []byte) {
			select {
			case out <- m:
			case <-gone:
			default: // a shared child never waits for one slow client
				s.logger.Debug("dropped a message for a stateless client that reads too slowly")
			}
		}, Exited: func() { close(out) }, Bind: func(placement.Lease) {}})
		if err == nil {
			// What is sent is the child's to keep: send a copy, whose
			// envelope must alias the copy.
			copied := bytes.Clone(msg)
			copiedEnv, _ := jsonrpc.ParseEnvelope(copied)
			err = member.Send(copied, &copiedEnv)
		}
		if err != nil {
			if member != nil {
				member.Release()
			}
			if sw == nil {
				writeAcquireError(w, err)
			}
			return
		}
		if sw == nil {
			sw = startSSE(w)
		}
		childGone := s.pumpStateless(sw, r, out, env)
		close(gone)
		member.Release() // cancels the request at the child if unanswered
		if !childGone || !listen {
			return
		}
		s.logger.Info("a stateless subscription's child exited; listening again on another")
	}
}

// pumpStateless writes a stateless request's messages until its response, the
// client leaving, or the child exiting (then it reports true). Like
// writeStream, it gives a request's answer a moment to leave with the
// headers, then flushes whenever nothing more is queued.
func (s *Server) pumpStateless(sw *sseWriter, r *http.Request, out <-chan []byte, env *jsonrpc.Envelope) bool {
	ping, stopPing := keepalive(s.cfg.Keepalive)
	defer stopPing()
	var hold <-chan time.Time
	if env.MethodName() != "subscriptions/listen" {
		var stopHold func() bool
		hold, stopHold = answerHold()
		defer stopHold()
	}
	for {
		if hold == nil && len(out) == 0 && sw.flush() != nil {
			return false
		}
		select {
		case <-hold:
			hold = nil
		case m, open := <-out:
			if !open {
				if env.MethodName() != "subscriptions/listen" {
					_ = sw.event(nil, "", jsonrpc.ErrorResponse(env.ID, jsonrpc.CodeServerExited, "the MCP server process exited"))
				}
				return true
			}
			if sw.event(nil, "", m) != nil {
				return false
			}
			if other, err := jsonrpc.ParseEnvelope(m); err == nil && other.Kind() == jsonrpc.KindResponse && string(other.ID) == string(env.ID) {
				return false
			}
		case <-ping:
			if sw.ping() != nil {
				return false
			}
		case <-r.Context().Done():
			return false
		}
	}
}
