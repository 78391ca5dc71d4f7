package bridge

import (
	"context"
	"errors"
	"net"
	"os"
	"time"

	"github.com/coder/websocket"
)

// The one outbound path: every transport writes what the child sends a
// client by pumping a stream's event log into a sink. The log gives
// backpressure, replay for clients that resume, and one writer at a time;
// the sink is the wire format.

// sink is where a pump writes a stream: an SSE response or a WebSocket.
type sink interface {
	// send writes one message; id is its event id, nil for none.
	send(id, data []byte) error
	// flush sends what send buffered.
	flush() error
	// ping keeps an idle connection open.
	ping() error
}

// pumpEnd says why a pump stopped.
type pumpEnd uint8

const (
	pumpFinished pumpEnd = iota // the stream's last event was written
	pumpClosed                  // the stream closed before a last event
	pumpLeft                    // the client left, or another writer or the server took the stream away
	pumpPoll                    // the poll interval passed: the client comes back with Last-Event-ID
	pumpFailed                  // a write failed: the client is gone
	pumpParked                  // idle, parked: run it again on news (see parking)
)

// pump writes a stream's events to a sink, in order, from cursor on, as
// the stream's writer gen. Its zero options mean: events without ids, no
// hold, no keepalive, no poll.
type pump struct {
	st          *stream
	gen, cursor int
	sink        sink
	// ids, when set, gives each event its id: the session's tag, the
	// stream's number and the event's position.
	ids   bool
	idTag string
	idNum int
	// id, if set, is a buffer for the event ids (the caller's, reused).
	id []byte
	// hold gives a request's answer a moment (firstAnswerHold) to leave
	// with the headers, in one write, before anything is flushed.
	hold bool
	// keepalive is the interval of pings on an idle stream.
	keepalive time.Duration
	// poll, when set, ends the pump after this long (pumpPoll).
	poll time.Duration
	// The pump stops (pumpLeft) when any of these closes: the client left,
	// the server stops serving the stream, another writer took it.
	done, closing, replaced <-chan struct{}
	// conn, when set, is a detached stream's connection, which the pump
	// waits on (waitConn) in place of done and of its timers, or, with
	// parking, does not wait on at all: it returns pumpParked.
	conn    net.Conn
	parking *parking
	// A detached stream's deadlines, kept across runs: its next ping and
	// the end of its poll interval (zero for none, and before the first
	// run).
	nextPing, pollAt time.Time
	// before and after, if set, run around the write of each event.
	before, after func(ev event)
}

// run pumps until the stream ends, the client leaves or a write fails, or,
// with parking, until it has nothing to do: then it returns pumpParked,
// and is run again when there is news.
func (p *pump) run() pumpEnd {
	// One timer serves the hold, then the keepalive: a request's stream
	// answered within the hold, as most are, starts no other, and no
	// stream has a ticker of its own.
	holding := p.hold
	var timer *time.Timer
	var tick, poll <-chan time.Time
	switch now := time.Now(); {
	case p.conn != nil:
		if p.nextPing.IsZero() && p.pollAt.IsZero() { // the first run
			if p.keepalive > 0 {
				p.nextPing = now.Add(p.keepalive)
			}
			if p.poll > 0 {
				p.pollAt = now.Add(p.poll)
			}
		}
	case holding:
		timer = time.NewTimer(firstAnswerHold)
	case p.keepalive > 0:
		timer = time.NewTimer(p.keepalive)
	}
	if timer != nil {
		defer timer.Stop()
		tick = timer.C
	}
	if p.poll > 0 && p.conn == nil {
		t := time.NewTimer(p.poll)
		defer t.Stop()
		poll = t.C
	}
	var (
		evs             []event // reused: writing allocates nothing
		current, closed bool
	)
	// The event ids are built in one buffer, sized for the session's tag
	// and two numbers, reused for every event.
	id := p.id[:0]
	if p.ids && id == nil {
		id = make([]byte, 0, len(p.idTag)+2*20)
	}
	for {
		evs, current, closed = p.st.events(p.gen, p.cursor, evs)
		if !current {
			return pumpLeft
		}
		for _, ev := range evs {
			if p.before != nil {
				p.before(ev)
			}
			id = id[:0]
			if p.ids {
				id = appendEventID(id, p.idTag, p.idNum, ev.seq)
			}
			if p.sink.send(id, ev.data) != nil {
				return pumpFailed
			}
			p.cursor = ev.seq + 1
			p.st.written(p.cursor)
			if p.after != nil {
				p.after(ev)
			}
			if ev.last {
				return pumpFinished // the handler's return sends it
			}
		}
		if len(evs) > 0 {
			continue
		}
		if closed {
			return pumpClosed
		}
		if !holding && p.sink.flush() != nil {
			return pumpFailed
		}
		if p.conn != nil {
			if end, stop := p.waitConn(); stop {
				return end
			}
			continue
		}
		select {
		case <-p.st.wake:
		case <-tick:
			if holding {
				holding = false
			} else if p.sink.ping() != nil {
				return pumpFailed
			}
			if p.keepalive > 0 {
				timer.Reset(p.keepalive)
			} else {
				tick = nil
			}
		case <-poll:
			return pumpPoll
		case <-p.done:
			return pumpLeft
		case <-p.closing:
			return pumpLeft
		case <-p.replaced:
			return pumpLeft
		}
	}
}

