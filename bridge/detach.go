package bridge

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
)

// detachedWriteTimeout bounds one write to a detached stream's client, so
// that a client that stopped reading does not hold its goroutine forever.
const detachedWriteTimeout = time.Minute

// detachStream serves a long-lived stream off net/http. Over HTTP/1.1 it
// takes the connection from net/http, as a WebSocket upgrade does, so
// that the request's goroutine (with the deep stack of Caddy's handler
// chain) and the server's connection buffers are let go while the stream
// idles. open starts the stream on the connection (nil if it could not);
// its writer then runs on a goroutine of its own, which an idle stream
// gives up where it can park (see parking), and which otherwise waits in
// the connection's Read (see pump.waitConn): either way the connection
// tells of the client leaving, and an idle GET stream costs little enough
// for one bridge to hold ten thousand. It reports false, having done
// nothing, where the connection cannot be taken (HTTP/2 and HTTP/3) or the
// body could not be chunked (HTTP/1.0).
func (s *Server) detachStream(w http.ResponseWriter, r *http.Request, open func(w http.ResponseWriter) *streamWriter) bool {
	if r.ProtoMajor != 1 || !r.ProtoAtLeast(1, 1) {
		return false
	}
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	_ = conn.SetDeadline(time.Time{})
	// The header is cloned here, on the request's goroutine: once the
	// handler returns, Caddy's access log reads net/http's map.
	d := &detachedStream{s: s, hw: &hijackedWriter{conn: conn, header: w.Header().Clone()}}
	d.hw.parking = newParking(conn, d.serve)
	s.detached.add(d)
	go func() {
		if d.wr = open(d.hw); d.wr == nil {
			d.end()
			return
		}
		d.serve()
	}()
	return true
}

// detachedStream is a stream served on a connection taken from net/http.
type detachedStream struct {
	s  *Server
	hw *hijackedWriter
	wr *streamWriter
}

// serve runs the stream's writer until the stream ends, or until it parks:
// a wake-up then runs serve again, on a goroutine of its own.
func (d *detachedStream) serve() {
	pk := d.hw.parking
	for {
		pk.running()
		if _, parked := d.wr.run(); !parked {
			d.end()
			return
		}
		d.hw.idle()
		d.wr.sess.trimIdle()
		parked, err := pk.park(d.wr.p.deadline())
		if err != nil {
			// The poller would not take it: wait in Read, as elsewhere.
			d.s.logger.Debug("cannot park a stream", zap.Error(err))
			d.wr.p.stopParking()
		}
		if parked {
			return
		}
	}
}

// end closes the connection, its stream over.
func (d *detachedStream) end() {
	d.hw.parking.unwatch()
	d.hw.finish()
	d.hw.conn.Close()
	d.s.detached.remove(d)
}

// detachedConns are a Server's detached streams, so that CloseStreams can
// wake them.
type detachedConns struct {
	mu      sync.Mutex
	streams map[*detachedStream]struct{}
}

func (d *detachedConns) add(ds *detachedStream) {
	d.mu.Lock()
	putIn(&d.streams, ds, struct{}{})
	d.mu.Unlock()
}

func (d *detachedConns) remove(ds *detachedStream) {
	d.mu.Lock()
	delete(d.streams, ds)
	d.mu.Unlock()
}

// wakeAll wakes every stream's writer; it then sees why.
func (d *detachedConns) wakeAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for ds := range d.streams {
		ds.hw.wake()
	}
}

// hijackedWriter is a minimal http.ResponseWriter over a connection taken
// from net/http: an HTTP/1.1 response with a chunked body, after which
// the connection closes. What is written waits in buf until a flush.
type hijackedWriter struct {
	conn    net.Conn
	parking *parking // nil where the stream cannot park
	header  http.Header
	buf     []byte
	status  int // 0 until the header is written
}

// Header is the response's header; once it is written, a new one that
// nothing sends.
func (h *hijackedWriter) Header() http.Header {
	if h.header == nil {
		h.header = make(http.Header)
	}
	return h.header
}

// wake ends the Read the stream's writer waits in, or runs it again if it
// parked (a stream's waker).
func (h *hijackedWriter) wake() {
	_ = h.conn.SetReadDeadline(aLongTimeAgo)
	h.parking.wake()
}

// idle lets go of the write buffer while the stream parks.
func (h *hijackedWriter) idle() { h.buf = nil }

func (h *hijackedWriter) WriteHeader(code int) {
	if h.status != 0 {
		return
	}
	h.status = code
	h.header.Del("Content-Length")
	h.header.Set("Transfer-Encoding", "chunked")
	h.header.Set("Connection", "close")
	if h.header.Get("Date") == "" {
		h.header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	h.buf = append(h.buf, "HTTP/1.1 "...)
	h.buf = strconv.AppendInt(h.buf, int64(code), 10)
	h.buf = append(h.buf, ' ')
	h.buf = append(h.buf, http.StatusText(code)...)
	h.buf = append(h.buf, "\r\n"...)
	_ = h.header.Write((*appendWriter)(&h.buf))
	h.buf = append(h.buf, "\r\n"...)
	h.header = nil // an idle stream does not keep it
}

// Write adds p as one chunk.
func (h *hijackedWriter) Write(p []byte) (int, error) {
	h.WriteHeader(http.StatusOK)
	if len(p) == 0 {
		return 0, nil
	}
	h.buf = strconv.AppendInt(h.buf, int64(len(p)), 16)
	h.buf = append(h.buf, "\r\n"...)
	h.buf = append(h.buf, p...)
	h.buf = append(h.buf, "\r\n"...)
	return len(p), nil
}

// FlushError sends what is buffered; http.ResponseController.Flush
// calls it.
func (h *hijackedWriter) FlushError() error {
	if len(h.buf) == 0 {
		return nil
	}
	_ = h.conn.SetWriteDeadline(time.Now().Add(detachedWriteTimeout))
	_, err := h.conn.Write(h.buf)
	if cap(h.buf) > 64<<10 {
		h.buf = nil // an idle stream does not keep a large buffer
	} else {
		h.buf = h.buf[:0]
	}
	return err
}

// finish ends the chunked body and sends what is left.
func (h *hijackedWriter) finish() {
	if h.status != 0 {
		h.buf = append(h.buf, "0\r\n\r\n"...)
	}
	_ = h.FlushError()
}

// appendWriter is an io.Writer that appends to a byte slice.
type appendWriter []byte

func (a *appendWriter) Write(p []byte) (int, error) {
	*a = append(*a, p...)
	return len(p), nil
}
