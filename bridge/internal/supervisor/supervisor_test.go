package supervisor

import (
	"context"
	"errors"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/child"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

func TestMain(m *testing.M) { mcptest.Main(m) }

// countingObserver counts starts and exits by role.
type countingObserver struct {
	started, exited, crashed, hung [numRoles]atomic.Int32
}

func (o *countingObserver) ChildHung(role string) { o.hung[roleOf(role)].Add(1) }

func (o *countingObserver) ChildStarted(role string) { o.started[roleOf(role)].Add(1) }
func (o *countingObserver) ChildExited(role string, crashed bool) {
	o.exited[roleOf(role)].Add(1)
	if crashed {
		o.crashed[roleOf(role)].Add(1)
	}
}

func roleOf(name string) Role {
	for r, n := range roleNames {
		if n == name {
			return Role(r)
		}
	}
	panic(name)
}

func newTestSupervisor(t *testing.T, max int, timeout time.Duration) (*Supervisor, *countingObserver, string) {
	exe := mcptest.TestChild(t)
	obs := &countingObserver{}
	s := New(Config{Process: child.Config{Argv: []string{exe}}, MaxProcesses: max, AcquireTimeout: timeout}, mcptest.Logger(t), obs)
	return s, obs, exe
}

// TestSupervisorBudget: the cap holds across roles; a caller that waits
// gets ErrBusy after AcquireTimeout, or the room of a child that exits;
// a caller that does not wait is refused at once.
func TestSupervisorBudget(t *testing.T) {
	s, obs, exe := newTestSupervisor(t, 2, 200*time.Millisecond)
	defer s.Close()
	a, err := s.Start(t.Context(), RoleIsolated, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(t.Context(), RoleStateless, true, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(t.Context(), RoleSpare, false, 0); !errors.Is(err, ErrBusy) {
		t.Errorf("a spare beyond the cap: %v, want ErrBusy at once", err)
	}
	start := time.Now()
	if _, err := s.Start(t.Context(), RoleProbe, true, 0); !errors.Is(err, ErrBusy) {
		t.Errorf("a probe beyond the cap: %v, want ErrBusy", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("refused after %v, before AcquireTimeout", d)
	}
	if n := len(mcptest.Processes(exe)); n != 2 {
		t.Errorf("%d children running with a cap of 2", n)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Start(ctx, RoleProbe, true, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("with its context ended: %v, want context.Canceled", err)
	}

	// A waiter gets the room of a child that exits on its own.
	done := make(chan error, 1)
	go func() {
		_, err := s.Start(context.Background(), RoleShared, true, 0)
		done <- err
	}()
	mcptest.WaitFor(t, 5*time.Second, "the waiter to wait", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.waiting == 1
	})
	if err := syscall.Kill(a.Pid(), syscall.SIGKILL); err != nil { // as an operator would: a crash
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiter after a child exited: %v", err)
	}
	if got := obs.crashed[RoleIsolated].Load(); got != 1 {
		t.Errorf("crashes counted %d, want 1", got)
	}
	if c := s.Counts(); c.Crashes != 1 || c.Running() != 2 || c.ByRole[RoleShared] != 1 {
		t.Errorf("counts %+v, want 2 running, one shared, one crash", c)
	}
}

// TestSupervisorReclaim: a waiter asks the placements to give up an idle
// child, and gets its room.
func TestSupervisorReclaim(t *testing.T) {
	s, _, _ := newTestSupervisor(t, 1, 5*time.Second)
	defer s.Close()
	spare, err := s.Start(t.Context(), RoleSpare, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int32
	s.OnFull(func() bool {
		asked.Add(1)
		go spare.Stop()
		return true
	})
	c, err := s.Start(t.Context(), RoleStateless, true, 0)
	if err != nil {
		t.Fatalf("after reclaiming the spare: %v", err)
	}
	if asked.Load() != 1 {
		t.Errorf("reclaim asked %d times, want once", asked.Load())
	}
	if !spare.Exited() || c.Role() != RoleStateless {
		t.Error("the spare still runs, or the new child has the wrong role")
	}
}

// TestSupervisorClose: Close stops every child, whatever its role, and
// returns once all are reaped and its goroutines ended; then nothing starts.
func TestSupervisorClose(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	s, obs, exe := newTestSupervisor(t, 0, time.Second)
	for _, r := range Roles() {
		if _, err := s.Start(t.Context(), r, true, 0); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if pids := mcptest.Processes(exe); len(pids) != 0 {
		t.Errorf("children %v left after Close returned", pids)
	}
	for _, r := range Roles() {
		if obs.exited[r].Load() != 1 || obs.crashed[r].Load() != 0 {
			t.Errorf("%s: %d exits, %d crashes, want one exit and no crash", r, obs.exited[r].Load(), obs.crashed[r].Load())
		}
	}
	if _, err := s.Start(t.Context(), RoleIsolated, true, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v, want ErrClosed", err)
	}
}
