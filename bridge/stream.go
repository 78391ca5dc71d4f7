package bridge

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"go.uber.org/zap"
)

// Bounds of a stream's event log.
const (
	// streamWindow is how many events may wait for a stream's writer; the
	// session's undelivered bound limits their bytes. Past either, an
	// isolated child's reader blocks (its stdout pipe fills and the child
	// waits), a shared child's session is ended as too slow, and a stream
	// with no client drops its oldest event.
	streamWindow = 64
	// DefaultReplayEvents and DefaultReplayBytes bound the events a stream
	// keeps after writing them, for a client that resumes with
	// Last-Event-ID.
	DefaultReplayEvents = 256
	DefaultReplayBytes  = 4 << 20
)

// pushPolicy says what push does when the writer is streamWindow behind.
type pushPolicy uint8

const (
	pushWait       pushPolicy = iota // wait for the writer (backpressure)
	pushFail                         // give up: the caller ends the session
	pushDropOldest                   // drop the oldest unwritten event
	pushForce                        // append anyway (a few final errors)
)

// errStreamFull is returned by push under pushFail.
var errStreamFull = errors.New("the client reads too slowly: its stream is full")

// errEventGone is returned for a Last-Event-ID the stream no longer keeps.
var errEventGone = errors.New("the event is no longer kept for replay")

// event is one message of a stream, with its position.
type event struct {
	seq  int
	data []byte
	last bool // the stream ends after it
}

// stream is one server-to-client message stream of a session: the response
// stream of a POST, the session's GET stream, or a legacy SSE or WebSocket
// session's only stream. Its events go into a log: the writer (the HTTP
// handler serving the stream now, if any) writes them in order, and keeps
// the latest for a client that resumes with Last-Event-ID, on a new
// connection, from where it was cut off.
type stream struct {
	num    int // unique within the session; part of every event id
	replay ReplayBuffer
	// undelivered counts the bytes of the session's streams that wait for
	// a client; nil for no bound.
	undelivered *undelivered

	mu     sync.Mutex
	log    []event // by seq; events before sent are kept for replay only
	bytes  int
	next   int // seq of the next event; 0 is the priming event's
	sent   int // events below this seq were written to a client
	writer int // generation of the writer attached; 0 when none
	// replaced is closed when the writer attached last is replaced. The
	// wake channel cannot tell it: the writer replacing it may take the
	// one wake-up first.
	replaced chan struct{}
	gens     int
	unsent   int  // bytes of the events from sent on
	cutOff   bool // a writer left before the stream was finished, and none took over
	closed   bool
	wake     chan struct{} // the writer waits here for events (cap 1)
	// waker, when set, also wakes the writer: a detached stream's writer
	// waits in its connection's Read, not on wake (see pump.waitConn).
	waker func()
	room  chan struct{} // a waiting push waits here (cap 1)
	done  chan struct{} // closed with the stream

	// Guarded by the session's mutex.
	pending int // responses this stream still waits for
}

// ReplayBuffer bounds what a stream keeps of the events it wrote, for
// clients that resume: the latest Events, within Bytes.
type ReplayBuffer struct {
	Events int
	Bytes  int
}

func newStream(num int, replay ReplayBuffer, undelivered *undelivered) *stream {
	return &stream{num: num, replay: replay, undelivered: undelivered, next: 1, sent: 1, wake: make(chan struct{}, 1), room: make(chan struct{}, 1), done: make(chan struct{})}
}

// undelivered bounds the bytes that a session's streams hold for a client
// that does not read them.
type undelivered struct {
	bytes atomic.Int64
	limit int64
}

// full reports whether n more bytes would pass the bound.
func (u *undelivered) full(n int) bool {
	return u != nil && u.bytes.Load()+int64(n) > u.limit
}

