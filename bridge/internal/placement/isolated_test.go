package placement

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/child"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/supervisor"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// testPool is an isolated placement over a supervisor of its own, with
// the calls the tests make.
type testPool struct {
	p    *Isolated
	sup  *supervisor.Supervisor
	msgs chan []byte // what acquired children send
}

// PoolStats is a snapshot of a testPool.
type PoolStats struct {
	Idle, Starting, Busy int
	LastError            error
}

// testConfig is what the tests set of a pool; newTestPool fills in the
// rest as the bridge's defaults would.
type testConfig struct {
	MinIdle                                                       *int
	MaxProcesses                                                  int
	AcquireTimeout, HealthCheck, HealthCheckTimeout, StartTimeout time.Duration
}

func newTestPool(t *testing.T, tc testConfig, argv ...string) *testPool {
	t.Helper()
	cfg := Config{MinIdle: 1, AcquireTimeout: tc.AcquireTimeout, HealthCheck: tc.HealthCheck, HealthCheckTimeout: tc.HealthCheckTimeout, StartTimeout: tc.StartTimeout}
	if tc.MinIdle != nil {
		cfg.MinIdle = *tc.MinIdle
	}
	for d, def := range map[*time.Duration]time.Duration{&cfg.AcquireTimeout: 10 * time.Second, &cfg.HealthCheckTimeout: 5 * time.Second, &cfg.StartTimeout: 30 * time.Second} {
		if *d == 0 {
			*d = def
		}
	}
	process := child.Config{Argv: argv, StdinCloseTimeout: 2 * time.Second, TermTimeout: 3 * time.Second}
	sup := supervisor.New(supervisor.Config{Process: process, MaxProcesses: tc.MaxProcesses, AcquireTimeout: cfg.AcquireTimeout}, mcptest.Logger(t), nopObserver{})
	return &testPool{p: NewIsolated(sup, cfg, mcptest.Logger(t)), sup: sup, msgs: make(chan []byte, 100)}
}

// nopObserver observes nothing.
type nopObserver struct{}

func (nopObserver) ChildStarted(string)      {}
func (nopObserver) ChildExited(string, bool) {}
func (nopObserver) ChildHung(string)         {}

func (tp *testPool) Start() { tp.p.Start() }

func (tp *testPool) Close() {
	tp.p.Close()
	tp.sup.Close()
}

func (tp *testPool) Acquire(ctx context.Context) (*supervisor.Child, error) {
	var got Lease
	_, err := tp.p.Acquire(ctx, Request{
		Deliver:  func(m []byte) { tp.msgs <- m },
		Oversize: func([]byte) {},
		Exited:   func() {},
		Bind:     func(l Lease) { got = l },
	})
	if err != nil {
		return nil, err
	}
	return got.(ownChild).c, nil
}

func (tp *testPool) Release(c *supervisor.Child) { c.Stop() }

func (tp *testPool) Stats() PoolStats {
	tp.p.mu.Lock()
	st := PoolStats{Idle: len(tp.p.idle), Starting: tp.p.spawning, LastError: tp.p.failures.lastError()}
	tp.p.mu.Unlock()
	st.Busy = tp.sup.Counts().ByRole[supervisor.RoleIsolated]
	return st
}

func (tp *testPool) idlePids() []int {
	tp.p.mu.Lock()
	defer tp.p.mu.Unlock()
	var pids []int
	for _, c := range tp.p.idle {
		pids = append(pids, c.Pid())
	}
	return pids
}

// startPool starts a pool of test children and closes it at cleanup.
// Children the test acquired must be released by the test.
func startPool(t *testing.T, cfg testConfig) (*testPool, string) {
	t.Helper()
	exe := mcptest.TestChild(t)
	pool := newTestPool(t, cfg, exe)
	pool.Start()
	t.Cleanup(pool.Close)
	return pool, exe
}

// waitStats waits until the pool's counts satisfy ok.
func waitStats(t *testing.T, pool *testPool, what string, ok func(PoolStats) bool) PoolStats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := pool.Stats()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool never reached %s: %+v", what, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func idleSpares(n int) func(PoolStats) bool {
	return func(st PoolStats) bool { return st.Idle == n && st.Starting == 0 }
}

