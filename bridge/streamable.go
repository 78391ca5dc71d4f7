package bridge

import (
	"net/http"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// Protocol revisions of the Streamable HTTP transport with sessions.
const (
	version20250326 = "2025-03-26"
	version20250618 = "2025-06-18"
	version20251125 = "2025-11-25"
	// versionStateless is the first revision without sessions or initialize.
	versionStateless = "2026-07-28"
)

// sessionVersions are the MCP-Protocol-Version values a session client may
// send: whatever a child may have negotiated, back to the first revision.
var sessionVersions = map[string]bool{
	"2024-11-05":    true,
	version20250326: true,
	version20250618: true,
	version20251125: true,
}

const headerSessionID = "Mcp-Session-Id"

func (s *Server) serveStreamable(w http.ResponseWriter, r *http.Request) {
	if v := r.Header.Get("MCP-Protocol-Version"); v >= versionStateless && s.serveStateless(w, r, v) {
		return
	}
	switch r.Method {
	case http.MethodPost:
		s.streamablePost(w, r)
	case http.MethodGet:
		s.streamableGet(w, r)
	case http.MethodDelete:
		s.streamableDelete(w, r)
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		WriteError(w, http.StatusMethodNotAllowed, jsonrpc.CodeInvalidRequest, "method not allowed")
	}
}

// checkVersion answers a request whose MCP-Protocol-Version the bridge does
// not serve. A stateless request gets a 400 whose body is a plain
// JSON-RPC error, which tells a dual-era client to fall back to initialize.
func checkVersion(w http.ResponseWriter, r *http.Request) bool {
	v := r.Header.Get("MCP-Protocol-Version")
	switch {
	case v == "" || sessionVersions[v]:
		return true
	case v >= versionStateless:
		WriteError(w, http.StatusBadRequest, jsonrpc.CodeInvalidRequest,
			"this endpoint serves MCP sessions: send initialize (protocol 2025-11-25 or earlier)")
	default:
		WriteError(w, http.StatusBadRequest, jsonrpc.CodeInvalidRequest, "unsupported MCP-Protocol-Version: "+v)
	}
	return false
}

// lookupSession finds the session a request names, answering 400 when it
// names none and 404 when it is unknown or ended.
func (s *Server) lookupSession(w http.ResponseWriter, r *http.Request) *session {
	id := r.Header.Get(headerSessionID)
	if id == "" {
		WriteError(w, http.StatusBadRequest, jsonrpc.CodeInvalidRequest, "missing Mcp-Session-Id header")
		return nil
	}
	sess := s.backend.findSession(id, principalFrom(r.Context()))
	if sess == nil || sess.Transport != "streamable" {
		WriteError(w, http.StatusNotFound, jsonrpc.CodeSessionNotFound, "session not found")
		return nil
	}
	sess.useAuth(r.Context())
	return sess
}

func (s *Server) streamablePost(w http.ResponseWriter, r *http.Request) {
	if !hasMediaType(r.Header.Get("Content-Type"), "application/json") {
		WriteError(w, http.StatusUnsupportedMediaType, jsonrpc.CodeInvalidRequest, "Content-Type must be application/json")
		return
	}
	accept := r.Header.Get("Accept")
	if !accepts(accept, "application/json") || !accepts(accept, "text/event-stream") {
		WriteError(w, http.StatusNotAcceptable, jsonrpc.CodeInvalidRequest, "Accept must list application/json and text/event-stream")
		return
	}
	if !checkVersion(w, r) {
		return
	}
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	msgs, batch, ok := parseMessages(w, body)
	if !ok {
		return
	}
	var ids, tokens [][]byte
	initialize := false
	envs := make([]jsonrpc.Envelope, len(msgs))
	refusals := make([]*Refusal, len(msgs))
	for i, msg := range msgs {
		env, err := jsonrpc.ParseEnvelope(msg)
		kind := env.Kind()
		if err != nil || kind == jsonrpc.KindInvalid {
			writeErrorID(w, http.StatusBadRequest, env.ID, jsonrpc.CodeInvalidRequest, "invalid JSON-RPC message")
			return
		}
		envs[i] = env
		if kind == jsonrpc.KindRequest {
			ids = append(ids, env.ID)
			if tok := jsonrpc.Member(jsonrpc.Member(env.Params, "_meta"), "progressToken"); tok != nil {
				tokens = append(tokens, tok)
			}
			initialize = initialize || env.MethodName() == "initialize"
		}
	}
	for i := range envs {
		refusals[i] = admit(r.Context(), &envs[i])
	}
	// A request alone in its POST is refused with an HTTP status of its
	// own (429 and Retry-After for a rate limit); so is an initialize,
	// which then opens no session.
	if ref := refusals[0]; ref != nil && len(msgs) == 1 && (ref.Status != 0 || initialize) {
		ref.writeHTTP(w, envs[0].ID)
		return
	}

	var sess *session
	if initialize {
		if batch {
			WriteError(w, http.StatusBadRequest, jsonrpc.CodeInvalidRequest, "initialize must not be part of a batch")
			return
		}
		if sess = s.newSession(w, r, ids[0], "streamable", false); sess == nil {
			return
		}
	} else {
		if sess = s.lookupSession(w, r); sess == nil {
			return
		}
		if v := sess.ProtocolVersion(); batch && v >= version20250618 {
			WriteError(w, http.StatusBadRequest, jsonrpc.CodeInvalidRequest, "batches are not supported in protocol version "+v)
			return
		}
	}

	if len(ids) == 0 {
		for i, msg := range msgs {
			if sess.send(msg, &envs[i]) != nil {
				WriteError(w, http.StatusNotFound, jsonrpc.CodeSessionNotFound, "session ended")
				return
			}
		}
		w.WriteHeader(http.StatusAccepted)
		return
	}

	st, err := sess.openRequestStream(ids, tokens)
	if err != nil {
		if err == errSessionEnded {
			WriteError(w, http.StatusNotFound, jsonrpc.CodeSessionNotFound, "session ended")
		} else {
			writeErrorID(w, http.StatusBadRequest, ids[0], jsonrpc.CodeInvalidRequest, err.Error())
		}
		return
	}
	for i, msg := range msgs {
		if sess.sendOrRefuse(msg, &envs[i], refusals[i]) != nil {
			break // the child is gone; its exit fails the stream's requests
		}
	}
	mode := streamResponse
	if initialize {
		w.Header().Set(headerSessionID, sess.ID)
		mode = streamInitialize
	}
	sess.releaseRequestStream(st, s.writeStream(w, r.Context().Done(), "", sess, st, mode, -1))
}

func (s *Server) streamableGet(w http.ResponseWriter, r *http.Request) {
	if !accepts(r.Header.Get("Accept"), "text/event-stream") {
		WriteError(w, http.StatusNotAcceptable, jsonrpc.CodeInvalidRequest, "Accept must list text/event-stream")
		return
	}
	if !checkVersion(w, r) {
		return
	}
	sess := s.lookupSession(w, r)
	if sess == nil {
		return
	}
	if lastID := r.Header.Get("Last-Event-ID"); lastID != "" {
		// Resuming a stream, of a POST or the GET, after the last event
		// the client got.
		st, seq, err := sess.resumable(lastID)
		if err != nil {
			WriteError(w, http.StatusBadRequest, jsonrpc.CodeInvalidRequest, "cannot resume: "+err.Error())
			return
		}
		mode := streamResponse
		if st == sess.standaloneOrNil() {
			mode = streamStandalone
		}
		if finished := s.writeStream(w, r.Context().Done(), "", sess, st, mode, seq); finished && mode == streamResponse {
			sess.releaseRequestStream(st, true)
		}
		return
	}
	st, err := sess.standaloneStream()
	if err != nil {
		WriteError(w, http.StatusNotFound, jsonrpc.CodeSessionNotFound, "session ended")
		return
	}
	open := func(w http.ResponseWriter) *streamWriter {
		wr := new(streamWriter)
		if !s.openStream(wr, w, nil, "", sess, st, streamStandalone, -1) {
			return nil
		}
		return wr
	}
	if !s.detachStream(w, r, open) {
		s.writeStream(w, r.Context().Done(), "", sess, st, streamStandalone, -1)
	}
}

func (s *Server) streamableDelete(w http.ResponseWriter, r *http.Request) {
	sess := s.lookupSession(w, r)
	if sess == nil {
		return
	}
	sess.end("client deleted the session")
	w.WriteHeader(http.StatusOK)
}

// finishInitialize records the protocol version the child negotiated, and
// reports false when initialize failed.
func (s *Server) finishInitialize(sess *session, response []byte) bool {
	result := jsonrpc.Member(response, "result")
	if result == nil {
		return false
	}
	sess.setProtocolVersion(jsonrpc.StringValue(jsonrpc.Member(result, "protocolVersion")))
	return true
}