// aLongTimeAgo, as a read deadline, ends a Read at once.
var aLongTimeAgo = time.Unix(1, 0)

// waitConn waits, for a detached stream, in its connection's Read: the
// stream's goroutine is then its only one, and an idle stream has no
// timer of its own, only the poller's read deadline, set to its next ping
// or poll. The Read returns when the client sends anything or leaves
// (the pump stops, as for done), at that deadline, or when the stream's
// waker (news, the stream closing or taken over) or CloseStreams pulls
// the deadline in. Whatever came before the deadline was set is seen by
// the checks after it; whatever comes later ends the Read.
//
// With parking, it does not wait at all: it looks at what the poller saw
// of the connection, sends a ping that is due, and returns pumpParked.
func (p *pump) waitConn() (pumpEnd, bool) {
	if p.parking == nil {
		_ = p.conn.SetReadDeadline(p.deadline())
	}
	select {
	case <-p.st.wake:
		return 0, false
	case <-p.closing:
		return pumpLeft, true
	case <-p.replaced:
		return pumpLeft, true
	default:
	}
	if p.parking != nil {
		switch p.parking.client() {
		case clientLeft:
			return pumpLeft, true
		case clientIdle:
			if end, stop := p.due(); stop {
				return end, true
			}
			return pumpParked, true
		}
		// The client sent bytes that only a Read can judge (TLS).
		p.stopParking()
		return 0, false
	}
	var b [1]byte // not the pump's: the pump of a request's stream stays on the stack
	if _, err := p.conn.Read(b[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
		return pumpLeft, true // a GET has no body: anything read, or EOF, means the client is done
	}
	return p.due()
}

// stopParking has a detached stream wait in Read from now on.
func (p *pump) stopParking() {
	p.parking.unwatch()
	p.parking = nil
}

// deadline is when a detached stream's next ping or poll is due; zero for
// never.
func (p *pump) deadline() time.Time {
	if !p.pollAt.IsZero() && (p.nextPing.IsZero() || p.pollAt.Before(p.nextPing)) {
		return p.pollAt
	}
	return p.nextPing
}

// due ends a detached stream's poll interval, or sends its ping, when the
// time has come.
func (p *pump) due() (pumpEnd, bool) {
	now := time.Now()
	if !p.pollAt.IsZero() && !now.Before(p.pollAt) {
		return pumpPoll, true
	}
	if !p.nextPing.IsZero() && !now.Before(p.nextPing) {
		if p.sink.ping() != nil {
			return pumpFailed, true
		}
		p.nextPing = now.Add(p.keepalive)
	}
	return 0, false
}

// send writes a message as an SSE event named sw.name ("" for the
// default, "message"): an sseWriter is a sink.
func (sw *sseWriter) send(id, data []byte) error { return sw.event(id, sw.name, data) }

// wsSink writes each message as a WebSocket text frame.
type wsSink struct {
	ctx       context.Context
	conn      *websocket.Conn
	keepalive time.Duration
}

func (s *wsSink) send(_, data []byte) error {
	return s.conn.Write(s.ctx, websocket.MessageText, data)
}

func (s *wsSink) flush() error { return nil }

// ping waits for the client's pong, for up to an interval.
func (s *wsSink) ping() error {
	ctx, cancel := context.WithTimeout(s.ctx, max(s.keepalive, time.Second))
	defer cancel()
	return s.conn.Ping(ctx)
}
