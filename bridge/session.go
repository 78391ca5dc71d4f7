package bridge

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// debugMessageBytes is how much of each message debug logs show.
const debugMessageBytes = 2048

// backlogLen caps the messages kept for a session's GET stream while none is
// open; the oldest is dropped (and logged) beyond it.
const backlogLen = 256

// errDuplicateID is returned for a request whose id is already in flight in
// the same session.
var errDuplicateID = errors.New("a request with this id is already in flight in this session")

// errSessionEnded is returned for work on a session that has ended.
var errSessionEnded = errors.New("session ended")

// Session is one client's session with its own child process.
type Session struct {
	ID        string
	Transport string
	Principal string
	// single marks transports with one stream for everything (legacy SSE,
	// WebSocket): all the child's messages go to the standalone stream.
	single  bool
	created time.Time
	backend *Backend
	up      upstream
	logger  *zap.Logger

	mu              sync.Mutex
	protocolVersion string
	pending         map[string]*stream     // client request id → the stream awaiting its response (nil: the standalone stream)
	sent            map[string]sentRequest // client request id → what metrics need of it
	progress        map[string]*stream     // progress token → the stream of its request
	requestStreams  map[*stream]struct{}
	standalone      *stream // the GET stream, if open
	backlog         [][]byte
	lastActive      time.Time
	nextStream      int
	ended           bool
	exited          bool // the child is gone: a new request would get no answer
	done            chan struct{}
}

func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ProtocolVersion is the version the child negotiated, once known.
func (s *Session) ProtocolVersion() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.protocolVersion
}

func (s *Session) setProtocolVersion(v string) {
	s.mu.Lock()
	s.protocolVersion = v
	s.mu.Unlock()
}

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.done }

// openRequestStream registers a stream for the responses to ids, and the
// progress tokens of those requests.
func (s *Session) openRequestStream(ids [][]byte, tokens [][]byte) (*stream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || s.exited {
		return nil, errSessionEnded
	}
	for _, id := range ids {
		if _, dup := s.pending[string(id)]; dup {
			return nil, errDuplicateID
		}
	}
	s.nextStream++
	st := newStream(s.nextStream)
	for _, id := range ids {
		s.pending[string(id)] = st
	}
	for _, tok := range tokens {
		s.progress[string(tok)] = st
	}
	st.pending = len(ids)
	s.requestStreams[st] = struct{}{}
	s.lastActive = time.Now()
	return st, nil
}

// closeRequestStream forgets a request stream whose client went away or
// that delivered all its responses. Responses that arrive later are dropped.
func (s *Session) closeRequestStream(st *stream) {
	st.close()
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.requestStreams, st)
	for id, owner := range s.pending {
		if owner == st {
			delete(s.pending, id)
			delete(s.sent, id)
		}
	}
	for tok, owner := range s.progress {
		if owner == st {
			delete(s.progress, tok)
		}
	}
	s.lastActive = time.Now()
}

// openStandalone makes a new GET stream the session's one, closing the one
// it replaces, and hands it what queued up while none was open.
func (s *Session) openStandalone() (*stream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil, errSessionEnded
	}
	if s.standalone != nil {
		s.standalone.close()
	}
	s.nextStream++
	st := newStream(s.nextStream)
	for len(s.backlog) > 0 && st.tryPush(outMessage{data: s.backlog[0]}) {
		s.backlog = s.backlog[1:]
	}
	s.standalone = st
	s.lastActive = time.Now()
	return st, nil
}

func (s *Session) closeStandalone(st *stream) {
	st.close()
	s.mu.Lock()
	if s.standalone == st {
		s.standalone = nil
	}
	s.lastActive = time.Now()
	s.mu.Unlock()
}

// upstream is a session's way to its child: a child of its own
// (isolated), or a share of one through its multiplexer (shared).
type upstream interface {
	// Send forwards a client message; it takes ownership of msg.
	Send(msg []byte, env *Envelope) error
	// Release lets go of the child once the session has ended.
	Release()
	Pid() int
	Started() time.Time
}

// ownChild is the upstream of an isolated session: messages go to the
// child unchanged, and the child is stopped when the session ends.
type ownChild struct {
	proc *Process
	pool *Pool
}

func (o ownChild) Send(msg []byte, _ *Envelope) error { return o.proc.Send(msg) }
func (o ownChild) Release()                           { o.pool.Release(o.proc) }
func (o ownChild) Pid() int                           { return o.proc.Pid() }
func (o ownChild) Started() time.Time                 { return o.proc.Started() }

// sentRequest is what metrics need of a request in flight.
type sentRequest struct {
	method string
	at     time.Time
}

// send forwards a client message to the child.
func (s *Session) send(msg []byte, env *Envelope) error {
	now := time.Now()
	s.mu.Lock()
	s.lastActive = now
	if env.Kind() == KindRequest {
		s.sent[string(env.ID)] = sentRequest{method: MetricMethod(env.MethodName()), at: now}
	}
	s.mu.Unlock()
	s.backend.obs.MessageBytes("in", len(msg))
	if ce := s.logger.Check(zap.DebugLevel, "message from client"); ce != nil {
		ce.Write(zap.ByteString("message", msg[:min(len(msg), debugMessageBytes)]))
	}
	return s.up.Send(msg, env)
}

