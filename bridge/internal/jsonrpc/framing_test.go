package jsonrpc

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"
)

// chunkReader returns at most n bytes per Read, so that lines, line endings
// and multi-byte characters are split across reads at every offset.
type chunkReader struct {
	r io.Reader
	n int
}

func (c chunkReader) Read(p []byte) (int, error) {
	return c.r.Read(p[:min(len(p), c.n)])
}

// readAll reads lines until an error, recording ErrMessageTooLarge as a line
// "<too large: prefix>" so that a table can say where it happened.
func readAll(t *testing.T, lr *LineReader) []string {
	t.Helper()
	var got []string
	for {
		line, err := lr.Next()
		switch {
		case err == nil:
			got = append(got, string(line))
		case errors.Is(err, ErrMessageTooLarge):
			got = append(got, "<too large: "+string(lr.OversizePrefix())+">")
		case errors.Is(err, io.EOF):
			return got
		default:
			t.Fatalf("Next: %v", err)
		}
	}
}

func TestLineReader(t *testing.T) {
	const max = 32
	long := strings.Repeat("x", 100<<10) // longer than the 64 KiB read buffer
	for _, tc := range []struct {
		name  string
		input string
		max   int
		want  []string
	}{
		{"lines", "{\"a\":1}\n{\"b\":2}\n", max, []string{`{"a":1}`, `{"b":2}`}},
		{"CRLF endings are trimmed", "one\r\ntwo\r\n", max, []string{"one", "two"}},
		{"only the line ending's CR is trimmed, not inner ones", "a\rb\r\n", max, []string{"a\rb"}},
		{"empty and blank lines are skipped", "\n\none\n\r\n \t \n\ntwo\n\n", max, []string{"one", "two"}},
		{"last line without newline still counts", "one\ntwo", max, []string{"one", "two"}},
		{"single line without newline", "only", max, []string{"only"}},
		{"empty input gives nothing", "", max, nil},
		{"only blank lines give nothing", "\n\r\n  \n", max, nil},
		{"multi-byte UTF-8 is kept whole", "héllo wörld €𝄞\n日本語\n", max, []string{"héllo wörld €𝄞", "日本語"}},
		{"a line exactly at the limit passes", strings.Repeat("a", max) + "\nok\n", max, []string{strings.Repeat("a", max), "ok"}},
		{"a line exactly at the limit without newline passes", strings.Repeat("a", max), max, []string{strings.Repeat("a", max)}},
		// One byte over: refused, its start kept, and the next line is fine.
		{"a line one byte over the limit is refused, the next one reads", strings.Repeat("b", max+1) + "\nnext\n", max,
			[]string{"<too large: " + strings.Repeat("b", max+1) + ">", "next"}},
		{"an oversize last line without newline is refused", "first\n" + strings.Repeat("c", max+5), max,
			[]string{"first", "<too large: " + strings.Repeat("c", max+5) + ">"}},
		{"two oversize lines in a row each refused", strings.Repeat("d", 40) + "\n" + strings.Repeat("e", 50) + "\nf\n", max,
			[]string{"<too large: " + strings.Repeat("d", 40) + ">", "<too large: " + strings.Repeat("e", 50) + ">", "f"}},
		{"lines longer than the read buffer are joined", long + "\n" + long + "x\n", 1 << 20, []string{long, long + "x"}},
		{"a long line at the limit passes", long + "\nz\n", len(long), []string{long, "z"}},
		// Ending exactly at a read-buffer boundary, at EOF without newline:
		// the last read brings no bytes, only EOF.
		{"an oversize last line of exactly two read buffers is refused", "first\n" + strings.Repeat("g", 128<<10), 1000,
			[]string{"first", "<too large: " + strings.Repeat("g", OversizePrefixSize) + ">"}},
		{"a last line of exactly two read buffers passes", strings.Repeat("g", 128<<10), 1 << 20,
			[]string{strings.Repeat("g", 128<<10)}},
		// The kept prefix is capped, so that a huge message costs nothing
		// beyond its first bytes.
		{"a long oversize line keeps only a capped prefix", long + "\nz\n", 1000,
			[]string{"<too large: " + long[:OversizePrefixSize] + ">", "z"}},
	} {
		readers := []struct {
			name string
			wrap func(io.Reader) io.Reader
		}{
			{"whole", func(r io.Reader) io.Reader { return r }},
			{"OneByteReader", iotest.OneByteReader},
			{"HalfReader", iotest.HalfReader},
			{"DataErrReader", iotest.DataErrReader}, // EOF with the last data
			{"3-byte chunks", func(r io.Reader) io.Reader { return chunkReader{r, 3} }},
			{"7-byte chunks", func(r io.Reader) io.Reader { return chunkReader{r, 7} }},
		}
		for _, rd := range readers {
			t.Run(tc.name+"/"+rd.name, func(t *testing.T) {
				if len(tc.input) > 1<<16 && rd.name == "OneByteReader" && testing.Short() {
					t.Skip("slow in -short")
				}
				lr := NewLineReader(rd.wrap(strings.NewReader(tc.input)), tc.max)
				got := readAll(t, lr)
				if !slices.Equal(got, tc.want) {
					t.Errorf("got %d lines %.200q,\nwant %d lines %.200q", len(got), got, len(tc.want), tc.want)
				}
				for _, line := range got {
					if !utf8.ValidString(line) {
						t.Errorf("line %.80q is not valid UTF-8: a character was split", line)
					}
				}
			})
		}
	}
}

