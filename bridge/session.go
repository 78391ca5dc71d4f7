package bridge

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/child"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/placement"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// debugMessageBytes is how much of each message debug logs show.
const debugMessageBytes = 2048

// maxDetachedStreams caps the request streams a session keeps for clients
// that lost them before their response, so that they can resume.
const maxDetachedStreams = 16

// errDuplicateID is returned for a request whose id is already in flight in
// the same session.
var errDuplicateID = errors.New("a request with this id is already in flight in this session")

// errSessionEnded is returned for work on a session that has ended.
var errSessionEnded = errors.New("session ended")

// session is one client's session with its own child process.
type session struct {
	ID        string
	Transport string
	Principal principal
	// single marks transports with one stream for everything (legacy SSE,
	// WebSocket): all the child's messages go to the standalone stream.
	single  bool
	created time.Time
	backend *Backend
	up      placement.Lease
	// logger is the backend's; logFields (the session's id and its
	// child's pid) are added to each entry (logAt, withLogFields) rather
	// than kept by a logger of the session's own (zap's With), which
	// holds an encoded copy of them: about 1 KiB a session, the largest
	// part of an idle session's heap.
	logger    *zap.Logger
	logFields [2]zap.Field
	// undelivered bounds what the session's streams hold for a client
	// that does not read them.
	undelivered *undelivered

	mu              sync.Mutex
	protocolVersion string
	// pending, sent, progress and requestStreams may be nil when empty
	// (see putIn and trimIdle).
	pending        map[string]*stream     // client request id → the stream awaiting its response (nil: the standalone stream)
	sent           map[string]sentRequest // client request id → what metrics need of it
	progress       map[string]*stream     // progress token → the stream of its request
	requestStreams map[*stream]struct{}   // streams with responses to come
	standalone     *stream                // the stream for everything else; created on demand
	streams        map[int]*stream        // every stream a client may resume, by number
	// tag names the session in its event ids. A legacy SSE session is
	// resumed by its event id alone (with the key that opened it), so the
	// tag is as hard to guess as a session id, and names the node too.
	tag        string
	grace      *time.Timer // a legacy SSE session without its stream: when it ends
	ids        childIDs    // ids of the bridge's for an isolated child's requests
	credential string      // the credential the session was last used with
	gate       Gate        // what its principal may do, as of its last request
	endReason  string
	lastActive time.Time
	nextStream int
	ended      bool
	exited     bool // the child is gone: a new request would get no answer
	done       chan struct{}
}

// logAt logs msg at level with the session's fields, and more.
func (s *session) logAt(level zapcore.Level, msg string, more ...zap.Field) {
	if ce := s.logger.Check(level, msg); ce != nil {
		ce.Write(s.withLogFields(more...)...)
	}
}

// withLogFields returns the session's log fields followed by more.
func (s *session) withLogFields(more ...zap.Field) []zap.Field {
	return append(s.logFields[:len(s.logFields):len(s.logFields)], more...)
}

// ProtocolVersion is the version the child negotiated, once known.
func (s *session) ProtocolVersion() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.protocolVersion
}

func (s *session) setProtocolVersion(v string) {
	s.mu.Lock()
	s.protocolVersion = v
	s.mu.Unlock()
}

// reasonRevoked ends the sessions of a credential that was revoked.
const reasonRevoked = "its API key was revoked"

// useAuth records the credential a request of the session came with, and
// the gate its principal passes through now (a reload may change it).
func (s *session) useAuth(ctx context.Context) {
	c, g := credentialFrom(ctx), gateFrom(ctx)
	s.mu.Lock()
	if c != "" {
		s.credential = c
	}
	s.gate = g
	s.mu.Unlock()
}

// endedFor says why the session ended, once it has.
func (s *session) endedFor() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endReason
}

// Done is closed when the session has ended.
func (s *session) Done() <-chan struct{} { return s.done }

// openRequestStream registers a stream for the responses to ids, and the
// progress tokens of those requests.
func (s *session) openRequestStream(ids [][]byte, tokens [][]byte) (*stream, error) {
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
	st := newStream(s.nextStream, s.backend.cfg.Replay, s.undelivered)
	for _, id := range ids {
		putIn(&s.pending, string(id), st)
	}
	for _, tok := range tokens {
		putIn(&s.progress, string(tok), st)
	}
	st.pending = len(ids)
	putIn(&s.requestStreams, st, struct{}{})
	s.streams[st.num] = st
	s.lastActive = time.Now()
	return st, nil
}