// forward sends a client message of a single-stream transport (legacy SSE,
// WebSocket) to the child, remembering the id of a request so that it can
// be failed if the child exits before answering. These transports carry
// session protocols only: the stateless protocol's server/discover is
// answered "method not found", so that a dual-era client falls back to
// initialize, and the child never sees a stateless request first.
func (s *Session) forward(msg []byte, env *Envelope) error {
	if env.Kind() == KindRequest {
		if env.MethodName() == "server/discover" {
			s.fromChild(ErrorResponse(env.ID, CodeMethodNotFound, "server/discover is not served on this transport; send initialize"))
			return nil
		}
		s.mu.Lock()
		s.pending[string(env.ID)] = nil
		s.mu.Unlock()
	}
	return s.send(msg, env)
}

func (s *Session) touch() {
	s.mu.Lock()
	s.lastActive = time.Now()
	s.mu.Unlock()
}

// fromChild routes one message from the child to the stream it belongs to:
// a response to the stream of its request, progress to the stream of its
// token, and logs and server requests to the one request in flight if there
// is exactly one; everything else to the GET stream.
func (s *Session) fromChild(msg []byte) {
	env, err := ParseEnvelope(msg)
	if err != nil {
		return // json.Valid passed, so only a non-object gets here
	}
	s.backend.obs.MessageBytes("out", len(msg))
	if ce := s.logger.Check(zap.DebugLevel, "message to client"); ce != nil {
		ce.Write(zap.ByteString("message", msg[:min(len(msg), debugMessageBytes)]))
	}
	s.mu.Lock()
	s.lastActive = time.Now()
	var target *stream
	last := false
	switch env.Kind() {
	case KindResponse:
		owner, ok := s.pending[string(env.ID)]
		if !ok && !s.single {
			s.mu.Unlock()
			s.logger.Debug("dropped a response to no pending request", zap.ByteString("id", env.ID))
			return
		}
		delete(s.pending, string(env.ID))
		if req, ok := s.sent[string(env.ID)]; ok {
			delete(s.sent, string(env.ID))
			outcome := "ok"
			if env.Error != nil {
				outcome = "error"
			}
			s.backend.obs.RequestDone(req.method, outcome, time.Since(req.at))
		}
		if owner != nil {
			owner.pending--
			last = owner.pending == 0
			target = owner
		}
	case KindNotification:
		method := env.MethodName()
		if method == "notifications/tools/list_changed" {
			s.backend.prober.markStale()
		}
		if s.single {
			break
		}
		switch method {
		case "notifications/progress":
			target = s.progress[string(Member(env.Params, "progressToken"))]
		case "notifications/message":
			target = s.soleRequestStreamLocked()
		}
	case KindRequest:
		if !s.single {
			target = s.soleRequestStreamLocked()
		}
	default:
		s.mu.Unlock()
		s.logger.Warn("child sent an invalid JSON-RPC message; dropped")
		return
	}
	if target == nil {
		target = s.standalone
	}
	if target == nil {
		if len(s.backlog) >= backlogLen {
			s.backlog = s.backlog[1:]
			s.logger.Warn("no GET stream open and backlog full; dropped the oldest message")
		}
		s.backlog = append(s.backlog, msg)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	// Blocking here stops reading the child's stdout until the client keeps up.
	if !target.push(outMessage{data: msg, last: last}) {
		s.logger.Debug("stream closed before a message could be delivered")
	}
}

func (s *Session) soleRequestStreamLocked() *stream {
	if len(s.requestStreams) != 1 {
		return nil
	}
	for st := range s.requestStreams {
		return st
	}
	return nil
}

// onOversize answers a response that was too large with an error, when the
// kept prefix still shows its id.
func (s *Session) onOversize(prefix []byte) {
	id := Member(prefix, "id")
	if id == nil || !validID(id) {
		return
	}
	s.fromChild(ErrorResponse(id, CodeInternalError, "the MCP server's response exceeds max_message_size"))
}

// onChildExit fails the requests in flight and ends the session.
func (s *Session) onChildExit() {
	s.mu.Lock()
	if own, ok := s.up.(ownChild); ok && !s.ended {
		s.backend.exits.note(own.proc) // not stopped by the bridge: a crash
	}
	// From here until end, a request would be registered after the failures
	// below were collected and answered by nothing: refuse it instead.
	s.exited = true
	failed := make(map[*stream][][]byte)
	for id, st := range s.pending {
		if st == nil {
			st = s.standalone
		}
		if st != nil {
			failed[st] = append(failed[st], []byte(id))
		}
	}
	s.mu.Unlock()
	for st, ids := range failed {
		for i, id := range ids {
			st.tryPush(outMessage{data: ErrorResponse(id, CodeServerExited, "the MCP server process exited"), last: i == len(ids)-1})
		}
	}
	s.end("child exited")
}

// end closes the session's streams, removes it from the backend and stops
// its child. It is idempotent.
func (s *Session) end(reason string) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended = true
	streams := make([]*stream, 0, len(s.requestStreams)+1)
	for st := range s.requestStreams {
		streams = append(streams, st)
	}
	if s.standalone != nil {
		streams = append(streams, s.standalone)
	}
	s.backlog = nil
	s.mu.Unlock()
	for _, st := range streams {
		st.close()
	}
	close(s.done)
	s.backend.removeSession(s)
	s.logger.Info("session closed", zap.String("reason", reason))
	go s.up.Release()
}

// idleSince reports when the session last saw traffic, and whether it is
// busy (a stream open or a request in flight), which keeps it alive.
func (s *Session) idleSince() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	busy := s.standalone != nil || len(s.requestStreams) > 0 || len(s.pending) > 0
	return s.lastActive, busy
}
