package bridge

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/child"
	"go.uber.org/zap"
)

// PoolConfig sizes a pool of children.
type PoolConfig struct {
	// MinIdle is how many started children wait, unused, for the next
	// session, so that a session never waits for a cold start.
	MinIdle int
	// MaxProcesses caps the children alive at once, idle ones included;
	// zero means no cap.
	MaxProcesses int
	// AcquireTimeout is how long a new session waits for a child when the
	// cap is reached.
	AcquireTimeout time.Duration
	// HealthCheck, when set, pings each warm spare this often and replaces
	// one that does not answer within HealthCheckTimeout.
	HealthCheck time.Duration
	// HealthCheckTimeout is how long a spare may take to answer a ping;
	// zero means DefaultHealthCheckTimeout.
	HealthCheckTimeout time.Duration
	// StartTimeout is how long a new spare may take to answer its first
	// ping, which it must before a session gets it; zero means
	// DefaultStartTimeout.
	StartTimeout time.Duration
}

// Pool defaults.
const (
	DefaultMinIdle            = 1
	DefaultHealthCheckTimeout = 5 * time.Second
	DefaultStartTimeout       = 30 * time.Second
	DefaultAcquireTimeout     = 10 * time.Second
)

// ErrPoolExhausted is returned when no child became free in time.
var ErrPoolExhausted = errors.New("all MCP server processes are busy")

// ErrPoolClosed is returned once the pool is shutting down.
var ErrPoolClosed = errors.New("the MCP server pool is shut down")

// Pool starts stdio children ahead of demand and hands each out once. A
// child is never reused: a session that ends releases its child, which is
// stopped, and the pool starts another spare.
type Pool struct {
	cfg    PoolConfig
	proc   ProcessConfig
	logger *zap.Logger

	mu       sync.Mutex
	idle     []*child.Process
	starting int
	spawning int           // spares being started, at most spareSpawns
	busy     int           // children handed out and not yet stopped
	freed    chan struct{} // closed and replaced whenever capacity frees up
	closed   bool
	started  bool
	lastErr  error
	failures int // spawn failures in a row, for backoff
	stop     chan struct{}
	checker  sync.WaitGroup
}

// NewPool returns a pool that starts nothing until Start or Acquire.
func NewPool(cfg PoolConfig, proc ProcessConfig, logger *zap.Logger) *Pool {
	if cfg.MinIdle < 0 {
		cfg.MinIdle = 0
	}
	if cfg.AcquireTimeout <= 0 {
		cfg.AcquireTimeout = DefaultAcquireTimeout
	}
	if cfg.HealthCheckTimeout <= 0 {
		cfg.HealthCheckTimeout = DefaultHealthCheckTimeout
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	return &Pool{cfg: cfg, proc: proc, logger: logger, freed: make(chan struct{}), stop: make(chan struct{})}
}

// Start begins keeping MinIdle warm spares. It is idempotent.
func (p *Pool) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	p.refillLocked()
	if p.cfg.HealthCheck > 0 {
		p.checker.Add(1)
		go p.checkSpares()
	}
}

// checkSpares pings the warm spares, one at a time, every HealthCheck, and
// replaces those that do not answer.
func (p *Pool) checkSpares() {
	defer p.checker.Done()
	t := time.NewTicker(p.cfg.HealthCheck)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		p.mu.Lock()
		spares := len(p.idle)
		p.mu.Unlock()
		for range spares {
			p.mu.Lock()
			if len(p.idle) == 0 || p.closed {
				p.mu.Unlock()
				break
			}
			child := p.idle[0] // the oldest; Acquire takes the newest
			p.idle = p.idle[1:]
			p.starting++ // out for a check: still counts against the cap
			p.mu.Unlock()
			err := child.Ping(p.cfg.HealthCheckTimeout)
			p.mu.Lock()
			p.starting--
			if err == nil && !p.closed {
				p.idle = append(p.idle, child)
				p.notifyLocked()
				p.mu.Unlock()
				continue
			}
			if err != nil {
				p.lastErr = err
				p.logger.Warn("warm spare failed its health check; replacing it", zap.Int("pid", child.Pid()), zap.Error(err))
			}
			p.refillLocked()
			p.mu.Unlock()
			child.Kill()
		}
	}
}