// releaseRequestStream is called when a POST's connection ends. A stream
// that delivered its last response is forgotten; one cut off before then
// stays, with its requests, for the client to resume, until the session
// keeps too many such streams.
func (s *session) releaseRequestStream(st *stream, finished bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastActive = time.Now()
	if !finished {
		detached := 0
		oldest := st
		for _, other := range s.streams {
			if other != s.standalone && !other.hasWriter() {
				detached++
				if other.num < oldest.num {
					oldest = other
				}
			}
		}
		if detached <= maxDetachedStreams {
			return
		}
		st = oldest
	}
	s.forgetStreamLocked(st)
}

// forgetStreamLocked drops a request stream, and its requests: their
// responses, if they still come, are dropped.
func (s *session) forgetStreamLocked(st *stream) {
	st.close()
	st.release()
	delete(s.requestStreams, st)
	delete(s.streams, st.num)
	for id, owner := range s.pending {
		if owner == st {
			delete(s.pending, id)
			s.forgetSentLocked(id)
		}
	}
	for tok, owner := range s.progress {
		if owner == st {
			delete(s.progress, tok)
		}
	}
}

// standaloneStream returns the session's stream for messages that belong
// to no request, creating it if needed. A new GET takes it over from the
// previous one, and gets what waited for it meanwhile.
func (s *session) standaloneStream() (*stream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil, errSessionEnded
	}
	s.lastActive = time.Now()
	return s.standaloneLocked(), nil
}

// standaloneOrNil returns the stream for messages of no request, if any.
func (s *session) standaloneOrNil() *stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.standalone
}

func (s *session) standaloneLocked() *stream {
	if s.standalone == nil {
		s.nextStream++
		s.standalone = newStream(s.nextStream, s.backend.cfg.Replay, s.undelivered)
		s.streams[s.standalone.num] = s.standalone
	}
	return s.standalone
}

// resumable finds the stream a Last-Event-ID names in this session, and
// the event's position in it.
func (s *session) resumable(lastEventID string) (*stream, int, error) {
	num, seq, ok := parseEventID(lastEventID, s.tag)
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[num]
	if !ok || st == nil {
		return nil, 0, errors.New("Last-Event-ID names no stream of this session")
	}
	return st, seq, nil
}

// sentRequest is what metrics need of a request in flight, and its
// request_timeout timer, if any.
type sentRequest struct {
	method string
	at     time.Time
	timer  *time.Timer
	filter *listFilter // what the gate hides of its result, if anything
}

// forgetSentLocked drops a request from the ones in flight.
func (s *session) forgetSentLocked(id string) {
	if req, ok := s.sent[id]; ok {
		if req.timer != nil {
			req.timer.Stop()
		}
		delete(s.sent, id)
	}
}

