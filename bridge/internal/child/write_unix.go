//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package child

import (
	"errors"
	"os"
	"syscall"
)

// nowWriter writes what a pipe takes of a message at once, without
// waiting: Go keeps pipes non-blocking here, and a full one takes nothing
// (EAGAIN); the writer goroutine, which waits for the child, takes the
// rest. One serves an input, whose busy flag keeps its uses apart, so
// that a message costs no allocation.
type nowWriter struct {
	raw  syscall.RawConn
	do   func(fd uintptr) bool // the write, made once
	msg  []byte
	n    int
	werr error
}

func newNowWriter(f *os.File) *nowWriter {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	w := &nowWriter{raw: raw}
	w.do = func(fd uintptr) bool {
		w.n, w.werr = syscall.Write(int(fd), w.msg)
		if errors.Is(w.werr, syscall.EAGAIN) || errors.Is(w.werr, syscall.EINTR) {
			w.n, w.werr = 0, nil
		}
		return true // never wait for the poller here
	}
	return w
}

// write returns how much of msg the pipe took, and a write error.
func (w *nowWriter) write(msg []byte) (int, error) {
	w.msg = msg
	err := w.raw.Write(w.do)
	n, werr := max(w.n, 0), w.werr
	w.msg, w.werr = nil, nil
	if werr == nil {
		werr = err
	}
	return n, werr
}