// TestLineReaderOwnsLines checks that each returned line is the caller's:
// reading on does not overwrite it.
func TestLineReaderOwnsLines(t *testing.T) {
	lr := NewLineReader(strings.NewReader("first\nsecond\n"+strings.Repeat("y", 70<<10)+"\nlast\n"), 1<<20)
	var lines [][]byte
	for {
		line, err := lr.Next()
		if err != nil {
			break
		}
		lines = append(lines, line)
	}
	if len(lines) != 4 || string(lines[0]) != "first" || string(lines[1]) != "second" ||
		len(lines[2]) != 70<<10 || string(lines[3]) != "last" {
		t.Errorf("lines changed after being returned: %.40q", lines)
	}
}

// TestLineReaderErrors checks that a read error other than EOF reaches the
// caller, after the complete lines before it.
func TestLineReaderErrors(t *testing.T) {
	broken := errors.New("pipe broke")
	r := io.MultiReader(strings.NewReader("whole\npart"), iotest.ErrReader(broken))
	lr := NewLineReader(r, 0)
	line, err := lr.Next()
	if err != nil || string(line) != "whole" {
		t.Fatalf("Next = %q, %v; want \"whole\"", line, err)
	}
	if _, err := lr.Next(); !errors.Is(err, broken) {
		t.Errorf("Next after the error = %v, want %v", err, broken)
	}
}

// TestLineReaderDefaultMax checks that a limit of zero or less means
// DefaultMaxMessageSize.
func TestLineReaderDefaultMax(t *testing.T) {
	for _, max := range []int{0, -1} {
		if lr := NewLineReader(strings.NewReader(""), max); lr.max != DefaultMaxMessageSize {
			t.Errorf("NewLineReader(max=%d).max = %d, want %d", max, lr.max, DefaultMaxMessageSize)
		}
	}
}

// loopReader serves data over and over, never EOF.
type loopReader struct {
	data []byte
	off  int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.data[l.off:])
	l.off = (l.off + n) % len(l.data)
	return n, nil
}

func BenchmarkLineReader(b *testing.B) {
	for _, bc := range []struct {
		name string
		size int
	}{
		{"200B", 200},
		// One byte more than the read buffer once the newline is counted:
		// the path that joins chunks.
		{"64KiB", 64 << 10},
	} {
		b.Run(bc.name, func(b *testing.B) {
			msg := append(bytes.Repeat([]byte("m"), bc.size), '\n')
			lr := NewLineReader(&loopReader{data: bytes.Repeat(msg, 16)}, 0)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				line, err := lr.Next()
				if err != nil || len(line) != bc.size {
					b.Fatalf("Next = %d bytes, %v", len(line), err)
				}
			}
		})
	}
}