func (u *undelivered) add(n int) {
	if u != nil && n != 0 {
		u.bytes.Add(int64(n))
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// push appends a message. What happens when the writer is far behind is
// up to policy.
func (st *stream) push(data []byte, last bool, policy pushPolicy) error {
	st.mu.Lock()
	if st.cutOff && policy != pushForce {
		policy = pushDropOldest // nobody reads it now: wait for nobody
	}
	// A stream with nothing waiting takes a message of any size, so that
	// each message gets through to a client that reads.
	for policy != pushForce && !st.closed && (st.next-st.sent >= streamWindow || (st.unsent > 0 && st.undelivered.full(len(data)))) {
		switch policy {
		case pushFail:
			st.mu.Unlock()
			return errStreamFull
		case pushDropOldest:
			st.dropOldestLocked()
		case pushWait:
			st.mu.Unlock()
			select {
			case <-st.room:
			case <-st.done:
			}
			st.mu.Lock()
		}
	}
	if st.closed && policy != pushForce {
		st.mu.Unlock()
		return errSessionEnded
	}
	st.log = append(st.log, event{seq: st.next, data: data, last: last})
	st.bytes += len(data)
	st.unsent += len(data)
	st.undelivered.add(len(data))
	st.next++
	if st.cutOff {
		st.trimLocked()
	}
	waker := st.waker
	st.mu.Unlock()
	st.wakeWriter(waker)
	return nil
}

// wakeWriter tells the writer there is news: on wake, and through its
// waker, if it has one (taken under the lock, called without it).
func (st *stream) wakeWriter(waker func()) {
	signal(st.wake)
	if waker != nil {
		waker()
	}
}

// setWaker gives the writer gen a waker, if it is still the writer.
func (st *stream) setWaker(gen int, waker func()) {
	st.mu.Lock()
	if st.writer == gen {
		st.waker = waker
	}
	st.mu.Unlock()
}

// dropOldestLocked gives up the oldest unwritten event, as if written:
// nobody reads it.
func (st *stream) dropOldestLocked() {
	if i := st.sent - st.firstSeqLocked(); i >= 0 && i < len(st.log) {
		st.unsent -= len(st.log[i].data)
		st.undelivered.add(-len(st.log[i].data))
	}
	st.sent++
	st.evictLocked()
}

// firstSeqLocked is the seq of the oldest event kept.
func (st *stream) firstSeqLocked() int {
	if len(st.log) == 0 {
		return st.next
	}
	return st.log[0].seq
}

// trimLocked keeps, of a stream whose client was cut off, only what the
// replay bounds allow, written or not: what a client does not read is
// kept for its return within those bounds, and a larger result is not
// kept at all.
func (st *stream) trimLocked() {
	for len(st.log) > 0 && (len(st.log) > st.replay.Events || st.bytes > st.replay.Bytes) {
		if st.log[0].seq >= st.sent {
			st.dropOldestLocked()
			continue
		}
		st.bytes -= len(st.log[0].data)
		st.log[0] = event{}
		st.log = st.log[1:]
	}
}

// release gives the session's undelivered bound back what the stream
// still holds unwritten, once it is forgotten.
func (st *stream) release() {
	st.mu.Lock()
	st.undelivered.add(-st.unsent)
	st.unsent = 0
	st.mu.Unlock()
}

// evictLocked lets go of the written events the replay bounds no longer
// keep.
func (st *stream) evictLocked() {
	for len(st.log) > 0 && st.log[0].seq < st.sent && (len(st.log) > st.replay.Events || st.bytes > st.replay.Bytes) {
		st.bytes -= len(st.log[0].data)
		st.log[0] = event{}
		st.log = st.log[1:]
	}
}

// attach makes the caller the stream's one writer (a previous one stops),
// starting after the event seq after, or at the first unwritten event when
// after is negative. It returns the writer's generation, its first seq,
// and a channel closed when another writer replaces it.
func (st *stream) attach(after int) (gen, cursor int, replaced <-chan struct{}, err error) {
	var wakeReplaced func()
	defer func() {
		if wakeReplaced != nil {
			wakeReplaced() // after the unlock below
		}
	}()
	st.mu.Lock()
	defer st.mu.Unlock()
	cursor = st.sent
	if after >= 0 {
		cursor = after + 1
		first := st.sent
		if len(st.log) > 0 {
			first = st.log[0].seq
		}
		if cursor < first || cursor > st.next {
			return 0, 0, nil, errEventGone
		}
	}
	st.gens++
	st.writer = st.gens
	st.cutOff = false
	if st.replaced != nil {
		close(st.replaced) // a writer it replaces leaves
	}
	wakeReplaced, st.waker = st.waker, nil
	st.replaced = make(chan struct{})
	return st.writer, cursor, st.replaced, nil
}

// detach lets go of the stream if gen is still its writer. A stream left
// unfinished keeps only what its replay bounds allow.
func (st *stream) detach(gen int) {
	st.mu.Lock()
	if st.writer == gen {
		st.writer = 0
		st.waker = nil
		if st.sent < st.next {
			st.cutOff = true
			st.trimLocked()
		}
	}
	st.mu.Unlock()
	signal(st.room) // a push waiting for this writer looks again
}

// hasWriter reports whether a client is reading the stream now.
func (st *stream) hasWriter() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.writer != 0
}

// events appends to dst the events from seq cursor on, and reports
// whether gen is still the writer and whether the stream is closed. The
// writer passes the same dst each time, so that writing allocates nothing.
func (st *stream) events(gen, cursor int, dst []event) (evs []event, current, closed bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.writer != gen {
		return dst[:0], false, st.closed
	}
	evs = dst[:0]
	if len(st.log) > 0 {
		// The log's seqs follow one another.
		if i := max(cursor-st.log[0].seq, 0); i < len(st.log) {
			evs = append(evs, st.log[i:]...)
		}
	}
	return evs, true, st.closed
}

// written records that the events below seq reached the client, and lets
// go of those the replay bounds no longer keep.
func (st *stream) written(seq int) {
	st.mu.Lock()
	if seq > st.sent {
		first := st.firstSeqLocked()
		for i := max(st.sent-first, 0); i < seq-first && i < len(st.log); i++ {
			st.unsent -= len(st.log[i].data)
			st.undelivered.add(-len(st.log[i].data))
		}
		st.sent = seq
	}
	st.evictLocked()
	st.mu.Unlock()
	signal(st.room)
}

// close ends the stream: no more events; its writer leaves once it has
// written what is logged.
func (st *stream) close() {
	st.mu.Lock()
	if !st.closed {
		st.closed = true
		close(st.done)
	}
	waker := st.waker
	st.mu.Unlock()
	st.wakeWriter(waker)
}

// appendEventID appends an event's id: the session's tag, the stream and
// the position.
func appendEventID(b []byte, tag string, num, seq int) []byte {
	b = append(b, tag...)
	b = append(b, '_')
	b = strconv.AppendInt(b, int64(num), 10)
	b = append(b, '_')
	return strconv.AppendInt(b, int64(seq), 10)
}

// appendPrimingID appends the id of the priming event that the writer
// gen of a stream sends first: the position of the last event before it,
// and the writer, so that every connection's first id is new (clients such
// as the go-sdk's give up on a stream whose ids stop advancing).
func appendPrimingID(b []byte, tag string, num, seq, gen int) []byte {
	b = appendEventID(b, tag, num, seq)
	b = append(b, '_')
	return strconv.AppendInt(b, int64(gen), 10)
}

// parseEventID reads an event id, or a priming event's; ok is false when it
// is not one of tag's.
func parseEventID(id, tag string) (num, seq int, ok bool) {
	rest, found := strings.CutPrefix(id, tag+"_")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(rest, "_")
	if !found {
		return 0, 0, false
	}
	b, gen, primed := strings.Cut(b, "_")
	num, err1 := strconv.Atoi(a)
	seq, err2 := strconv.Atoi(b)
	ok = err1 == nil && err2 == nil && num > 0 && seq >= 0
	if primed {
		g, err := strconv.Atoi(gen)
		ok = ok && err == nil && g > 0
	}
	return num, seq, ok
}

// sseWriter writes Server-Sent Events. It leaves them in the response's
// buffer until flush, which its users call before they wait: a response
// whose answer is already there leaves in one write.
type sseWriter struct {
	name  string // the event name of messages (send); "" means "message"
	w     http.ResponseWriter
	rc    *http.ResponseController
	buf   []byte
	dirty bool // written since the last flush
	// scratch backs buf at first: an event's id and name lines fit, so
	// that a stream's first events allocate nothing more.
	scratch [128]byte
}

// startSSE sends the headers of an event stream (on the first flush).
func startSSE(w http.ResponseWriter) *sseWriter {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sw := &sseWriter{w: w, rc: http.NewResponseController(w), dirty: true}
	sw.buf = sw.scratch[:0]
	return sw
}

// event writes one event. An empty data gives the bare "data:" line of a
// priming event. id and name are left out when empty (no name means
// "message").
func (sw *sseWriter) event(id []byte, name string, data []byte) error {
	b := sw.buf[:0]
	if len(id) > 0 {
		b = append(b, "id: "...)
		b = append(b, id...)
		b = append(b, '\n')
	}
	if name != "" {
		b = append(b, "event: "...)
		b = append(b, name...)
		b = append(b, '\n')
	}
	if len(data) > 0 && bytes.IndexByte(data, '\n') < 0 && bytes.IndexByte(data, '\r') < 0 {
		// A message on one line, as nearly all are, is written as it is:
		// not copied, however large.
		b = append(b, "data: "...)
		sw.buf = b
		if err := sw.write(b); err != nil {
			return err
		}
		if err := sw.write(data); err != nil {
			return err
		}
		return sw.write(eventEnd)
	}
	b = appendSSEData(b, data)
	b = append(b, '\n')
	sw.buf = b
	return sw.write(b)
}

var eventEnd = []byte("\n\n")

var pingComment = []byte(": ping\n\n")

// ping writes a keepalive, an SSE comment line, and flushes it.
func (sw *sseWriter) ping() error {
	if err := sw.write(pingComment); err != nil {
		return err
	}
	return sw.flush()
}

func (sw *sseWriter) write(b []byte) error {
	sw.dirty = true
	_, err := sw.w.Write(b)
	return err
}

// flush sends what was written since the last flush, if anything.
func (sw *sseWriter) flush() error {
	if !sw.dirty {
		return nil
	}
	sw.dirty = false
	return sw.rc.Flush()
}

// firstAnswerHold is how long a request's stream keeps its headers (and
// priming event) unsent, waiting for the answer to join them in one write.
// Most answers from a local child come well within it; it saves a write
// and a flush per call.
const firstAnswerHold = 2 * time.Millisecond

// appendSSEData appends data as "data:" lines. A JSON message has no raw
// newlines inside strings, but may have CR or LF as whitespace between
// tokens, which SSE would take as line ends: those become separate data
// lines, which the client joins with "\n", still valid JSON whitespace.
func appendSSEData(b, data []byte) []byte {
	if len(data) == 0 {
		return append(b, "data:\n"...)
	}
	for {
		i := bytes.IndexAny(data, "\r\n")
		b = append(b, "data: "...)
		if i < 0 {
			b = append(b, data...)
			return append(b, '\n')
		}
		b = append(b, data[:i]...)
		b = append(b, '\n')
		data = data[i+1:]
	}
}

// streamMode is what a stream carries.
type streamMode uint8

const (
	streamResponse   streamMode = iota // a POST's responses
	streamInitialize                   // a POST's response to initialize
	streamStandalone                   // a session's GET stream
	streamLegacy                       // a legacy SSE session's only stream
)

// writeStream writes a stream as SSE, from after the event after (negative:
// from the first unwritten one), until its last event, the client leaving
// (done closes), the session ending, another connection taking the stream
// over, or (for a GET stream) this Server closing its streams. A POST
// stream ends with its last response, so a reload lets it finish. A legacy
// stream opens with the endpoint event, endpoint. It reports whether the
// stream was finished.
func (s *Server) writeStream(w http.ResponseWriter, done <-chan struct{}, endpoint string, sess *session, st *stream, mode streamMode, after int) bool {
	var wr streamWriter // on the stack: a request's stream allocates no writer
	if !s.openStream(&wr, w, done, endpoint, sess, st, mode, after) {
		return false
	}
	finished, _ := wr.run()
	return finished
}

// streamWriter is one connection's writing of a stream, from attach to
// detach: its pump, and what ends it.
type streamWriter struct {
	s    *Server
	sess *session
	st   *stream
	gen  int
	sw   *sseWriter
	p    pump
}

// openStream attaches to st as wr's writer and starts the event stream on
// w (see writeStream); false if that failed, which it answered or logged.
func (s *Server) openStream(wr *streamWriter, w http.ResponseWriter, done <-chan struct{}, endpoint string, sess *session, st *stream, mode streamMode, after int) bool {
	gen, cursor, replaced, err := st.attach(after)
	if err != nil {
		WriteError(w, http.StatusBadRequest, jsonrpc.CodeInvalidRequest, "cannot resume: "+err.Error())
		return false
	}
	sw := startSSE(w)
	id := make([]byte, 0, len(sess.tag)+3*20) // the priming id's, then the pump's
	*wr = streamWriter{s: s, sess: sess, st: st, gen: gen, sw: sw}
	wr.p = pump{
		st: st, gen: gen, cursor: cursor, sink: sw,
		ids: true, idTag: sess.tag, idNum: st.num, id: id,
		keepalive: s.cfg.Keepalive,
		done:      done,
		replaced:  replaced,
	}
	p := &wr.p
	resumable := mode != streamLegacy && sess.ProtocolVersion() >= version20251125
	switch {
	case mode == streamLegacy:
		sw.name = "message"
		err = sw.event(nil, "endpoint", []byte(endpoint))
	case resumable:
		// A priming event, on every connection, resumed or not: the client
		// may resume from here if cut off, and its id is always new.
		err = sw.event(appendPrimingID(id, sess.tag, st.num, cursor-1, gen), "", nil)
	}
	// A request's stream waits a moment for its answer before it sends
	// anything; other streams send as soon as they would wait.
	p.hold = mode == streamResponse || mode == streamInitialize
	if resumable {
		p.poll = s.cfg.PollInterval
	}
	// A GET stream is closed when this Server stops serving (the client
	// reconnects, to the same session); a legacy stream is the session
	// itself, so it stays with the old instance through a reload.
	if mode == streamStandalone {
		p.closing = s.closing
	}
	if hw, ok := w.(*hijackedWriter); ok {
		// A detached stream: the connection tells of the client leaving.
		p.conn, p.parking, p.done = hw.conn, hw.parking, nil
		st.setWaker(gen, hw.wake)
	}
	if mode == streamInitialize {
		initFailed := false
		p.before = func(ev event) { initFailed = ev.last && !s.finishInitialize(sess, ev.data) }
		p.after = func(event) {
			if initFailed {
				sess.end("initialize failed")
			}
		}
	}
	if err != nil {
		st.detach(gen)
		return false
	}
	return true
}

// run pumps the stream until it ends, or, with parking, until it has
// nothing to do (parked: run it again on news). It reports whether the
// stream was finished; unless parked, the writer has let go of the
// stream.
func (wr *streamWriter) run() (finished, parked bool) {
	end := wr.p.run()
	if end == pumpParked {
		return false, true
	}
	defer wr.st.detach(wr.gen)
	switch end {
	case pumpFinished:
		return true, false
	case pumpPoll:
		// Close the connection, not the stream: the client comes back
		// with Last-Event-ID after retry.
		_ = wr.sw.write([]byte("retry: " + strconv.Itoa(int(pollRetry.Milliseconds())) + "\n\n"))
	case pumpFailed:
		wr.s.logger.Debug("stream write failed; client gone", zap.String("session", wr.sess.ID[:8]))
	}
	return false, false
}
