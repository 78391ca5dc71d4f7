package bridge

import (
	"errors"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/placement"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/supervisor"
	"go.uber.org/zap"
)

// ServerConfig is how one HTTP front serves a Backend. Unlike the
// BackendConfig it can change on reload without touching sessions.
type ServerConfig struct {
	// Transports are the transports served; zero means all of them.
	Transports Transports
	// StreamablePath is the Streamable HTTP endpoint, relative to where the
	// handler is mounted.
	StreamablePath string
	// SSEPath is where a legacy SSE client opens its stream, and
	// MessagePath where it posts its messages.
	SSEPath, MessagePath string
	// WSPath is the WebSocket endpoint.
	WSPath string
	// HealthPath serves the health report; it needs no API key.
	HealthPath string
	// MountPrefix, when set, returns the path prefix under which the client
	// reached the handler (what a handle_path stripped), for the legacy SSE
	// endpoint event.
	MountPrefix func(*http.Request) string
	// PublicBaseURL, when set, makes the legacy SSE endpoint event an
	// absolute URL: this base (where the handler is mounted, as clients see
	// it) followed by MessagePath.
	PublicBaseURL string
	// Keepalive is the interval of SSE keepalive comments; zero means
	// DefaultKeepalive, and a negative value disables them.
	Keepalive time.Duration
	// ResumeGrace is how long a legacy SSE session outlives its stream,
	// for its client to reconnect with Last-Event-ID; negative: no grace.
	ResumeGrace time.Duration
	// PollInterval, when set, closes the SSE streams of 2025-11-25
	// sessions after this long, with a retry field: clients resume with
	// Last-Event-ID (polling), which suits proxies that cut long responses.
	PollInterval time.Duration
	// Origins decides which browser origins may call.
	Origins OriginPolicy
	// MaxSessionsPerPrincipal caps the sessions one principal may hold
	// open; zero means no cap. Beyond it, a new session gets 429.
	MaxSessionsPerPrincipal int
	// BodyReadTimeout cuts a request body that takes longer than this to
	// arrive (a slowloris client); zero means DefaultBodyReadTimeout.
	BodyReadTimeout time.Duration
	// Node names this instance in the ids of the sessions it opens, so
	// that a front can send each session's requests to its owner (see
	// Owner); empty: ids name no instance.
	Node string
}

// Defaults of ServerConfig.
const (
	DefaultStreamablePath  = "/mcp"
	DefaultSSEPath         = "/sse"
	DefaultMessagePath     = "/message"
	DefaultWSPath          = "/ws"
	DefaultHealthPath      = "/health"
	DefaultKeepalive       = 25 * time.Second
	DefaultBodyReadTimeout = 30 * time.Second
	DefaultResumeGrace     = 30 * time.Second
	// pollRetry is the retry a polling stream gives its client.
	pollRetry = time.Second
)

// Transports is a set of transports.
type Transports uint8

// The transports.
const (
	TransportStreamable Transports = 1 << iota // Streamable HTTP
	TransportSSE                               // legacy HTTP+SSE (2024-11-05)
	TransportWebSocket                         // WebSocket, subprotocol "mcp"
	AllTransports       = TransportStreamable | TransportSSE | TransportWebSocket
)

// Server is an http.Handler serving MCP transports in front of a Backend.
// Several Servers may share a Backend, for example the old and the new
// instance during a config reload.
type Server struct {
	cfg     ServerConfig
	backend *Backend
	logger  *zap.Logger

	closeOnce sync.Once
	closing   chan struct{} // closed when this front stops serving streams
	detached  detachedConns // of the GET streams it serves detached
}

