package placement

import (
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// TestPoolHealthCheck: a spare that answers pings is kept; one that does
// not (sleep never reads its stdin) is replaced, again and again.
func TestPoolHealthCheck(t *testing.T) {
	t.Run("answering spare is kept", func(t *testing.T) {
		exe := mcptest.EverythingServer(t)
		pool := newTestPool(t, testConfig{MinIdle: new(1), HealthCheck: 30 * time.Millisecond}, exe)
		pool.Start()
		defer func() { pool.Close(); mcptest.WaitNoProcesses(t, exe, 5*time.Second) }()
		first := waitSpare(t, pool)
		time.Sleep(300 * time.Millisecond) // several checks
		child, err := pool.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Release(child)
		if child.Pid() != first {
			t.Errorf("the spare was replaced (pid %d, now %d) although it answered", first, child.Pid())
		}
		// It was pinged before being handed out, and still serves a session.
		got := pool.msgs
		child.Send([]byte(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`))
		select {
		case m := <-got:
			if jsonrpc.Member(m, "result") == nil {
				t.Errorf("initialize after pings: %s", m)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no answer to initialize")
		}
	})
	t.Run("spare that falls silent is replaced", func(t *testing.T) {
		// It answers the ping that makes it a spare, and the first check.
		exe := mcptest.Build(t, mcptest.TestChildPackage)
		pool := newTestPool(t, testConfig{MinIdle: new(1), HealthCheck: 50 * time.Millisecond, HealthCheckTimeout: 100 * time.Millisecond},
			exe, "-mute-after", "2")
		pool.Start()
		defer func() { pool.Close(); mcptest.WaitNoProcesses(t, exe, 5*time.Second) }()
		first := waitSpare(t, pool)
		deadline := time.Now().Add(5 * time.Second)
		for {
			if pids := pool.idlePids(); len(pids) == 1 && pids[0] != first {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the silent spare was never replaced")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := pool.Stats().LastError; err == nil {
			t.Error("no last error recorded for the failed check")
		}
	})
	t.Run("child that never answers is no spare", func(t *testing.T) {
		// sleep never reads its stdin, like a server stuck loading.
		pool := newTestPool(t, testConfig{MinIdle: new(1), StartTimeout: 100 * time.Millisecond}, "sleep", "1000")
		pool.Start()
		defer pool.Close()
		deadline := time.Now().Add(5 * time.Second)
		for pool.Stats().LastError == nil {
			if time.Now().After(deadline) {
				t.Fatal("no error recorded for the child that did not answer")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if pids := pool.idlePids(); len(pids) != 0 {
			t.Errorf("a child that never answered is a spare: %v", pids)
		}
	})
}

func waitSpare(t *testing.T, p *testPool) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if pids := p.idlePids(); len(pids) == 1 {
			return pids[0]
		}
		if time.Now().After(deadline) {
			t.Fatal("no warm spare")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
