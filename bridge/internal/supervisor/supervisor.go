// Package supervisor starts, counts, watches and ends every child process
// of one backend, within one budget: the warm spares, the children of
// isolated and shared sessions, those serving stateless requests and the
// probe's. Placements (isolated, shared) decide what a child is for; the
// supervisor decides whether there is room for it and makes sure it ends.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/child"
)

// Role is what a child is for.
type Role int32

// The roles of children.
const (
	RoleSpare     Role = iota // started ahead of demand, not handed out yet
	RoleIsolated              // carries one session
	RoleShared                // carries many sessions through a multiplexer
	RoleStateless             // serves stateless (2026-07-28) requests
	RoleProbe                 // the health and era probe's
	numRoles
)

var roleNames = [numRoles]string{"spare", "isolated", "shared", "stateless", "probe"}

func (r Role) String() string { return roleNames[r] }

// Roles lists every role, for reports that show zero counts too.
func Roles() []Role { return []Role{RoleSpare, RoleIsolated, RoleShared, RoleStateless, RoleProbe} }

// Observer is told when a child starts and exits.
type Observer interface {
	ChildStarted(role string)
	// ChildExited: crashed when the bridge did not stop the child.
	ChildExited(role string, crashed bool)
	// ChildHung: the liveness check killed a child that stopped
	// answering.
	ChildHung(role string)
}

// Config is the budget and how to start a child.
type Config struct {
	Process child.Config
	// MaxProcesses caps the children alive at once, whatever their role;
	// zero means no cap. A child counts from the moment its start is
	// decided until it has been reaped.
	MaxProcesses int
	// AcquireTimeout is how long Start waits for room.
	AcquireTimeout time.Duration
	// HealthCheck, when set, is how often every child that carries
	// clients is pinged; one that says nothing at all within
	// HealthCheckTimeout, or does not read its input for as long, is
	// killed. Warm spares are their placement's to check.
	HealthCheck, HealthCheckTimeout time.Duration
}

// ErrBusy is returned when no room became free in time.
var ErrBusy = errors.New("all MCP server processes are busy")

// ErrClosed is returned once the supervisor is closed.
var ErrClosed = errors.New("the MCP server pool is shut down")

// CrashLoopError is returned while the command keeps exiting as soon as it
// starts: no child starts until RetryAfter has passed, and then one at a
// time until one stays up.
type CrashLoopError struct {
	Crashes    int           // children in a row that exited young
	RetryAfter time.Duration // until the next try
}

func (e *CrashLoopError) Error() string {
	return fmt.Sprintf("the MCP server keeps exiting as soon as it starts (%d in a row); next try in %v", e.Crashes, e.RetryAfter.Round(time.Second))
}

// The crash-loop breaker: a child that exits on its own within
// youngExitWindow of its start exited young; after breakerThreshold of
// those in a row, starts stop for a backoff that doubles from 1s to 30s.
// A child that lives past the window closes the breaker.
const (
	youngExitWindow  = 10 * time.Second
	breakerThreshold = 3
)

func breakerBackoff(crashes int) time.Duration {
	return min(time.Second<<min(crashes-breakerThreshold, 5), 30*time.Second)
}

// Child is a child process the supervisor owns. Its exit is a crash when
// it ended before the bridge asked it to (see Process.ExitedOnItsOwn), or
// when the liveness check killed it.
type Child struct {
	*child.Process
	role       atomic.Int32
	restarts   int
	live       liveness
	pingPrefix []byte
}

// Role is what the child is for now.
func (c *Child) Role() Role { return Role(c.role.Load()) }

// SetRole changes what the child is for: a spare handed to a session
// becomes isolated.
func (c *Child) SetRole(r Role) { c.role.Store(int32(r)) }

// Restarts is how many children held this one's place before it, each
// replaced after it exited on its own.
func (c *Child) Restarts() int { return c.restarts }

// ExitError says how the child ended, once it has: its exit status, or
// a plain "exited" when it exited cleanly.
func (c *Child) ExitError() error {
	if c.live.hung.Load() != nil {
		return errors.New(c.ExitReason())
	}
	if err := c.ExitErr(); err != nil {
		return err
	}
	return errors.New("MCP server exited")
}