// NewServer returns a Server in front of backend.
func NewServer(backend *Backend, cfg ServerConfig, logger *zap.Logger) *Server {
	if cfg.Transports == 0 {
		cfg.Transports = AllTransports
	}
	setDefault(&cfg.StreamablePath, DefaultStreamablePath)
	setDefault(&cfg.SSEPath, DefaultSSEPath)
	setDefault(&cfg.MessagePath, DefaultMessagePath)
	setDefault(&cfg.WSPath, DefaultWSPath)
	setDefault(&cfg.HealthPath, DefaultHealthPath)
	if cfg.BodyReadTimeout <= 0 {
		cfg.BodyReadTimeout = DefaultBodyReadTimeout
	}
	if cfg.ResumeGrace == 0 {
		cfg.ResumeGrace = DefaultResumeGrace
	}
	switch {
	case cfg.Keepalive == 0:
		cfg.Keepalive = DefaultKeepalive
	case cfg.Keepalive < 0:
		cfg.Keepalive = 0 // a pump sends none for zero
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Server{cfg: cfg, backend: backend, logger: logger, closing: make(chan struct{})}
}

func setDefault(s *string, def string) {
	if *s == "" {
		*s = def
	}
}

// route returns the transport handler for the request's path, or nil. The
// handlers are method expressions: a method value would allocate a
// closure per request.
func (s *Server) route(r *http.Request) func(*Server, http.ResponseWriter, *http.Request) {
	t := s.cfg.Transports
	switch p := r.URL.Path; {
	case p == s.cfg.StreamablePath && t&TransportStreamable != 0:
		return (*Server).serveStreamable
	case p == s.cfg.SSEPath && t&TransportSSE != 0:
		return (*Server).sseGet
	case p == s.cfg.MessagePath && t&TransportSSE != 0:
		return (*Server).ssePost
	case p == s.cfg.WSPath && t&TransportWebSocket != 0:
		return (*Server).serveWebSocket
	case p == s.cfg.HealthPath:
		return (*Server).serveHealth
	}
	return nil
}

// IsHealthCheck reports whether the request is for the health report,
// which is public.
func (s *Server) IsHealthCheck(r *http.Request) bool {
	return r.URL.Path == s.cfg.HealthPath
}

// ClientEndpoints returns the paths clients connect to, one per transport
// served (Streamable HTTP, legacy SSE's stream, WebSocket, in that order);
// the legacy SSE message path is the stream's, not a connection's own.
func (s *Server) ClientEndpoints() []string {
	var paths []string
	for _, e := range []struct {
		t    Transports
		path string
	}{{TransportStreamable, s.cfg.StreamablePath}, {TransportSSE, s.cfg.SSEPath}, {TransportWebSocket, s.cfg.WSPath}} {
		if s.cfg.Transports&e.t != 0 {
			paths = append(paths, e.path)
		}
	}
	return paths
}

// Handles reports whether the request's path is one this Server serves.
func (s *Server) Handles(r *http.Request) bool {
	return s.route(r) != nil
}

// ServeHTTP serves the transports; other paths get 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	serve := s.route(r)
	if serve == nil {
		http.NotFound(w, r)
		return
	}
	if !s.cfg.Origins.Allow(r) {
		s.logger.Info("refused a request from a disallowed origin", zap.String("origin", r.Header.Get("Origin")))
		WriteError(w, http.StatusForbidden, jsonrpc.CodeInvalidRequest, "origin not allowed")
		return
	}
	serve(s, w, r)
}

// CloseStreams ends the Streamable HTTP GET streams this Server holds
// open, so that a reload does not leave them with the old configuration:
// clients reconnect, to the same sessions. It ends no session.
func (s *Server) CloseStreams() {
	s.closeOnce.Do(func() { close(s.closing) })
	s.detached.wakeAll()
}

// WriteError writes an HTTP error whose body is a JSON-RPC error response
// with no id, as MCP transports answer requests they refuse.
func WriteError(w http.ResponseWriter, status, code int, message string) {
	writeErrorID(w, status, nil, code, message)
}

