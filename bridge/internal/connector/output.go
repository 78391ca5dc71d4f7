package connector

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"time"
)

// outputQueue bounds the messages waiting for the client to read them:
// past it, whoever relays a message waits, and so, in the end, does the
// remote's stream.
const outputQueue = 256

// output is the one writer of the client's input: messages queue, within
// a bound, and leave one a line, in the order they were queued.
type output struct {
	w      *bufio.Writer
	queue  chan []byte
	done   chan struct{} // closed when run returns
	failed func()        // called when a write fails: the client is gone
	err    error         // the write that failed; read once done is closed
}

func newOutput(w io.Writer, failed func()) *output {
	return &output{w: bufio.NewWriterSize(w, 64<<10), queue: make(chan []byte, outputQueue), done: make(chan struct{}), failed: failed}
}

// run writes the queued messages until close, flushing whenever the
// queue runs empty: a burst leaves in few writes, a lone answer at once.
// After a failed write it keeps taking messages, so that no sender waits
// for a client that is gone.
func (o *output) run() {
	defer close(o.done)
	var err error
	for msg := range o.queue {
		if err != nil {
			continue
		}
		if _, err = o.w.Write(msg); err == nil {
			err = o.w.WriteByte('\n')
		}
		if err == nil && len(o.queue) == 0 {
			err = o.w.Flush()
		}
		if err != nil {
			o.failed()
		}
	}
	if err == nil {
		err = o.w.Flush()
	}
	o.err = err
}

// send queues msg for the client, waiting for room until ctx ends. A
// message must be one line: line breaks between JSON tokens (JSON allows
// no raw ones inside strings), as an SSE event of several data lines has,
// become spaces.
func (o *output) send(ctx context.Context, msg []byte) error {
	if bytes.IndexByte(msg, '\n') >= 0 || bytes.IndexByte(msg, '\r') >= 0 {
		// Byte by byte, not bytes.Map: that would replace invalid UTF-8.
		one := bytes.Clone(msg)
		for i, b := range one {
			if b == '\n' || b == '\r' {
				one[i] = ' '
			}
		}
		msg = one
	}
	select {
	case o.queue <- msg:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close ends the queue once every sender is done, and waits up to wait
// for the writer to write what is queued. It reports whether the writer
// is done (it is not if still stuck in a write: its client stopped
// reading), and the write that failed, if any.
func (o *output) close(wait time.Duration) (bool, error) {
	close(o.queue)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-o.done:
		return true, o.err
	case <-t.C:
		return false, nil
	}
}
