package jsonrpc

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// DefaultMaxMessageSize is the largest JSON-RPC message the bridge passes
// in either direction unless configured otherwise.
const DefaultMaxMessageSize = 16 << 20

// OversizePrefixSize is how much of an oversize line is kept, so that the id of
// a response that was too large can still be found and answered.
const OversizePrefixSize = 4 << 10

// ErrMessageTooLarge reports a line longer than the configured maximum. The
// line is consumed; the reader stays usable.
var ErrMessageTooLarge = errors.New("message exceeds the maximum size")

// LineReader splits a child's stdout into newline-delimited messages with a
// size limit. It reads through a fixed buffer and only grows a message
// buffer for lines that do not fit in it.
type LineReader struct {
	r      *bufio.Reader
	max    int
	long   []byte   // a line too long for the read buffer, kept between lines
	pieces [][]byte // the rest of a line longer than longKeep
	size   int      // bytes of the line read so far
	prefix []byte
}

// longKeep is how much of a long line goes into the reused buffer. Beyond
// it, the line is gathered in pieces and joined once at its end: a huge
// line then costs about twice its size, where a doubling buffer and its
// copy would cost four times.
const longKeep = 1 << 20

// add appends a chunk of the current line.
func (lr *LineReader) add(chunk []byte) {
	lr.size += len(chunk)
	if len(lr.pieces) == 0 && len(lr.long)+len(chunk) <= longKeep {
		lr.long = append(lr.long, chunk...)
		return
	}
	if n := len(lr.pieces); n > 0 && cap(lr.pieces[n-1])-len(lr.pieces[n-1]) >= len(chunk) {
		lr.pieces[n-1] = append(lr.pieces[n-1], chunk...)
		return
	}
	lr.pieces = append(lr.pieces, append(make([]byte, 0, max(longKeep, len(chunk))), chunk...))
}

// take returns the line gathered so far, in a new slice with room for a
// newline, and starts the next.
func (lr *LineReader) take() []byte {
	line := make([]byte, 0, lr.size+1)
	line = append(line, lr.long...)
	for _, p := range lr.pieces {
		line = append(line, p...)
	}
	lr.reset()
	return line
}

// reset starts a new line, letting go of the pieces of the last one (an
// oversize line's too, which are not taken).
func (lr *LineReader) reset() {
	clear(lr.pieces)
	lr.long, lr.pieces, lr.size = lr.long[:0], lr.pieces[:0], 0
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

// Max is the longest line the reader passes.
func (lr *LineReader) Max() int { return lr.max }

func (lr *LineReader) readLine() ([]byte, error) {
	lr.reset()
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
			if lr.size+len(chunk) > lr.max {
				tooLarge = true
				lr.prefix = append(lr.prefix[:0], lr.long[:min(len(lr.long), OversizePrefixSize)]...)
				if room := OversizePrefixSize - len(lr.prefix); room > 0 {
					lr.prefix = append(lr.prefix, chunk[:min(len(chunk), room)]...)
				}
				lr.reset()
			} else if err == nil && lr.size == 0 {
				// The common case: the whole line sat in the buffer.
				return bytes.Clone(chunk), nil
			} else {
				lr.add(chunk)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if tooLarge {
			return nil, ErrMessageTooLarge
		}
		return lr.take(), nil
	}
}
