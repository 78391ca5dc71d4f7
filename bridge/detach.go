package bridge

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// detachedWriteTimeout bounds one write to a detached stream's client, so
// that a client that stopped reading does not hold its goroutine forever.
const detachedWriteTimeout = time.Minute

// detachStream serves a long-lived stream on a goroutine of its own. Over
// HTTP/1.1 it takes the connection from net/http, as a WebSocket upgrade
// does, so that the request's goroutine (with the deep stack of Caddy's
// handler chain) and the server's connection buffers are let go while the
// stream idles: the stream's goroutine waits in the connection's Read
// (see pump.waitConn), which also tells it of the client leaving, and an
// idle GET stream then costs a few KiB, which is what lets one bridge hold
// ten thousand of them. serve writes the stream to w until it ends (done
// is nil: the connection tells). It reports false, having done nothing,
// where the connection cannot be taken (HTTP/2 and HTTP/3) or the body
// could not be chunked (HTTP/1.0).
func (s *Server) detachStream(w http.ResponseWriter, r *http.Request, serve func(w http.ResponseWriter, done <-chan struct{})) bool {
	if r.ProtoMajor != 1 || !r.ProtoAtLeast(1, 1) {
		return false
	}
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	_ = conn.SetDeadline(time.Time{})
	hw := &hijackedWriter{conn: conn, header: w.Header()}
	s.detached.add(conn)
	go func() {
		defer s.detached.remove(conn)
		serve(hw, nil)
		hw.finish()
		conn.Close()
	}()
	return true
}

// detachedConns are the connections of a Server's detached streams, whose
// goroutines wait in Read, so that CloseStreams can wake them.
type detachedConns struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func (d *detachedConns) add(c net.Conn) {
	d.mu.Lock()
	if d.conns == nil {
		d.conns = make(map[net.Conn]struct{})
	}
	d.conns[c] = struct{}{}
	d.mu.Unlock()
}

func (d *detachedConns) remove(c net.Conn) {
	d.mu.Lock()
	delete(d.conns, c)
	d.mu.Unlock()
}

// wakeAll ends the Read each stream waits in; the stream then sees why.
func (d *detachedConns) wakeAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for c := range d.conns {
		_ = c.SetReadDeadline(aLongTimeAgo)
	}
}

// hijackedWriter is a minimal http.ResponseWriter over a connection taken
// from net/http: an HTTP/1.1 response with a chunked body, after which
// the connection closes. What is written waits in buf until a flush.
type hijackedWriter struct {
	conn   net.Conn
	header http.Header
	buf    []byte
	status int // 0 until the header is written
}

func (h *hijackedWriter) Header() http.Header { return h.header }

// wake ends the Read the stream's goroutine waits in (a stream's waker).
func (h *hijackedWriter) wake() { _ = h.conn.SetReadDeadline(aLongTimeAgo) }

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