// TestPoolWarmSpares checks that Start really starts MinIdle children before
// anyone asks, that Acquire hands out one of them rather than a cold start,
// and that the pool starts another spare in its place.
func TestPoolWarmSpares(t *testing.T) {
	for _, minIdle := range []int{1, 3} {
		t.Run("MinIdle="+strconv.Itoa(minIdle), func(t *testing.T) {
			pool, exe := startPool(t, testConfig{MinIdle: new(minIdle)})
			waitStats(t, pool, "MinIdle idle spares", idleSpares(minIdle))
			spares := mcptest.Processes(exe)
			if len(spares) != minIdle {
				t.Fatalf("%d test children running before any Acquire, want %d", len(spares), minIdle)
			}

			before := time.Now()
			child, err := pool.Acquire(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Release(child)
			if !child.Started().Before(before) {
				t.Errorf("acquired child started at %v, after Acquire was called at %v: a cold start", child.Started(), before)
			}
			if !slices.Contains(spares, child.Pid()) {
				t.Errorf("acquired child %d is not one of the spares %v", child.Pid(), spares)
			}

			st := waitStats(t, pool, "a refilled spare", idleSpares(minIdle))
			if st.Busy != 1 {
				t.Errorf("Busy = %d, want 1", st.Busy)
			}
			if n := len(mcptest.Processes(exe)); n != minIdle+1 {
				t.Errorf("%d test children running, want %d spares and the acquired one", n, minIdle+1)
			}
		})
	}
}

// TestPoolMinIdleZero checks that with no spares Acquire starts a child on
// demand and nothing runs before.
func TestPoolMinIdleZero(t *testing.T) {
	pool, exe := startPool(t, testConfig{MinIdle: new(0)})
	time.Sleep(100 * time.Millisecond)
	if n := len(mcptest.Processes(exe)); n != 0 {
		t.Fatalf("%d children running with MinIdle 0", n)
	}
	child, err := pool.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !mcptest.Running(exe, child.Pid()) {
		t.Error("acquired child is not running")
	}
	pool.Release(child)
	if mcptest.Running(exe, child.Pid()) {
		t.Error("released child is still running")
	}
}

// TestPoolMaxProcesses checks the cap: with MaxProcesses=1 and the only
// child handed out, a second Acquire waits, and gets ErrPoolExhausted after
// AcquireTimeout, its context's error when that ends first, or a child when
// the first one is released during the wait.
func TestPoolMaxProcesses(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		release bool          // release the first child during the wait
		ctxEnd  time.Duration // cancel the second Acquire's context after this
		wantErr error         // nil: the second Acquire gets a child
		minWait time.Duration
	}{
		{"times out with ErrPoolExhausted", timeout, false, 0, ErrPoolExhausted, timeout},
		{"context ends first", 10 * time.Second, false, timeout, context.Canceled, timeout},
		{"a release during the wait frees a place", 10 * time.Second, true, 0, nil, timeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool, exe := startPool(t, testConfig{MinIdle: new(1), MaxProcesses: 1, AcquireTimeout: tc.timeout})
			first, err := pool.Acquire(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			released := false
			defer func() {
				if !released {
					pool.Release(first)
				}
			}()
			// The cap leaves no room for a spare beside the busy child.
			time.Sleep(50 * time.Millisecond)
			if st := pool.Stats(); st.Idle+st.Starting != 0 || st.Busy != 1 {
				t.Errorf("with the only child busy: %+v, want no spare", st)
			}

			ctx := t.Context()
			if tc.ctxEnd > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				time.AfterFunc(tc.ctxEnd, cancel)
			}
			if tc.release {
				time.AfterFunc(timeout, func() { pool.Release(first) })
				released = true
			}
			start := time.Now()
			second, err := pool.Acquire(ctx)
			waited := time.Since(start)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("second Acquire: %v, want %v", err, tc.wantErr)
			}
			if waited < tc.minWait {
				t.Errorf("second Acquire returned after %v, want it to wait at least %v", waited, tc.minWait)
			}
			if second != nil {
				defer pool.Release(second)
				if second.Pid() == first.Pid() {
					t.Error("the released child was handed out again")
				}
				if mcptest.Running(exe, first.Pid()) {
					t.Error("the released child still runs")
				}
				if n := len(mcptest.Processes(exe)); n > 1 {
					t.Errorf("%d children running with MaxProcesses 1", n)
				}
			}
		})
	}
}

// TestPoolClose checks that Close stops the idle spares and that the pool
// refuses work afterwards.
func TestPoolClose(t *testing.T) {
	pool, exe := startPool(t, testConfig{MinIdle: new(2)})
	waitStats(t, pool, "2 idle spares", idleSpares(2))
	if n := len(mcptest.Processes(exe)); n != 2 {
		t.Fatalf("%d children running, want 2 spares", n)
	}
	pool.Close()
	if pids := mcptest.Processes(exe); len(pids) != 0 {
		t.Errorf("spares %v still running after Close returned", pids)
	}
	if _, err := pool.Acquire(t.Context()); !errors.Is(err, ErrPoolClosed) {
		t.Errorf("Acquire after Close: %v, want ErrPoolClosed", err)
	}
	pool.Start() // must not start anything
	time.Sleep(50 * time.Millisecond)
	if n := len(mcptest.Processes(exe)); n != 0 {
		t.Errorf("%d children running after Start on a closed pool", n)
	}
}

// TestPoolReplacesDeadSpare checks that a spare that dies while idle is
// dropped, its exit recorded, and a new spare started in its place; Acquire
// never hands out the dead one.
func TestPoolReplacesDeadSpare(t *testing.T) {
	pool, exe := startPool(t, testConfig{MinIdle: new(1)})
	waitStats(t, pool, "1 idle spare", idleSpares(1))
	pids := mcptest.Processes(exe)
	if len(pids) != 1 {
		t.Fatalf("children %v, want one spare", pids)
	}
	dead := pids[0]
	if err := syscall.Kill(dead, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st := waitStats(t, pool, "a replacement spare", func(st PoolStats) bool {
		now := mcptest.Processes(exe)
		return st.Idle == 1 && len(now) == 1 && now[0] != dead
	})
	if st.LastError == nil {
		t.Error("LastError is nil after a spare died")
	}
	child, err := pool.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Release(child)
	if child.Pid() == dead || child.Exited() {
		t.Errorf("Acquire handed out the dead spare %d", dead)
	}
}
