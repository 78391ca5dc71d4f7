package bridge

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// The legacy HTTP+SSE transport of protocol revision 2024-11-05: a GET opens
// a session's one stream, whose first event names the URI to POST messages
// to; every message from the child goes down that stream.

func (s *Server) sseGet(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		WriteError(w, http.StatusMethodNotAllowed, jsonrpc.CodeInvalidRequest, "method not allowed")
		return
	}
	if accept := r.Header.Get("Accept"); accept != "" && !accepts(accept, "text/event-stream") {
		WriteError(w, http.StatusNotAcceptable, jsonrpc.CodeInvalidRequest, "Accept must list text/event-stream")
		return
	}
	var sess *session
	after := -1
	if lastID := r.Header.Get("Last-Event-ID"); lastID != "" {
		// A client back within the grace gets its session and what it
		// missed; after it, the session is gone.
		if sess, after = s.backend.resumeLegacy(lastID, principalFrom(r.Context())); sess == nil {
			WriteError(w, http.StatusNotFound, jsonrpc.CodeSessionNotFound, "session not found: it ended, or its resume grace ran out")
			return
		}
	} else if sess = s.newSession(w, r, nil, "sse", true); sess == nil {
		return
	}
	st, err := sess.standaloneStream()
	if err != nil {
		WriteError(w, http.StatusNotFound, jsonrpc.CodeSessionNotFound, "session ended")
		return
	}
	s.writeStream(w, r.Context().Done(), s.endpointURI(r, sess), sess, st, streamLegacy, after)
	sess.awaitResume(s.cfg.ResumeGrace)
}

// endpointURI is the URI the client posts its messages to. It is built from
// the path the client requested, so that it stays right when the handler is
// mounted under a prefix, or absolute from the configured public base URL.
func (s *Server) endpointURI(r *http.Request, sess *session) string {
	query := "?sessionId=" + url.QueryEscape(sess.ID)
	if extra, ok := r.Context().Value(endpointQueryKey{}).(string); ok {
		query += "&" + extra
	}
	if s.cfg.PublicBaseURL != "" {
		return strings.TrimSuffix(s.cfg.PublicBaseURL, "/") + s.cfg.MessagePath + query
	}
	prefix := ""
	if s.cfg.MountPrefix != nil {
		prefix = s.cfg.MountPrefix(r)
	}
	return prefix + s.cfg.MessagePath + query
}

func (s *Server) ssePost(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		WriteError(w, http.StatusMethodNotAllowed, jsonrpc.CodeInvalidRequest, "method not allowed")
		return
	}
	id := queryValue(r.URL.RawQuery, "sessionId")
	if id == "" {
		WriteError(w, http.StatusBadRequest, jsonrpc.CodeInvalidRequest, "missing sessionId query parameter")
		return
	}
	sess := s.backend.findSession(id, principalFrom(r.Context()))
	if sess == nil || sess.Transport != "sse" {
		WriteError(w, http.StatusNotFound, jsonrpc.CodeSessionNotFound, "session not found")
		return
	}
	sess.useAuth(r.Context())
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	msgs, _, ok := parseMessages(w, body)
	if !ok {
		return
	}
	envs := make([]jsonrpc.Envelope, len(msgs))
	refusals := make([]*Refusal, len(msgs))
	for i, msg := range msgs {
		env, err := jsonrpc.ParseEnvelope(msg)
		if err != nil || env.Kind() == jsonrpc.KindInvalid {
			writeErrorID(w, http.StatusBadRequest, env.ID, jsonrpc.CodeInvalidRequest, "invalid JSON-RPC message")
			return
		}
		envs[i] = env
		refusals[i] = admit(r.Context(), &envs[i])
	}
	// A request alone in its POST is refused with an HTTP status of its
	// own (429 for a rate limit); others in-band, on the stream.
	if ref := refusals[0]; ref != nil && len(msgs) == 1 && ref.Status != 0 {
		ref.writeHTTP(w, envs[0].ID)
		return
	}
	for i, msg := range msgs {
		if sess.forward(msg, &envs[i], refusals[i]) != nil {
			WriteError(w, http.StatusNotFound, jsonrpc.CodeSessionNotFound, "session ended")
			return
		}
	}
	// No body: a client that closes the response without reading it (the
	// go-sdk's does) can then reuse the connection; with one, each POST
	// cost it a new connection.
	w.WriteHeader(http.StatusAccepted)
}

// queryValue returns the first value of key in a raw query, as
// url.Values.Get would (pairs that do not decode are skipped), without
// building the map of every parameter for each POST.
func queryValue(rawQuery, key string) string {
	for rawQuery != "" {
		var pair string
		pair, rawQuery, _ = strings.Cut(rawQuery, "&")
		k, v, _ := strings.Cut(pair, "=")
		if k, ok := unescapeQuery(k); !ok || k != key {
			continue
		}
		if v, ok := unescapeQuery(v); ok {
			return v
		}
	}
	return ""
}

// unescapeQuery decodes a query component, without allocating when there
// is nothing to decode.
func unescapeQuery(s string) (string, bool) {
	if !strings.ContainsAny(s, "%+;") {
		return s, true
	}
	if strings.Contains(s, ";") {
		return "", false // url.ParseQuery refuses semicolons
	}
	u, err := url.QueryUnescape(s)
	return u, err == nil
}
