package bridge

import (
	"bytes"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
)

// streamQueueLen is how many messages may wait for a stream's writer before
// the child's reader blocks on it, which is the backpressure of an isolated
// session: the child's stdout pipe fills and the child waits.
const streamQueueLen = 32

// outMessage is one message queued for a client stream.
type outMessage struct {
	data []byte
	last bool // the stream ends after this message
}

// stream is one server-to-client message stream of a session: the response
// stream of a POST, the session's GET stream, or a legacy SSE stream. The
// child's reader pushes; the HTTP handler that owns the stream writes.
type stream struct {
	num    int // unique within the session; part of every event id
	seq    int // events written so far; only the writer touches it
	queue  chan outMessage
	closed chan struct{}
	once   sync.Once

	// Guarded by the session's mutex.
	pending int // responses this stream still waits for
}

func newStream(num int) *stream {
	return &stream{num: num, queue: make(chan outMessage, streamQueueLen), closed: make(chan struct{})}
}

// push queues msg, waiting while the queue is full. It reports false when
// the stream closed first.
func (st *stream) push(msg outMessage) bool {
	select {
	case st.queue <- msg:
		return true
	case <-st.closed:
		return false
	}
}

// tryPush queues msg only if there is room at once.
func (st *stream) tryPush(msg outMessage) bool {
	select {
	case st.queue <- msg:
		return true
	default:
		return false
	}
}

func (st *stream) close() { st.once.Do(func() { close(st.closed) }) }

// nextEventID names the stream and the event's position in it.
func (st *stream) nextEventID() string {
	st.seq++
	return strconv.Itoa(st.num) + "_" + strconv.Itoa(st.seq)
}

// sseWriter writes Server-Sent Events and flushes each one.
type sseWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf []byte
}

func newSSEWriter(w http.ResponseWriter) *sseWriter {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	return &sseWriter{w: w, rc: http.NewResponseController(w)}
}

// event writes one event. An empty data gives the bare "data:" line of a
// priming event. name is left out when empty (it then means "message").
func (sw *sseWriter) event(id, name string, data []byte) error {
	b := sw.buf[:0]
	if id != "" {
		b = append(b, "id: "...)
		b = append(b, id...)
		b = append(b, '\n')
	}
	if name != "" {
		b = append(b, "event: "...)
		b = append(b, name...)
		b = append(b, '\n')
	}
	b = appendSSEData(b, data)
	b = append(b, '\n')
	sw.buf = b
	return sw.write(b)
}

// comment writes an SSE comment line, used as a keepalive.
func (sw *sseWriter) comment(text string) error {
	return sw.write([]byte(": " + text + "\n\n"))
}

func (sw *sseWriter) write(b []byte) error {
	if _, err := sw.w.Write(b); err != nil {
		return err
	}
	return sw.rc.Flush()
}

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

// keepalive returns a ticker channel for SSE keepalive comments, or nil
// (which never fires) when interval is zero.
func keepalive(interval time.Duration) (<-chan time.Time, func()) {
	if interval <= 0 {
		return nil, func() {}
	}
	t := time.NewTicker(interval)
	return t.C, t.Stop
}

// streamMode is what a stream carries.
type streamMode uint8

const (
	streamResponse   streamMode = iota // a POST's responses
	streamInitialize                   // a POST's response to initialize
	streamStandalone                   // a session's GET stream
	streamLegacy                       // a legacy SSE session's only stream
)

// writeStream writes a stream as SSE until its last message, the client
// leaving, the session ending, or (for a GET stream) this Server closing
// its streams. A POST stream ends with its last response, so a
// reload lets it finish. A legacy stream opens with the endpoint event.
func (s *Server) writeStream(w http.ResponseWriter, r *http.Request, sess *Session, st *stream, mode streamMode) {
	sw := newSSEWriter(w)
	w.WriteHeader(http.StatusOK)
	var err error
	eventName := ""
	switch {
	case mode == streamLegacy:
		eventName = "message"
		err = sw.event("", "endpoint", []byte(s.endpointURI(r, sess)))
	case sess.ProtocolVersion() >= version20251125:
		// A priming event: the client may resume from here if cut off.
		err = sw.event(st.nextEventID(), "", nil)
	default:
		err = sw.rc.Flush()
	}
	ping, stopPing := keepalive(s.cfg.Keepalive)
	defer stopPing()
	// A GET stream is closed when this Server stops serving (the client
	// reconnects, to the same session); a legacy stream is the session
	// itself, so it stays with the old instance through a reload.
	var closing <-chan struct{}
	if mode == streamStandalone {
		closing = s.closing
	}
	for err == nil {
		select {
		case m := <-st.queue:
			initFailed := m.last && mode == streamInitialize && !s.finishInitialize(sess, m.data)
			err = sw.event(st.nextEventID(), eventName, m.data)
			if initFailed {
				sess.end("initialize failed")
			}
			if m.last {
				return
			}
		case <-ping:
			err = sw.comment("ping")
		case <-r.Context().Done():
			return
		case <-st.closed:
			s.drain(sw, st, eventName)
			return
		case <-closing:
			return
		}
	}
	s.logger.Debug("stream write failed; client gone", zap.String("session", sess.ID[:8]), zap.Error(err))
}

// drain writes what is still queued on a stream that was closed, such as
// the errors for requests whose child exited.
func (s *Server) drain(sw *sseWriter, st *stream, eventName string) {
	for {
		select {
		case m := <-st.queue:
			if sw.event(st.nextEventID(), eventName, m.data) != nil {
				return
			}
		default:
			return
		}
	}
}
