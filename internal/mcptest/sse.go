package mcptest

import (
	"bufio"
	"io"
	"iter"
	"strconv"
	"strings"
	"testing"
)

// SSEEvent is one event of a server-sent event stream.
type SSEEvent struct {
	Event string // the event field; empty means "message"
	ID    string
	Data  string // the data lines, joined by newlines
	Retry int    // the retry field in milliseconds; 0 when absent
}

// SSEReader reads the events of a server-sent event stream, one at a time.
type SSEReader struct {
	r *bufio.Reader
}

// NewSSEReader reads events from r, typically a response body.
func NewSSEReader(r io.Reader) *SSEReader {
	return &SSEReader{r: bufio.NewReader(r)}
}

// Next returns the next event that has a field. Comments (keep-alive pings)
// and blank blocks are skipped. At the end of the stream it returns io.EOF,
// or the error that broke it; an event cut off before its blank line is
// dropped, as a browser would drop it.
func (r *SSEReader) Next() (SSEEvent, error) {
	var ev SSEEvent
	var data []string
	seen := false
	for {
		// A line may be longer than any buffer size: a large tool result
		// is one data line.
		line, err := r.r.ReadString('\n')
		if err != nil {
			return SSEEvent{}, err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if line == "" {
			if seen {
				ev.Data = strings.Join(data, "\n")
				return ev, nil
			}
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "": // a comment
			continue
		case "event":
			ev.Event = value
		case "id":
			ev.ID = value
		case "data":
			data = append(data, value)
		case "retry":
			ms, err := strconv.Atoi(value)
			if err != nil || ms < 0 {
				continue // not a number of milliseconds: ignored
			}
			ev.Retry = ms
		default: // the spec says to ignore unknown fields
			continue
		}
		seen = true
	}
}

// MustNext returns the next event, and fails the test if the stream ends
// or breaks first.
func (r *SSEReader) MustNext(t testing.TB) SSEEvent {
	t.Helper()
	ev, err := r.Next()
	if err != nil {
		t.Fatalf("reading the SSE stream: %v", err)
	}
	return ev
}

// Events yields the events until the stream ends or breaks, for callers to
// whom both mean there is no more to read.
func (r *SSEReader) Events() iter.Seq[SSEEvent] {
	return func(yield func(SSEEvent) bool) {
		for {
			ev, err := r.Next()
			if err != nil || !yield(ev) {
				return
			}
		}
	}
}