// send forwards a client message to the child.
func (s *session) send(msg []byte, env *jsonrpc.Envelope) error {
	now := time.Now()
	var rewrite []jsonrpc.Splice
	shared := s.isShared()
	s.mu.Lock()
	s.lastActive = now
	switch env.Kind() {
	case jsonrpc.KindRequest:
		if !shared && needsChildID(env.ID) {
			rewrite = append(rewrite, jsonrpc.Splice{Old: env.ID, New: s.ids.assign(env.ID)})
		}
		req := sentRequest{method: metricMethod(env.MethodName()), at: now, filter: listFilterFor(s.gate, env.MethodName())}
		if d := s.backend.cfg.Pool.RequestTimeout; d > 0 {
			id := bytes.Clone(env.ID)
			req.timer = time.AfterFunc(d, func() { s.requestTimedOut(id, d) })
		}
		putIn(&s.sent, string(env.ID), req)
	case jsonrpc.KindNotification:
		// A cancelled request may never be answered (the spec lets the
		// server drop it): forget it, or it stays in flight for the
		// session's life and keeps the session from idling out. A POST
		// stream left with nothing to wait for ends.
		if env.MethodName() == "notifications/cancelled" {
			requestID := jsonrpc.Member(env.Params, "requestId")
			id := string(requestID)
			if childID := s.ids.forChild(requestID); childID != nil {
				rewrite = append(rewrite, jsonrpc.Splice{Old: requestID, New: childID})
				s.ids.forget(requestID)
			}
			if owner, ok := s.pending[id]; ok {
				delete(s.pending, id)
				s.forgetSentLocked(id)
				if owner != nil {
					if owner.pending--; owner.pending <= 0 {
						s.forgetStreamLocked(owner)
					}
				}
			}
		}
	}
	s.mu.Unlock()
	s.backend.obs.MessageBytes("in", len(msg))
	if ce := s.logger.Check(zap.DebugLevel, "message from client"); ce != nil {
		ce.Write(s.withLogFields(zap.ByteString("message", msg[:min(len(msg), debugMessageBytes)]))...)
	}
	if rewrite != nil {
		msg = jsonrpc.ApplySplices(msg, rewrite...)
	}
	err := s.up.Send(msg, env)
	if errors.Is(err, child.ErrInputFull) && env.Kind() == jsonrpc.KindRequest {
		// The child is alive but not reading: this request fails now (the
		// health check kills a child that stays so).
		s.mu.Lock()
		s.ids.forget(env.ID)
		s.mu.Unlock()
		s.fromChild(jsonrpc.ErrorResponse(env.ID, jsonrpc.CodeServerBusy, err.Error()+"; try again later"))
		return nil
	}
	return err
}

// forward sends a client message of a single-stream transport (legacy SSE,
// WebSocket) to the child, remembering the id of a request so that it can
// be failed if the child exits before answering, or answers it with the
// gate's refusal. These transports carry session protocols only: the
// stateless protocol's server/discover is answered "method not found", so
// that a dual-era client falls back to initialize, and the child never
// sees a stateless request first.
func (s *session) forward(msg []byte, env *jsonrpc.Envelope, refusal *Refusal) error {
	if env.Kind() == jsonrpc.KindRequest {
		s.mu.Lock()
		putIn(&s.pending, string(env.ID), nil)
		s.mu.Unlock()
		if env.MethodName() == "server/discover" {
			s.fromChild(jsonrpc.ErrorResponse(env.ID, jsonrpc.CodeMethodNotFound, "server/discover is not served on this transport; send initialize"))
			return nil
		}
	}
	return s.sendOrRefuse(msg, env, refusal)
}

// admit asks the session's gate about a client message, for a transport
// whose messages come with no request of their own (WebSocket).
func (s *session) admit(env *jsonrpc.Envelope) *Refusal {
	s.mu.Lock()
	g := s.gate
	s.mu.Unlock()
	return admitThrough(g, env)
}

// sendOrRefuse sends a client message to the child, or answers the
// request, whose id is pending, with the gate's refusal.
func (s *session) sendOrRefuse(msg []byte, env *jsonrpc.Envelope, refusal *Refusal) error {
	if refusal == nil {
		return s.send(msg, env)
	}
	s.touch()
	s.fromChild(refusal.response(env.ID))
	return nil
}

func (s *session) touch() {
	s.mu.Lock()
	s.lastActive = time.Now()
	s.mu.Unlock()
}

