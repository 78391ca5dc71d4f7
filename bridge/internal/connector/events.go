package connector

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// event is one Server-Sent Event.
type event struct {
	id    string
	hasID bool // the event set its id (a priming event has no data)
	name  string
	data  []byte // the data lines joined by "\n", owned by the event
	retry time.Duration
	// tooLarge is set when the data exceeded the limit: data is then nil
	// and prefix holds its start, enough to find a response's id.
	tooLarge bool
	prefix   []byte
}

// eventReader reads Server-Sent Events with a limit on an event's data.
type eventReader struct {
	br   *bufio.Reader
	max  int
	long []byte // a line longer than the read buffer, gathered
}

func newEventReader(r io.Reader, max int) *eventReader {
	return &eventReader{br: bufio.NewReaderSize(r, 64<<10), max: max}
}

// lineSlack is how much a data line may exceed the limit on an event's
// data: its field name.
const lineSlack = 16

// keepLong is the largest gathering buffer kept between lines; a larger
// one, grown by one large message, is let go.
const keepLong = 1 << 20

// next returns the next event that set a field, skipping comments (the
// keepalives). An event cut off by the end of the stream is not one: it
// returns io.EOF, or the error that ended the stream.
func (er *eventReader) next() (event, error) {
	var ev event
	seen := false
	for {
		line, truncated, err := er.readLine()
		if err != nil {
			return event{}, err
		}
		if len(line) == 0 {
			if seen {
				return ev, nil
			}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			value = bytes.TrimPrefix(value, []byte(" "))
		}
		seen = true
		switch string(field) {
		case "data":
			er.appendData(&ev, value, truncated)
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				ev.id, ev.hasID = string(value), true
			}
		case "event":
			ev.name = string(value)
		case "retry":
			if ms, err := strconv.Atoi(string(value)); err == nil && ms >= 0 {
				ev.retry = time.Duration(ms) * time.Millisecond
			}
		}
	}
}

// appendData adds a data line to the event, in a buffer of its own.
func (er *eventReader) appendData(ev *event, value []byte, truncated bool) {
	if ev.tooLarge {
		return
	}
	size := len(value)
	if ev.data != nil {
		size += len(ev.data) + 1
	}
	if truncated || size > er.max {
		ev.tooLarge = true
		ev.prefix = append(ev.data[:min(len(ev.data), jsonrpc.OversizePrefixSize):min(len(ev.data), jsonrpc.OversizePrefixSize)], value[:min(len(value), jsonrpc.OversizePrefixSize)]...)
		ev.data = nil
		return
	}
	if ev.data == nil {
		ev.data = append(make([]byte, 0, len(value)), value...)
		return
	}
	ev.data = append(append(ev.data, '\n'), value...)
}

// readLine returns the next line without its line ending. The line is
// valid until the next call. A line longer than the limit is cut to its
// start, and truncated is set.
func (er *eventReader) readLine() (line []byte, truncated bool, err error) {
	if cap(er.long) > keepLong {
		er.long = nil
	}
	er.long = er.long[:0]
	for {
		chunk, err := er.br.ReadSlice('\n')
		full := errors.Is(err, bufio.ErrBufferFull)
		switch {
		case err == nil:
			chunk = chunk[:len(chunk)-1]
		case full:
		default:
			// A line cut off by the end of the stream: the event it
			// belonged to is incomplete.
			return nil, false, err
		}
		switch {
		case truncated:
		case len(er.long)+len(chunk) > er.max+lineSlack:
			truncated = true
			er.long = append(er.long, chunk[:min(len(chunk), max(0, jsonrpc.OversizePrefixSize+lineSlack-len(er.long)))]...)
		case !full && len(er.long) == 0:
			// The common case: the whole line sat in the read buffer.
			return bytes.TrimSuffix(chunk, []byte("\r")), false, nil
		default:
			er.long = append(er.long, chunk...)
		}
		if !full {
			return bytes.TrimSuffix(er.long, []byte("\r")), truncated, nil
		}
	}
}
