package bridge

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// A parked stream waits with no goroutine at all. When a detached
// stream's writer has nothing to write, its goroutine returns; a poller
// (one for the process: epoll on Linux) watches the connection for the
// client sending or leaving, and a timer holds the next ping or the end
// of the poll interval. News for the stream, the poller, the timer or
// CloseStreams then start a goroutine that runs the writer again. An idle
// GET stream so costs a few hundred bytes, not a goroutine's stack, and
// not the garbage collector's headroom over that stack. Where there is no
// poller, or the connection is not a socket the poller can watch, the
// writer waits in the connection's Read instead (pump.waitConn).

// parking is a detached stream's way of waiting without a goroutine. A
// nil *parking is a stream that cannot park; its methods do nothing.
type parking struct {
	raw syscall.RawConn // the socket's (under TLS, if any)
	// tls, for a TLS connection: the client's bytes are records, for a
	// Read to judge, and some may wait in it already (looked at once).
	tls       *tls.Conn
	tlsLooked bool
	fd        int
	resume    func() // runs the writer again; on a goroutine of its own

	// The poller's name for it, and whether the poller watches it:
	// guarded by the poller's lock.
	key     uint64
	watched bool

	timer    *time.Timer // the next ping or poll; made at the first park
	state    atomic.Uint32
	woken    atomic.Bool // since the writer last looked
	readable atomic.Bool // the poller saw the client send or leave
}

const (
	parkRunning uint32 = iota
	parkParked
)

// newParking returns conn's parking, where it has one, resumed by resume.
func newParking(conn net.Conn, resume func()) *parking {
	if !parkingSupported {
		return nil
	}
	pk := &parking{resume: resume}
	if tc, ok := conn.(*tls.Conn); ok {
		conn, pk.tls = tc.NetConn(), tc
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	if raw.Control(func(fd uintptr) { pk.fd = int(fd) }) != nil {
		return nil
	}
	pk.raw = raw
	return pk
}

// running is called by the writer before it looks for news: a wake-up
// from then on is seen by it, or makes park fail.
func (pk *parking) running() {
	if pk != nil {
		pk.woken.Store(false)
	}
}

// park has the poller watch the connection, and the timer wait for
// deadline (zero: none), and gives up the writer's goroutine: when parked
// is true, a wake-up runs the writer again, and the caller must return at
// once. It is false when news came while parking: the caller runs the
// writer again itself.
func (pk *parking) park(deadline time.Time) (parked bool, err error) {
	if err := pk.watch(); err != nil {
		return false, err
	}
	if !deadline.IsZero() {
		if pk.timer == nil {
			// The timer's function has a goroutine of its own: the writer
			// runs on it.
			pk.timer = time.AfterFunc(time.Until(deadline), func() {
				if pk.unpark() {
					pk.resume()
				}
			})
		} else {
			pk.timer.Reset(time.Until(deadline))
		}
	}
	pk.state.Store(parkParked)
	// A wake-up since running either saw the state parked and resumed the
	// writer, or set woken before its look, and then is seen here.
	if pk.woken.Load() && pk.state.CompareAndSwap(parkParked, parkRunning) {
		return false, nil
	}
	return true, nil
}

// wake runs a parked writer again, or tells a running one to look again.
func (pk *parking) wake() {
	if pk != nil && pk.unpark() {
		go pk.resume()
	}
}

// unpark tells the writer to look again, and reports whether it was
// parked: then the caller must run it.
func (pk *parking) unpark() bool {
	pk.woken.Store(true)
	return pk.state.CompareAndSwap(parkParked, parkRunning)
}

// clientState is what the poller saw of a client.
type clientState uint8

const (
	clientIdle clientState = iota // nothing: the stream may park
	clientLeft                    // it closed the connection, or sent on a plain one (a GET has no body)
	clientSent                    // it sent bytes that only a Read can judge (TLS)
)

// client says what the poller saw of the client since the last look.
func (pk *parking) client() clientState {
	if pk.tls != nil && !pk.tlsLooked {
		// Records that crypto/tls read ahead with the request (a
		// close_notify sent with it, say) are in the Conn, not the
		// socket: a Read that may not wait finds them.
		pk.tlsLooked = true
		_ = pk.tls.SetReadDeadline(aLongTimeAgo)
		var b [1]byte
		if _, err := pk.tls.Read(b[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
			return clientLeft
		}
	}
	if !pk.readable.Swap(false) {
		return clientIdle
	}
	switch peek(pk.raw) {
	case peekNothing:
		return clientIdle
	case peekData:
		if pk.tls != nil {
			return clientSent
		}
	}
	return clientLeft
}

// unwatch stops the poller and the timer, before the connection closes.
func (pk *parking) unwatch() {
	if pk == nil {
		return
	}
	pk.forget()
	if pk.timer != nil {
		pk.timer.Stop()
	}
}

// peekResult is what a look at a socket found, without taking it.
type peekResult uint8

const (
	peekNothing peekResult = iota
	peekData
	peekClosed // EOF or an error
)