func writeErrorID(w http.ResponseWriter, status int, id []byte, code int, message string) {
	body := jsonrpc.ErrorResponse(id, code, message)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// newSession opens a session for the request's principal, answering the
// client itself (to the request id, if any) when it cannot.
func (s *Server) newSession(w http.ResponseWriter, r *http.Request, id []byte, transport string, single bool) *session {
	sess, err := s.backend.newSession(r.Context(), sessionOptions{
		Transport:       transport,
		Single:          single,
		Principal:       principalFrom(r.Context()),
		MaxPerPrincipal: s.cfg.MaxSessionsPerPrincipal,
		Node:            s.cfg.Node,
	})
	if err != nil {
		writeAcquireError(w, id, err)
		return nil
	}
	sess.useAuth(r.Context())
	return sess
}

// writeAcquireError answers a session that could not get a child.
func writeAcquireError(w http.ResponseWriter, id []byte, err error) {
	var crashLoop *supervisor.CrashLoopError
	switch {
	case errors.As(err, &crashLoop):
		w.Header().Set("Retry-After", strconv.Itoa(int(max(crashLoop.RetryAfter.Round(time.Second), time.Second).Seconds())))
		writeErrorID(w, http.StatusServiceUnavailable, id, jsonrpc.CodeServerBusy, crashLoop.Error())
	case errors.Is(err, ErrTooManySessions):
		w.Header().Set("Retry-After", "60")
		writeErrorID(w, http.StatusTooManyRequests, id, jsonrpc.CodeServerBusy, "too many open sessions for this client; end one first")
	case errors.Is(err, placement.ErrPoolExhausted):
		w.Header().Set("Retry-After", "5")
		writeErrorID(w, http.StatusServiceUnavailable, id, jsonrpc.CodeServerBusy, "all MCP server processes are busy; retry later")
	case errors.Is(err, placement.ErrPoolClosed):
		w.Header().Set("Retry-After", "1")
		writeErrorID(w, http.StatusServiceUnavailable, id, jsonrpc.CodeServerBusy, "the MCP server is restarting; retry")
	default:
		w.Header().Set("Retry-After", "5")
		writeErrorID(w, http.StatusServiceUnavailable, id, jsonrpc.CodeServerBusy, "the MCP server could not be started: "+err.Error())
	}
}

// readBody reads a request body up to the message size limit and within
// the body read timeout, answering 413, 408 or 400 itself when it cannot.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	limit := s.backend.maxMessageSize()
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(s.cfg.BodyReadTimeout))
	body, err := readBodyBytes(http.MaxBytesReader(w, r.Body, int64(limit)), r.ContentLength, limit)
	_ = rc.SetReadDeadline(time.Time{})
	if err != nil {
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			WriteError(w, http.StatusRequestEntityTooLarge, jsonrpc.CodeInvalidRequest,
				"request body exceeds max_message_size ("+strconv.Itoa(limit)+" bytes)")
		case errors.Is(err, os.ErrDeadlineExceeded):
			w.Header().Set("Connection", "close")
			WriteError(w, http.StatusRequestTimeout, jsonrpc.CodeInvalidRequest, "request body too slow")
		default:
			WriteError(w, http.StatusBadRequest, jsonrpc.CodeParseError, "could not read the request body")
		}
		return nil, false
	}
	return body, true
}

// readBodyBytes reads body to its end into a buffer sized from the request's
// Content-Length when it is known and within limit, so that a large body
// is not copied through ever larger buffers; the spare byte is for the
// newline that Process.Send appends.
func readBodyBytes(body io.Reader, contentLength int64, limit int) ([]byte, error) {
	size := 512
	if contentLength > 0 && contentLength <= int64(limit) {
		size = int(contentLength) + 1
	}
	b := make([]byte, 0, size)
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// hasMediaType reports whether a Content-Type header names mediaType.
// A header that is just the media type, as nearly every client sends it,
// needs no parse (which allocates a map for the parameters).
func hasMediaType(header, mediaType string) bool {
	if strings.EqualFold(header, mediaType) {
		return true
	}
	mt, _, err := mime.ParseMediaType(header)
	return err == nil && strings.EqualFold(mt, mediaType)
}

// accepts reports whether an Accept header allows mediaType, wildcards
// included.
func accepts(header, mediaType string) bool {
	major, _, _ := strings.Cut(mediaType, "/")
	for part := range strings.SplitSeq(header, ",") {
		mt, _, _ := strings.Cut(part, ";")
		mt = strings.TrimSpace(mt)
		if strings.EqualFold(mt, mediaType) || mt == "*/*" || strings.EqualFold(mt, major+"/*") {
			return true
		}
	}
	return false
}

// parseMessages splits a POST body into JSON-RPC messages: one, or the
// elements of a batch. It answers the client itself when the body is bad.
func parseMessages(w http.ResponseWriter, body []byte) (msgs [][]byte, batch, ok bool) {
	if !jsonrpc.Valid(body) {
		WriteError(w, http.StatusBadRequest, jsonrpc.CodeParseError, "parse error: the body is not valid JSON")
		return nil, false, false
	}
	if body[jsonrpc.SkipSpace(body, 0)] != '[' {
		return [][]byte{body}, false, true
	}
	_ = jsonrpc.ScanArray(body, func(msg []byte) { msgs = append(msgs, msg[:len(msg):len(msg)]) })
	if len(msgs) == 0 {
		WriteError(w, http.StatusBadRequest, jsonrpc.CodeInvalidRequest, "empty batch")
		return nil, true, false
	}
	return msgs, true, true
}
