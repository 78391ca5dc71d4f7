package bridge

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// DefaultMaxMessageSize is the largest JSON-RPC message the bridge passes
// in either direction unless configured otherwise.
const DefaultMaxMessageSize = 16 << 20

// oversizePrefix is how much of an oversize line is kept, so that the id of
// a response that was too large can still be found and answered.
const oversizePrefix = 4 << 10

// ErrMessageTooLarge reports a line longer than the configured maximum. The
// line is consumed; the reader stays usable.
var ErrMessageTooLarge = errors.New("message exceeds the maximum size")

// LineReader splits a child's stdout into newline-delimited messages with a
// size limit. It reads through a fixed buffer and only grows a message
// buffer for lines that do not fit in it.
type LineReader struct {
	r      *bufio.Reader
	max    int
	long   []byte
	prefix []byte
}

// NewLineReader returns a LineReader over r that refuses lines longer than
// max bytes.
func NewLineReader(r io.Reader, max int) *LineReader {
	if max <= 0 {
		max = DefaultMaxMessageSize
	}
	return &LineReader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// Next returns the next non-empty line without its line ending, in a new
// slice the caller owns. For a line over the limit it returns
// ErrMessageTooLarge, and OversizePrefix then holds its first bytes.
func (lr *LineReader) Next() ([]byte, error) {
	for {
		line, err := lr.readLine()
		if err != nil {
			return nil, err
		}
		line = bytes.TrimRight(line, "\r")
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		return line, nil
	}
}

// OversizePrefix returns the start of the last line refused as too large.
func (lr *LineReader) OversizePrefix() []byte { return lr.prefix }

func (lr *LineReader) readLine() ([]byte, error) {
	lr.long = lr.long[:0]
	tooLarge := false
	for {
		chunk, err := lr.r.ReadSlice('\n')
		switch {
		case err == nil:
			chunk = chunk[:len(chunk)-1]
		case errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF) && (len(chunk) > 0 || len(lr.long) > 0 || tooLarge):
			// A last line without a newline still counts, even when an
			// oversize one ended exactly at the end of the buffer.
		default:
			return nil, err
		}
		if !tooLarge {
			if len(lr.long)+len(chunk) > lr.max {
				tooLarge = true
				lr.prefix = append(lr.prefix[:0], lr.long[:min(len(lr.long), oversizePrefix)]...)
				if room := oversizePrefix - len(lr.prefix); room > 0 {
					lr.prefix = append(lr.prefix, chunk[:min(len(chunk), room)]...)
				}
				lr.long = lr.long[:0]
			} else if err == nil && len(lr.long) == 0 {
				// The common case: the whole line sat in the buffer.
				return bytes.Clone(chunk), nil
			} else {
				lr.long = append(lr.long, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if tooLarge {
			return nil, ErrMessageTooLarge
		}
		line := bytes.Clone(lr.long)
		if cap(lr.long) > 1<<20 {
			lr.long = nil // do not keep a huge buffer for one huge message
		}
		return line, nil
	}
}