// fromChild routes one message from the child to the stream it belongs to:
// a response to the stream of its request, progress to the stream of its
// token, and logs and server requests to the one request in flight if there
// is exactly one; everything else to the GET stream.
func (s *session) fromChild(msg []byte) {
	env, err := jsonrpc.ParseEnvelope(msg)
	if err != nil {
		return // json.Valid passed, so only a non-object gets here
	}
	if env.Kind() == jsonrpc.KindResponse && bytes.HasPrefix(env.ID, childIDPrefix) && !s.isShared() {
		s.mu.Lock()
		clientID, ok := s.ids.restore(env.ID)
		s.mu.Unlock()
		if ok {
			msg = jsonrpc.ApplySplices(msg, jsonrpc.Splice{Old: env.ID, New: clientID})
			env, _ = jsonrpc.ParseEnvelope(msg)
		}
	}
	s.backend.obs.MessageBytes("out", len(msg))
	if ce := s.logger.Check(zap.DebugLevel, "message to client"); ce != nil {
		ce.Write(s.withLogFields(zap.ByteString("message", msg[:min(len(msg), debugMessageBytes)]))...)
	}
	s.mu.Lock()
	s.lastActive = time.Now()
	var target *stream
	var filter *listFilter
	last := false
	switch env.Kind() {
	case jsonrpc.KindResponse:
		if s.single && s.protocolVersion == "" {
			// A single-stream session's initialize result names its
			// version, for status (Streamable HTTP sessions learn it
			// from the initialize response's own stream).
			if v := jsonrpc.StringValue(jsonrpc.Member(env.Result, "protocolVersion")); v != "" && jsonrpc.Member(env.Result, "serverInfo") != nil {
				s.protocolVersion = v
			}
		}
		owner, ok := s.pending[string(env.ID)]
		if !ok {
			// Answered already (by request_timeout, say): a late answer
			// is dropped, on every transport.
			s.mu.Unlock()
			s.logAt(zap.DebugLevel, "dropped a response to no pending request", zap.ByteString("id", env.ID))
			return
		}
		delete(s.pending, string(env.ID))
		if req, ok := s.sent[string(env.ID)]; ok {
			filter = req.filter
			s.forgetSentLocked(string(env.ID))
			s.backend.obs.RequestDone(req.method, outcomeOf(&env), time.Since(req.at))
		}
		if owner != nil {
			owner.pending--
			last = owner.pending == 0
			target = owner
			if last {
				delete(s.requestStreams, owner) // nothing more belongs on it
			}
		}
	case jsonrpc.KindNotification:
		method := env.MethodName()
		if method == "notifications/tools/list_changed" {
			s.backend.prober.markStale()
		}
		if s.single {
			break
		}
		switch method {
		case "notifications/progress":
			target = s.progress[string(jsonrpc.Member(env.Params, "progressToken"))]
		case "notifications/message":
			target = s.soleRequestStreamLocked()
		}
	case jsonrpc.KindRequest:
		if !s.single {
			target = s.soleRequestStreamLocked()
		}
	default:
		s.mu.Unlock()
		s.logAt(zap.WarnLevel, "child sent an invalid JSON-RPC message; dropped")
		return
	}
	if target == nil {
		target = s.standaloneLocked()
	}
	s.mu.Unlock()
	if filter != nil {
		msg = filter.apply(msg, &env)
	}
	switch err := target.push(msg, last, s.pushPolicy(target)); {
	case errors.Is(err, errStreamFull):
		s.logAt(zap.WarnLevel, "ending a session whose client reads too slowly for the shared server")
		s.backend.owned.Go(func() { s.end("client too slow: its stream filled up") })
	case err != nil:
		s.logAt(zap.DebugLevel, "stream closed before a message could be delivered")
	}
}

// pushPolicy is how a message waits for a client that is behind. An
// isolated child waits (the bridge stops reading its stdout), so memory
// stays bounded; a shared child must not wait for one slow session, which
// is ended instead. Messages for no request, with no client reading them,
// keep only the latest.
func (s *session) pushPolicy(target *stream) pushPolicy {
	switch {
	case target == s.standalone && !target.hasWriter():
		return pushDropOldest
	case s.isShared():
		return pushFail
	}
	return pushWait
}

func (s *session) isShared() bool {
	return s.up.Shared()
}

func (s *session) soleRequestStreamLocked() *stream {
	if len(s.requestStreams) != 1 {
		return nil
	}
	for st := range s.requestStreams {
		return st
	}
	return nil
}