// Supervisor owns the children of one backend.
type Supervisor struct {
	cfg    Config
	logger *zap.Logger
	obs    Observer

	mu         sync.Mutex
	children   map[*Child]struct{}
	starting   int      // starts under way: they hold room already
	waiting    int      // callers of Start waiting for room
	freed      Notifier // wakes whoever waits for room
	closed     bool
	reclaimers []func() bool
	onFreed    []func()
	crashes    int64
	hung       int64 // children the liveness check killed
	lastExit   string
	stop       chan struct{} // closed by Close
	pings      atomic.Int64
	pingPrefix []byte
	// The crash-loop breaker.
	youngExits int       // children in a row that exited young
	openUntil  time.Time // no start before this
	trying     bool      // a start past the backoff is under way
	lastStart  time.Time // of a child that may yet exit young

	// owned counts what Close waits for: starts under way and one watcher
	// per child.
	owned sync.WaitGroup
}

// New returns a supervisor that has started nothing.
func New(cfg Config, logger *zap.Logger, obs Observer) *Supervisor {
	s := &Supervisor{cfg: cfg, logger: logger, obs: obs, children: make(map[*Child]struct{}),
		stop: make(chan struct{}), pingPrefix: newPingPrefix()}
	if cfg.HealthCheck > 0 {
		s.owned.Add(1)
		go s.checkLiveness()
	}
	return s
}

// OnFull registers reclaim, which the supervisor calls, without its lock,
// when a caller waits for room: reclaim stops one idle child it holds (a
// warm spare, a shared child without sessions), without waiting, and
// reports whether it did. Its room frees once that child is reaped.
func (s *Supervisor) OnFull(reclaim func() bool) {
	s.mu.Lock()
	s.reclaimers = append(s.reclaimers, reclaim)
	s.mu.Unlock()
}

// OnFreed registers f, called without the supervisor's lock whenever a
// child has been reaped, so that placements can start what they keep
// ready.
func (s *Supervisor) OnFreed(f func()) {
	s.mu.Lock()
	s.onFreed = append(s.onFreed, f)
	s.mu.Unlock()
}

// Start starts a child in role. With wait, it waits for room up to
// AcquireTimeout or ctx, asking the placements to give up an idle child
// each time it finds none; without, it fails at once with ErrBusy when
// there is no room, or when someone is already waiting for it (what is
// kept ready never takes room from a request).
func (s *Supervisor) Start(ctx context.Context, role Role, wait bool, restarts int) (*Child, error) {
	var timer *time.Timer
	counted := false // among s.waiting
	s.mu.Lock()
	for {
		if counted {
			// Still counted until here, so that nothing that does not
			// wait takes the room between the wake-up and this check.
			s.waiting--
			counted = false
		}
		if s.closed {
			s.mu.Unlock()
			return nil, ErrClosed
		}
		if err := s.breakerLocked(); err != nil {
			s.mu.Unlock()
			return nil, err
		}
		if s.hasRoomLocked() && (wait || s.waiting == 0) {
			s.starting++
			s.owned.Add(1)
			if s.waiting > 0 && s.hasRoomLocked() {
				s.notifyLocked() // room is left: wake the next waiter
			}
			s.mu.Unlock()
			break
		}
		if !wait {
			s.mu.Unlock()
			return nil, ErrBusy
		}
		freed := s.freed.WaitLocked()
		s.waiting++
		counted = true
		s.mu.Unlock()
		// A child may have become idle since the last look.
		s.reclaim()
		if timer == nil {
			timer = time.NewTimer(s.cfg.AcquireTimeout)
			defer timer.Stop()
		}
		var err error
		select {
		case <-freed:
		case <-timer.C:
			err = ErrBusy
		case <-ctx.Done():
			err = ctx.Err()
		}
		s.mu.Lock()
		if err != nil {
			s.waiting--
			if s.hasRoomLocked() {
				s.notifyLocked() // what this waiter held back may go now
			}
			s.mu.Unlock()
			return nil, err
		}
	}

	proc, err := child.Start(s.cfg.Process, s.logger)
	s.mu.Lock()
	s.starting--
	if err != nil {
		s.trying = false // nothing started: the next start tries again
		s.notifyLocked()
		s.mu.Unlock()
		s.owned.Done()
		return nil, err
	}
	c := &Child{Process: proc, restarts: restarts, pingPrefix: s.pingPrefix}
	c.SetRole(role)
	s.children[c] = struct{}{}
	closed := s.closed
	s.mu.Unlock()
	s.obs.ChildStarted(role.String())
	go s.watch(c) // takes over the room's Add
	if closed {
		c.Kill()
		return nil, ErrClosed
	}
	return c, nil
}

// Poke wakes the callers waiting for room, to look again: a placement
// calls it when one of its children became idle, and so can be reclaimed.
func (s *Supervisor) Poke() {
	s.mu.Lock()
	s.notifyLocked()
	s.mu.Unlock()
}

