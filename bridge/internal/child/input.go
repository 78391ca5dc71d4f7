package child

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ErrInputClosed is returned for a message to a child whose stdin is
// closed: it is stopping or has exited.
var ErrInputClosed = errors.New("the MCP server's input is closed")

// ErrInputFull is returned for a message to a child that has not read
// what was queued for it before, up to max_message_size.
var ErrInputFull = errors.New("the MCP server is not reading its input")

// input is a child's stdin. One goroutine writes it from a queue bounded
// in bytes, so that no caller ever blocks on a child that stops reading
// (and so holds no lock across that I/O): the queue fills and Send fails,
// and the write that stalls shows in stalledFor for the liveness check.
// A message that finds nothing queued nor being written is written by
// its sender, where the pipe takes it at once (see nowWriter), which
// spares a wake-up of the writer per message; the rest is queued.
type input struct {
	f     *os.File
	now   *nowWriter // writes for senders; nil where pipes block
	limit int        // queued bytes beyond which Send fails

	mu      sync.Mutex
	queue   [][]byte
	pending int  // bytes queued or being written
	closing bool // close after what is queued
	busy    bool // a write is under way, by the writer or by a sender
	err     error
	wake    chan struct{} // capacity 1: the writer has work or must close

	writingSince atomic.Int64  // unix nanos when the write under way began; 0 when none
	done         chan struct{} // closed when the writer has closed f and ended
}

func newInput(f *os.File, limit int) *input {
	in := &input{f: f, limit: limit, wake: make(chan struct{}, 1), done: make(chan struct{})}
	in.now = newNowWriter(f)
	go in.write()
	return in
}

// send queues msg for the child. A message alone in the queue is always
// taken, whatever its size, so that any message within max_message_size
// gets through to a child that reads.
func (in *input) send(msg []byte) error {
	in.mu.Lock()
	switch {
	case in.err != nil:
		err := in.err
		in.mu.Unlock()
		return err
	case in.closing:
		in.mu.Unlock()
		return ErrInputClosed
	case in.pending > 0 && in.pending+len(msg) > in.limit:
		pending := in.pending
		in.mu.Unlock()
		return fmt.Errorf("%w (%d bytes wait for it)", ErrInputFull, pending)
	}
	in.pending += len(msg)
	if in.busy || len(in.queue) > 0 || in.now == nil {
		in.queue = append(in.queue, msg)
		in.mu.Unlock()
		in.signal()
		return nil
	}
	in.busy = true
	in.mu.Unlock()
	n, err := in.now.write(msg)
	in.mu.Lock()
	in.busy = false
	in.pending -= n
	switch {
	case err != nil:
		// As if the writer had failed: it ends, closing stdin.
		in.err = fmt.Errorf("writing to the MCP server: %w", err)
		in.queue, in.pending = nil, 0
	case n < len(msg):
		// The pipe is full: the writer waits for the child, and what came
		// meanwhile follows the rest of this message.
		in.queue = append([][]byte{msg[n:]}, in.queue...)
	}
	wake := in.err != nil || in.closing || len(in.queue) > 0
	in.mu.Unlock()
	if wake {
		in.signal()
	}
	return nil
}

func (in *input) signal() {
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// close closes stdin once what is queued has been written.
func (in *input) close() {
	in.mu.Lock()
	in.closing = true
	in.mu.Unlock()
	in.signal()
}

// abort closes stdin now: a write blocked on a child that does not read
// fails at once.
func (in *input) abort() {
	in.close()
	_ = in.f.Close()
}

// stalledFor is how long the write under way has been blocked; zero when
// none is.
func (in *input) stalledFor(now time.Time) time.Duration {
	since := in.writingSince.Load()
	if since == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, since))
}

// write is the writer: it ends, closing stdin, when asked to close and the
// queue is empty, or at the first write error.
func (in *input) write() {
	defer close(in.done)
	defer in.f.Close()
	for {
		in.mu.Lock()
		var batch [][]byte
		if !in.busy {
			batch, in.queue = in.queue, nil
			in.busy = len(batch) > 0
		}
		closing, idle, failed := in.closing, !in.busy, in.err != nil
		in.mu.Unlock()
		if failed && idle {
			return // a sender's write failed
		}
		if len(batch) == 0 {
			if closing && idle {
				return
			}
			<-in.wake
			continue
		}
		in.writingSince.Store(time.Now().UnixNano())
		var err error
		n := 0
		for _, msg := range batch {
			if _, err = in.f.Write(msg); err != nil {
				break
			}
			n += len(msg)
		}
		in.writingSince.Store(0)
		in.mu.Lock()
		in.busy = false
		in.pending -= n
		if err != nil {
			in.err = fmt.Errorf("writing to the MCP server: %w", err)
			in.queue, in.pending = nil, 0
		}
		in.mu.Unlock()
		if err != nil {
			return
		}
	}
}
