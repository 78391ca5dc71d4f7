package placement

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/supervisor"
	"go.uber.org/zap"
)

// failures records how starting children goes: the last failure, for
// health reports, and how many failed in a row, for backoff. It has a lock
// of its own, a leaf: placements use it with or without theirs.
type failures struct {
	mu     sync.Mutex
	inARow int
	last   error
}

// fail records a failure: a child that would not start, answer its first
// ping or stay up; err, if known yet, is what went wrong.
func (f *failures) fail(err error) {
	f.mu.Lock()
	f.inARow++
	if err != nil {
		f.last = err
	}
	f.mu.Unlock()
}

// noteStart records the error of a start, and logs it; a full budget, a
// closed placement or a client that left is no failure of the command.
func (f *failures) noteStart(err error, logger *zap.Logger) {
	var crashLoop *supervisor.CrashLoopError
	if errors.Is(err, ErrPoolExhausted) || errors.Is(err, ErrPoolClosed) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &crashLoop) {
		return
	}
	f.fail(err)
	logger.Error("starting MCP server", zap.Error(err))
}

// setLast records an error without counting a failure in a row: a spare
// that failed a health check was up and running.
func (f *failures) setLast(err error) {
	f.mu.Lock()
	f.last = err
	f.mu.Unlock()
}

// reset notes a child that started and stayed up.
func (f *failures) reset() {
	f.mu.Lock()
	f.inARow = 0
	f.mu.Unlock()
}

func (f *failures) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inARow
}

func (f *failures) lastError() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// startAfter starts a child of what a placement keeps ready (a spare, a
// minimum shared child) after delay, and again after each crash-loop
// backoff, until it starts, fails otherwise, or stop closes
// (ErrPoolClosed).
func startAfter(sup *supervisor.Supervisor, stop <-chan struct{}, delay time.Duration, role supervisor.Role, restarts int) (*supervisor.Child, error) {
	for {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			return nil, ErrPoolClosed
		}
		c, err := sup.Start(context.Background(), role, false, restarts)
		var crashLoop *supervisor.CrashLoopError
		if !errors.As(err, &crashLoop) {
			return c, err
		}
		delay = crashLoop.RetryAfter
	}
}

// backoff is how long to wait before the next start: nothing while starts
// succeed, then doubling from 100ms to 30s, so that a broken command does
// not spin.
func (f *failures) backoff() time.Duration {
	n := f.count()
	if n == 0 {
		return 0
	}
	return min(100*time.Millisecond<<min(n-1, 9), 30*time.Second)
}