// Acquire takes a started child, starting one if none is idle and the cap
// allows, or waiting up to AcquireTimeout for capacity.
func (p *Pool) Acquire(ctx context.Context) (*child.Process, error) {
	timer := time.NewTimer(p.cfg.AcquireTimeout)
	defer timer.Stop()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		p.started = true
		for len(p.idle) > 0 {
			child := p.idle[len(p.idle)-1]
			p.idle = p.idle[:len(p.idle)-1]
			if child.Exited() {
				continue
			}
			p.busy++
			p.failures = 0 // it stayed up until needed
			p.refillLocked()
			p.mu.Unlock()
			return child, nil
		}
		if p.hasRoomLocked() {
			p.busy++
			p.mu.Unlock()
			child, err := p.spawn()
			if err != nil {
				p.mu.Lock()
				p.busy--
				p.notifyLocked()
				p.mu.Unlock()
				return nil, err
			}
			p.mu.Lock()
			p.failures = 0
			p.refillLocked()
			p.mu.Unlock()
			return child, nil
		}
		freed := p.freed
		p.mu.Unlock()
		select {
		case <-freed:
		case <-timer.C:
			return nil, ErrPoolExhausted
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Release stops a child handed out by Acquire and frees its place.
func (p *Pool) Release(child *child.Process) {
	child.Stop()
	p.mu.Lock()
	p.busy--
	p.notifyLocked()
	p.refillLocked()
	p.mu.Unlock()
}

// Close stops the idle spares, refuses new work, and waits until every
// child handed out has been released (and so stopped) by its holder.
func (p *Pool) Close() {
	p.mu.Lock()
	if !p.closed {
		close(p.stop)
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.notifyLocked()
	p.mu.Unlock()
	p.checker.Wait()
	var wg sync.WaitGroup
	for _, child := range idle {
		wg.Add(1)
		go func() {
			defer wg.Done()
			child.Stop()
		}()
	}
	wg.Wait()
	for {
		p.mu.Lock()
		busy, freed := p.busy, p.freed
		p.mu.Unlock()
		if busy == 0 {
			return
		}
		<-freed
	}
}

// idleChildren returns the warm spares.
func (p *Pool) idleChildren() []*child.Process {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*child.Process(nil), p.idle...)
}

// PoolStats is a snapshot of the pool.
type PoolStats struct {
	Idle, Starting, Busy int
	LastError            error
}

// Stats returns the pool's counts.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return PoolStats{Idle: len(p.idle), Starting: p.starting, Busy: p.busy, LastError: p.lastErr}
}

func (p *Pool) hasRoomLocked() bool {
	return p.cfg.MaxProcesses <= 0 || len(p.idle)+p.starting+p.busy < p.cfg.MaxProcesses
}

func (p *Pool) notifyLocked() {
	close(p.freed)
	p.freed = make(chan struct{})
}

// spareSpawns is how many spares start at once: half the cores. A burst
// of sessions takes many spares at once, and starting all their
// replacements together would take the CPU from those very sessions (64
// sessions opened at once on 2 cores waited 310 ms at the median while 64
// children started; 46 ms with this bound, measured by mcp-bench).
var spareSpawns = max(runtime.GOMAXPROCS(0)/2, 1)

// refillLocked starts spares until MinIdle are idle or starting, at most
// spareSpawns at a time; each one that is ready starts the next.
func (p *Pool) refillLocked() {
	if !p.started || p.closed {
		return
	}
	for len(p.idle)+p.starting < p.cfg.MinIdle && p.spawning < spareSpawns && p.hasRoomLocked() {
		p.starting++
		p.spawning++
		go p.startSpare(spawnBackoff(p.failures))
	}
}

// spawnBackoff is how long to wait before the next spawn after failures
// in a row: nothing while spawns succeed, then doubling from 100ms to 30s,
// so that a broken command does not spin.
func spawnBackoff(failures int) time.Duration {
	if failures == 0 {
		return 0
	}
	return min(100*time.Millisecond<<min(failures-1, 9), 30*time.Second)
}

// janitorInterval is how often to look for what outlived timeout.
func janitorInterval(timeout time.Duration) time.Duration {
	return min(max(timeout/4, 10*time.Millisecond), time.Minute)
}

// startSpare starts a child and makes it a spare once it answers a ping: a
// spare is ready, not merely started, so a session that takes it does not
// wait for the server to load (a Node server takes a few hundred ms).
func (p *Pool) startSpare(delay time.Duration) {
	if delay > 0 {
		time.Sleep(delay)
	}
	child, err := p.spawn()
	if err == nil {
		if err = child.Ping(p.cfg.StartTimeout); err != nil {
			child.Kill()
			p.mu.Lock()
			p.failures++
			p.lastErr = err
			p.mu.Unlock()
			p.logger.Error("new MCP server did not answer a ping", zap.Int("pid", child.Pid()), zap.Error(err))
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.starting--
	p.spawning--
	if err != nil {
		p.notifyLocked()
		p.refillLocked()
		return
	}
	if p.closed {
		go child.Stop()
		return
	}
	p.idle = append(p.idle, child)
	p.notifyLocked()
	p.refillLocked()
	go p.watchSpare(child)
}

// watchSpare drops a spare that exits while idle and starts another.
func (p *Pool) watchSpare(child *child.Process) {
	<-child.Done()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, c := range p.idle {
		if c == child {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			p.logger.Warn("idle MCP server exited", zap.Int("pid", child.Pid()), zap.Error(child.ExitErr()))
			p.failures++
			p.lastErr = exitError(child)
			p.notifyLocked()
			p.refillLocked()
			return
		}
	}
}

func (p *Pool) spawn() (*child.Process, error) {
	child, err := child.Start(p.proc, p.logger)
	p.mu.Lock()
	if err != nil {
		p.failures++
		p.lastErr = err
		p.logger.Error("starting MCP server", zap.Error(err))
	}
	p.mu.Unlock()
	return child, err
}

func exitError(child interface{ ExitErr() error }) error {
	if err := child.ExitErr(); err != nil {
		return err
	}
	return errors.New("MCP server exited")
}