// reclaim asks the placements, in turn, to give up one idle child.
func (s *Supervisor) reclaim() {
	s.mu.Lock()
	reclaimers := s.reclaimers
	s.mu.Unlock()
	for _, reclaim := range reclaimers {
		if reclaim() {
			return
		}
	}
}

// breakerLocked refuses a start while the command crash-loops: before the
// backoff ends, and past it while another start is already trying.
func (s *Supervisor) breakerLocked() error {
	if s.youngExits < breakerThreshold {
		return nil
	}
	if wait := time.Until(s.openUntil); wait > 0 {
		return &CrashLoopError{Crashes: s.youngExits, RetryAfter: wait}
	}
	if s.trying {
		if since := time.Since(s.lastStart); since < youngExitWindow {
			return &CrashLoopError{Crashes: s.youngExits, RetryAfter: youngExitWindow - since}
		}
		// The child tried last is still up past the window: closed.
		s.youngExits, s.trying = 0, false
		return nil
	}
	s.trying = true
	s.lastStart = time.Now()
	return nil
}

// noteExitLocked feeds a child's exit to the crash-loop breaker.
func (s *Supervisor) noteExitLocked(c *Child, crashed bool) {
	young := crashed && time.Since(c.Started()) < youngExitWindow
	s.trying = false
	if !young {
		if time.Since(c.Started()) >= youngExitWindow {
			s.youngExits = 0
		}
		return
	}
	s.youngExits++
	if s.youngExits >= breakerThreshold {
		s.openUntil = time.Now().Add(breakerBackoff(s.youngExits))
	}
}

// hasRoomLocked reports whether one more child fits the budget.
func (s *Supervisor) hasRoomLocked() bool {
	return s.cfg.MaxProcesses <= 0 || len(s.children)+s.starting < s.cfg.MaxProcesses
}

// watch frees a child's room once it has been reaped.
func (s *Supervisor) watch(c *Child) {
	defer s.owned.Done()
	<-c.Done()
	crashed := c.ExitedOnItsOwn() || c.live.hung.Load() != nil
	s.mu.Lock()
	delete(s.children, c)
	if crashed {
		s.crashes++
		s.lastExit = c.ExitError().Error()
	}
	s.noteExitLocked(c, crashed)
	s.notifyLocked()
	onFreed := s.onFreed
	closed := s.closed
	s.mu.Unlock()
	s.obs.ChildExited(c.Role().String(), crashed)
	if !closed {
		for _, f := range onFreed {
			f()
		}
	}
}

func (s *Supervisor) notifyLocked() {
	s.freed.NotifyLocked()
}

// Close refuses new children, stops those still running (the placements
// have stopped theirs by now; what is left is stopped here) and returns
// once every child has been reaped and every goroutine the supervisor
// started has ended.
func (s *Supervisor) Close() {
	s.mu.Lock()
	if !s.closed {
		close(s.stop)
	}
	s.closed = true
	left := make([]*Child, 0, len(s.children))
	for c := range s.children {
		left = append(left, c)
	}
	s.notifyLocked()
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range left {
		wg.Go(c.Stop)
	}
	wg.Wait()
	s.owned.Wait()
}

// ChildInfo describes a child for status reports.
type ChildInfo struct {
	Pid      int
	Role     Role
	Started  time.Time
	Restarts int
}

// Children lists the children alive now.
func (s *Supervisor) Children() []ChildInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ChildInfo, 0, len(s.children))
	for c := range s.children {
		out = append(out, ChildInfo{Pid: c.Pid(), Role: c.Role(), Started: c.Started(), Restarts: c.restarts})
	}
	return out
}

// Counts is a snapshot of the budget's use.
type Counts struct {
	ByRole   [numRoles]int
	Starting int
	Crashes  int64
	// Hung counts the children killed for not answering.
	Hung     int64
	LastExit string
	// CrashLoop, when set, is why no child starts now.
	CrashLoop *CrashLoopError
}

// Running is the number of children alive.
func (c Counts) Running() int {
	n := 0
	for _, k := range c.ByRole {
		n += k
	}
	return n
}

// Counts returns how many children there are, by role.
func (s *Supervisor) Counts() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := Counts{Starting: s.starting, Crashes: s.crashes, Hung: s.hung, LastExit: s.lastExit}
	if wait := time.Until(s.openUntil); s.youngExits >= breakerThreshold && wait > 0 {
		n.CrashLoop = &CrashLoopError{Crashes: s.youngExits, RetryAfter: wait}
	}
	for c := range s.children {
		n.ByRole[c.Role()]++
	}
	return n
}