// requestTimedOut answers a request the child did not answer within
// request_timeout with an error, and cancels it at the child; an answer
// that still comes is dropped.
func (s *session) requestTimedOut(id []byte, after time.Duration) {
	s.mu.Lock()
	_, pending := s.pending[string(id)]
	childID := s.ids.forChild(id)
	s.ids.forget(id)
	s.mu.Unlock()
	if !pending {
		return
	}
	s.logAt(zap.WarnLevel, "request timed out; cancelling it at the child", zap.ByteString("id", id), zap.Duration("request_timeout", after))
	s.fromChild(requestTimeoutError(id, after))
	if childID != nil {
		id = childID
	}
	cancel := []byte(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":` + string(id) + `,"reason":"request_timeout"}}`)
	if env, err := jsonrpc.ParseEnvelope(cancel); err == nil {
		_ = s.up.Send(cancel, &env)
	}
}

// requestTimeoutError answers a request not answered within
// request_timeout.
func requestTimeoutError(id []byte, after time.Duration) []byte {
	return jsonrpc.ErrorResponse(id, jsonrpc.CodeInternalError,
		"the MCP server did not answer within request_timeout ("+after.String()+"); the request was cancelled")
}

// onOversize answers a response that was too large with an error, when the
// kept prefix still shows its id.
func (s *session) onOversize(prefix []byte) {
	id := jsonrpc.Member(prefix, "id")
	if id == nil || !jsonrpc.ValidID(id) {
		return
	}
	s.fromChild(jsonrpc.ErrorResponse(id, jsonrpc.CodeInternalError, "the MCP server's response exceeds max_message_size"))
}

// onChildExit fails the requests in flight and ends the session.
func (s *session) onChildExit() {
	s.mu.Lock()
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
	reason := s.up.ExitReason()
	for st, ids := range failed {
		for i, id := range ids {
			_ = st.push(jsonrpc.ErrorResponse(id, jsonrpc.CodeServerExited, reason), i == len(ids)-1, pushForce)
		}
	}
	s.end("child exited")
}

// end closes the session's streams, removes it from the backend and stops
// its child. It is idempotent.
func (s *session) end(reason string) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended = true
	s.endReason = reason
	for id := range s.sent {
		s.forgetSentLocked(id)
	}
	streams := make([]*stream, 0, len(s.streams))
	for _, st := range s.streams {
		streams = append(streams, st)
	}
	s.mu.Unlock()
	for _, st := range streams {
		st.close()
	}
	close(s.done)
	s.backend.removeSession(s)
	s.logAt(zap.InfoLevel, "session closed", zap.String("reason", reason))
	s.backend.owned.Go(s.up.Release)
}

// awaitResume gives a legacy SSE session whose stream closed grace to
// come back (with Last-Event-ID) before it ends; none when another
// connection already took the stream over.
func (s *session) awaitResume(grace time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || (s.standalone != nil && s.standalone.hasWriter()) {
		return
	}
	if grace <= 0 {
		s.backend.owned.Go(func() { s.end("SSE stream closed") })
		return
	}
	s.grace = time.AfterFunc(grace, func() { s.end("SSE stream closed, and not resumed in time") })
}

// resumeLegacy finds the legacy SSE session, waiting for its client, that
// a Last-Event-ID names, and the event's position in its stream.
func (b *Backend) resumeLegacy(lastEventID string, p principal) (*session, int) {
	tag, _, _ := strings.Cut(lastEventID, "_")
	b.mu.RLock()
	var found *session
	for _, s := range b.sessions {
		if s.Transport == "sse" && subtle.ConstantTimeCompare([]byte(s.tag), []byte(tag)) == 1 && s.Principal == p {
			found = s
			break
		}
	}
	b.mu.RUnlock()
	if found == nil {
		return nil, 0
	}
	found.mu.Lock()
	defer found.mu.Unlock()
	_, seq, ok := parseEventID(lastEventID, found.tag)
	if !ok || found.ended || (found.grace != nil && !found.grace.Stop()) {
		return nil, 0
	}
	found.grace = nil
	return found, seq
}

// idleSince reports when the session last saw traffic, and whether it is
// busy (a client reading one of its streams), which keeps it alive.
func (s *session) idleSince() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.streams {
		if st.hasWriter() {
			return s.lastActive, true
		}
	}
	return s.lastActive, false
}

// putIn stores v at k in *m, making the map if there is none.
func putIn[K comparable, V any](m *map[K]V, k K, v V) {
	if *m == nil {
		*m = make(map[K]V, 1)
	}
	(*m)[k] = v
}

// trimIdle lets go of the session's request maps that are empty: a map
// keeps its table after its entries are deleted, and ten thousand idle
// sessions would hold megabytes of them. It runs when the session's GET
// stream parks, not after each request, which would make the tables
// again for the next.
func (s *session) trimIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	dropEmpty(&s.pending)
	dropEmpty(&s.sent)
	dropEmpty(&s.progress)
	dropEmpty(&s.requestStreams)
}

// dropEmpty lets go of *m if it is empty; putIn makes it again.
func dropEmpty[K comparable, V any](m *map[K]V) {
	if len(*m) == 0 {
		*m = nil
	}
}
