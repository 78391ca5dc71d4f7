package bridge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/placement"
)

// The stateless protocol (2026-07-28 on): every request stands alone,
// names its protocol version in _meta and in headers, and needs no
// session. The bridge serves it on shared children of a pool of its own,
// when the child speaks it.

// Codes of the stateless protocol.
const (
	codeHeaderMismatch     = -32020
	codeUnsupportedVersion = -32022
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
	if meta := jsonrpc.Member(jsonrpc.Member(env.Params, "_meta"), jsonrpc.MetaProtocolVersion); !jsonrpc.StringIs(meta, version) {
		return "MCP-Protocol-Version header " + version + " does not match _meta " + jsonrpc.MetaProtocolVersion + " '" + jsonrpc.StringValue(meta) + "'"
	}
	method := env.MethodName()
	if h := r.Header.Get("Mcp-Method"); h != method {
		return "Mcp-Method header '" + h + "' does not match body method '" + method + "'"
	}
	if field, ok := nameField[method]; ok {
		name, valid := decodeHeaderValue(r.Header.Get("Mcp-Name"))
		if body := jsonrpc.Member(env.Params, field); !valid || !jsonrpc.StringIs(body, name) {
			return "Mcp-Name header does not match body " + field + " '" + jsonrpc.StringValue(body) + "'"
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
		writeErrorID(w, http.StatusBadRequest, env.ID, codeHeaderMismatch, "Header mismatch: "+problem)
		return true
	}
	if !statelessMethods[env.MethodName()] {
		writeErrorID(w, http.StatusNotFound, env.ID, jsonrpc.CodeMethodNotFound, "method not found: "+env.MethodName())
		return true
	}
	if refusal := admit(r.Context(), &env); refusal != nil {
		refusal.writeHTTP(w, env.ID)
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
	filter := listFilterFor(gateFrom(r.Context()), env.MethodName())
	start := time.Now()
	var sw *sseWriter
	for {
		st := newStream(0, ReplayBuffer{}, &undelivered{limit: int64(s.backend.cfg.MaxUndelivered)}) // nothing to replay: not resumable
		member, err := s.backend.stateless.Acquire(r.Context(), placement.Request{
			Group: s.backend.childGroup(principalFrom(r.Context())),
			Deliver: func(m []byte) {
				other, err := jsonrpc.ParseEnvelope(m)
				last := err == nil && other.Kind() == jsonrpc.KindResponse && string(other.ID) == string(env.ID)
				if last {
					s.backend.obs.RequestDone(metricMethod(env.MethodName()), outcomeOf(&other), time.Since(start))
					if filter != nil {
						m = filter.apply(m, &other)
					}
				}
				// A shared child never waits for one slow client.
				if st.push(m, last, pushFail) == errStreamFull {
					s.logger.Debug("dropped a message for a stateless client that reads too slowly")
				}
			},
			Exited: st.close,
			Bind:   func(placement.Lease) {},
		})
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
				writeAcquireError(w, env.ID, err)
			}
			return
		}
		if sw == nil {
			sw = startSSE(w)
		}
		gen, cursor, _, _ := st.attach(-1)
		var timeout *time.Timer
		if d := s.backend.cfg.Pool.RequestTimeout; d > 0 && !listen {
			timeout = time.AfterFunc(d, func() {
				s.logger.Warn("stateless request timed out; cancelling it at the child", zap.ByteString("id", env.ID), zap.Duration("request_timeout", d))
				_ = st.push(requestTimeoutError(env.ID, d), true, pushForce)
			})
		}
		p := pump{
			st: st, gen: gen, cursor: cursor, sink: sw,
			hold:      !listen,
			keepalive: s.cfg.Keepalive,
			done:      r.Context().Done(),
		}
		end := p.run()
		if timeout != nil {
			timeout.Stop()
		}
		st.close()       // what the child still sends is dropped
		member.Release() // cancels the request at the child if unanswered
		if end != pumpClosed {
			return
		}
		if !listen {
			_ = sw.event(nil, "", jsonrpc.ErrorResponse(env.ID, jsonrpc.CodeServerExited, member.ExitReason()))
			return
		}
		if sw.flush() != nil {
			return
		}
		s.logger.Info("a stateless subscription's child exited; listening again on another")
	}
}
