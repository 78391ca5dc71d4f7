package placement

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/supervisor"
)

// Isolated gives each session a child of its own, taken from warm
// spares started ahead of demand. A child is never reused: a session that
// ends stops its child, and another spare starts.
type Isolated struct {
	sup    *supervisor.Supervisor
	cfg    Config
	logger *zap.Logger

	mu       sync.Mutex
	idle     []*supervisor.Child
	spawning int // spares being started, at most spareSpawns
	started  bool
	closed   bool
	failures failures
	stop     chan struct{}
	// spareReady is closed and replaced whenever a spare becomes ready.
	spareReady chan struct{}
	owned      sync.WaitGroup // spare starters and watchers, the checker, stops
}

func NewIsolated(sup *supervisor.Supervisor, cfg Config, logger *zap.Logger) *Isolated {
	p := &Isolated{sup: sup, cfg: cfg, logger: logger, stop: make(chan struct{}), spareReady: make(chan struct{})}
	sup.OnFull(p.reclaimSpare)
	sup.OnFreed(func() {
		p.mu.Lock()
		p.refillLocked()
		p.mu.Unlock()
	})
	return p
}

func (p *Isolated) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	p.refillLocked()
	if p.cfg.HealthCheck > 0 {
		p.owned.Add(1)
		go p.checkSpares()
	}
}

// Acquire hands out a warm spare, or starts a child when there is none,
// waiting for room (and asking the other placements to give up idle
// children) up to AcquireTimeout; a spare that becomes ready meanwhile
// ends the wait.
func (p *Isolated) Acquire(ctx context.Context, req Request) (Lease, error) {
	deadline, cancel := context.WithTimeout(ctx, p.cfg.AcquireTimeout)
	defer cancel()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		p.started = true
		for len(p.idle) > 0 {
			c := p.idle[len(p.idle)-1] // the newest: the oldest is next to be checked
			p.idle = p.idle[:len(p.idle)-1]
			if c.Exited() {
				continue
			}
			c.SetRole(supervisor.RoleIsolated)
			p.failures.reset() // it stayed up until needed
			p.refillLocked()
			p.mu.Unlock()
			return p.lease(c, req), nil
		}
		spareReady := p.spareReady
		p.mu.Unlock()
		waitCtx, stopWait := context.WithCancel(deadline)
		go func() { // ends with the wait, at the latest
			select {
			case <-spareReady:
				stopWait()
			case <-waitCtx.Done():
			}
		}()
		c, err := p.sup.Start(waitCtx, supervisor.RoleIsolated, true, 0)
		stopWait()
		switch {
		case err == nil:
			p.mu.Lock()
			p.failures.reset()
			p.refillLocked()
			p.mu.Unlock()
			return p.lease(c, req), nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case deadline.Err() != nil:
			return nil, ErrPoolExhausted
		case errors.Is(err, context.Canceled):
			continue // a spare became ready: take it
		}
		p.failures.noteStart(err, p.logger)
		return nil, err
	}
}

func (p *Isolated) lease(c *supervisor.Child, req Request) Lease {
	l := ownChild{c}
	req.Bind(l)
	c.Attach(req.Deliver, req.Oversize, req.Exited)
	return l
}

// ownChild is the lease of an isolated session: messages go to the child
// unchanged, and the child is stopped when the session ends.
type ownChild struct{ c *supervisor.Child }

func (o ownChild) Send(msg []byte, _ *jsonrpc.Envelope) error { return o.c.Send(msg) }
func (o ownChild) Release()                                   { o.c.Stop() }
func (o ownChild) Pid() int                                   { return o.c.Pid() }
func (o ownChild) Started() time.Time                         { return o.c.Started() }
func (o ownChild) Shared() bool                               { return false }
func (o ownChild) ExitReason() string                         { return o.c.ExitReason() }

// reclaimSpare stops the oldest warm spare, so that a waiting session or
// request gets its room.
func (p *Isolated) reclaimSpare() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) == 0 {
		return false
	}
	c := p.idle[0]
	p.idle = p.idle[1:]
	p.owned.Go(c.Stop)
	return true
}

func (p *Isolated) Close() {
	p.mu.Lock()
	if !p.closed {
		close(p.stop)
	}
	p.closed = true
	for _, c := range p.idle {
		p.owned.Go(c.Stop)
	}
	p.idle = nil
	p.mu.Unlock()
	p.owned.Wait()
}

func (p *Isolated) Ready() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

func (p *Isolated) LastError() error { return p.failures.lastError() }

