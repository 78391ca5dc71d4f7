package placement

import (
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/child"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/supervisor"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// TestSharedCrashLoopBacksOff: a shared child that exits as soon as it
// starts counts as a failure each time, so that its restarts back off
// (100 ms doubling) and stop after ten, instead of starting it again every
// 100 ms for ever.
func TestSharedCrashLoopBacksOff(t *testing.T) {
	process := child.Config{Argv: []string{"sh", "-c", "exit 3"}}
	sup := supervisor.New(supervisor.Config{Process: process, AcquireTimeout: time.Second}, mcptest.Logger(t), nopObserver{})
	p := NewShared(sup, supervisor.RoleShared, Config{MinProcesses: 1, SessionsPerProcess: 1, AcquireTimeout: time.Second, ProcessIdleTimeout: time.Minute}, mcptest.Logger(t))
	defer func() {
		p.Close()
		sup.Close()
	}()
	p.Start()
	mcptest.WaitFor(t, 10*time.Second, "three failed starts in a row", func() bool { return p.failures.count() >= 3 })
	if p.failures.backoff() < 400*time.Millisecond {
		t.Errorf("backoff %v after %d failures, want it to grow", p.failures.backoff(), p.failures.count())
	}
	if err := p.LastError(); err == nil {
		t.Error("no last error for a child that exits at once")
	}
}