// spareSpawns is how many spares start at once: half the cores. A burst
// of sessions takes many spares at once, and starting all their
// replacements together would take the CPU from those very sessions (64
// sessions opened at once on 2 cores waited 310 ms at the median while 64
// children started; 46 ms with this bound, measured by mcp-bench).
var spareSpawns = max(runtime.GOMAXPROCS(0)/2, 1)

// refillLocked starts spares until MinIdle are idle or starting, at most
// spareSpawns at a time; each one that is ready starts the next.
func (p *Isolated) refillLocked() {
	if !p.started || p.closed {
		return
	}
	for len(p.idle)+p.spawning < p.cfg.MinIdle && p.spawning < spareSpawns {
		p.spawning++
		p.owned.Add(1)
		go p.startSpare(p.failures.backoff())
	}
}

// startSpare starts a child and makes it a spare once it answers a ping: a
// spare is ready, not merely started, so a session that takes it does not
// wait for the server to load (a Node server takes a few hundred ms). A
// spare takes room only when nobody waits for it.
func (p *Isolated) startSpare(delay time.Duration) {
	defer p.owned.Done()
	c, err := startAfter(p.sup, p.stop, delay, supervisor.RoleSpare, 0)
	if errors.Is(err, ErrPoolClosed) {
		p.mu.Lock()
		p.spawning--
		p.mu.Unlock()
		return
	}
	if err != nil {
		p.failures.noteStart(err, p.logger)
	} else if err = p.ping(c, p.cfg.StartTimeout); err != nil {
		c.Kill()
		p.logger.Error("new MCP server did not answer a ping", zap.Int("pid", c.Pid()), zap.Error(err))
		p.failures.fail(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.spawning--
	switch {
	case errors.Is(err, ErrPoolExhausted) || errors.Is(err, ErrPoolClosed):
		// No room: the next freed room refills.
	case err != nil:
		p.refillLocked()
	case p.closed:
		p.owned.Go(c.Stop)
	default:
		p.addSpareLocked(c)
		p.refillLocked()
		p.owned.Add(1)
		go p.watchSpare(c)
	}
}

// addSpareLocked makes a ready child a spare, and tells those waiting:
// sessions here, and requests waiting for room that it could give up.
func (p *Isolated) addSpareLocked(c *supervisor.Child) {
	p.idle = append(p.idle, c)
	close(p.spareReady)
	p.spareReady = make(chan struct{})
	p.sup.Poke()
}

// ping pings a spare; Close cuts it short by killing the child, so that
// it does not wait out the timeout.
func (p *Isolated) ping(c *supervisor.Child, timeout time.Duration) error {
	pinged := make(chan struct{})
	defer close(pinged)
	p.owned.Go(func() {
		select {
		case <-p.stop:
			c.Kill()
		case <-pinged:
		}
	})
	return c.Ping(timeout)
}

// watchSpare drops a spare that exits while idle.
func (p *Isolated) watchSpare(c *supervisor.Child) {
	defer p.owned.Done()
	select {
	case <-c.Done():
	case <-p.stop:
		return // close stops the spares
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, have := range p.idle {
		if have == c {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			p.logger.Warn("idle MCP server exited", zap.Int("pid", c.Pid()), zap.Error(c.ExitErr()))
			p.failures.fail(c.ExitError())
			p.refillLocked()
			return
		}
	}
}

// checkSpares pings the warm spares, one at a time, every HealthCheck, and
// replaces those that do not answer.
func (p *Isolated) checkSpares() {
	defer p.owned.Done()
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
			c := p.idle[0] // the oldest; acquire takes the newest
			p.idle = p.idle[1:]
			p.spawning++ // out for a check: refill must not replace it
			p.mu.Unlock()
			err := p.ping(c, p.cfg.HealthCheckTimeout)
			p.mu.Lock()
			p.spawning--
			if err == nil && !p.closed {
				p.addSpareLocked(c)
				p.mu.Unlock()
				continue
			}
			if err != nil {
				p.failures.setLast(err)
				p.logger.Warn("warm spare failed its health check; replacing it", zap.Int("pid", c.Pid()), zap.Error(err))
			}
			p.mu.Unlock()
			c.Kill() // its room frees, and the supervisor's OnFreed refills
		}
	}
}

// CheckInterval is how often to look for what outlived timeout.
func CheckInterval(timeout time.Duration) time.Duration {
	return min(max(timeout/4, 10*time.Millisecond), time.Minute)
}
