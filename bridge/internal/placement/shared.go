package placement

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/mux"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/supervisor"
)

// Shared places clients on the least-loaded of a few long-lived
// children, each behind a multiplexer, starting another when all are
// full. Shared sessions use one (role shared); stateless requests use
// another (role stateless), never the sessions' children: a server that
// has seen a stateless request may refuse a later initialize (the
// go-sdk's does).
type Shared struct {
	sup    *supervisor.Supervisor
	role   supervisor.Role
	cfg    Config
	logger *zap.Logger

	mu       sync.Mutex
	muxes    []*mux.Mux
	starting int
	freed    supervisor.Notifier // wakes whoever waits for room
	started  bool
	closed   bool
	failures failures
	stop     chan struct{}
	owned    sync.WaitGroup // the reaper, refills, retirements
}

// NewShared returns a placement of children in role. Only the
// sessions' one keeps MinProcesses running.
func NewShared(sup *supervisor.Supervisor, role supervisor.Role, cfg Config, logger *zap.Logger) *Shared {
	if role != supervisor.RoleShared {
		cfg.MinProcesses = 0
	}
	p := &Shared{sup: sup, role: role, cfg: cfg, logger: logger, stop: make(chan struct{})}
	sup.OnFull(p.reclaimIdle)
	sup.OnFreed(func() {
		p.mu.Lock()
		p.notifyLocked()
		p.refillLocked(0)
		p.mu.Unlock()
	})
	return p
}

func (p *Shared) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	p.refillLocked(0)
	p.owned.Add(1)
	go p.reapIdle()
}

// Acquire places a client on a child: the least-loaded one with room, or
// a new one, or the first to have room within AcquireTimeout. A server
// that crash-loops is refused by the supervisor's breaker, at once.
func (p *Shared) Acquire(ctx context.Context, req Request) (Lease, error) {
	p.Start()
	// The deadline is made once the request must start a child or wait:
	// attaching to a child with room, as nearly every request does, needs
	// none (and a stateless request comes here each time).
	var deadline context.Context
	cancel := context.CancelFunc(func() {})
	defer func() { cancel() }()
	setDeadline := func() {
		if deadline == nil {
			deadline, cancel = context.WithTimeout(ctx, p.cfg.AcquireTimeout)
		}
	}
	busy := func() error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return ErrPoolExhausted
	}
	bind := func(mem *mux.Member) { req.Bind(mem) }
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		var best *mux.Mux
		bestLoad := p.cfg.SessionsPerProcess
		for _, m := range p.muxes {
			if load, open := m.Load(req.Group); open && load < bestLoad {
				best, bestLoad = m, load
			}
		}
		if best != nil {
			if mem := best.Attach(req.Group, req.Deliver, req.Exited, bind); mem != nil {
				p.mu.Unlock()
				return mem, nil
			}
		}
		if p.starting == 0 {
			p.starting++
			p.mu.Unlock()
			setDeadline()
			c, err := p.sup.Start(deadline, p.role, true, 0)
			p.mu.Lock()
			p.starting--
			if err != nil {
				p.notifyLocked()
				p.mu.Unlock()
				if deadline.Err() != nil {
					return nil, busy()
				}
				p.failures.noteStart(err, p.logger)
				return nil, err
			}
			m := p.addLocked(c)
			// Attach at once: another waiter could reclaim a child that
			// carries nobody yet.
			if m != nil {
				if mem := m.Attach(req.Group, req.Deliver, req.Exited, bind); mem != nil {
					p.mu.Unlock()
					return mem, nil
				}
			}
			p.mu.Unlock()
			continue
		}
		freed := p.freed.WaitLocked()
		p.mu.Unlock()
		setDeadline()
		select {
		case <-freed:
		case <-deadline.Done():
			return nil, busy()
		}
	}
}

// addLocked puts a started child behind a multiplexer, unless the
// placement closed meanwhile.
func (p *Shared) addLocked(c *supervisor.Child) *mux.Mux {
	defer p.notifyLocked()
	if p.closed {
		p.owned.Go(c.Stop)
		return nil
	}
	m := mux.New(c, p.logger, p.onChildExit, p.released)
	p.muxes = append(p.muxes, m)
	return m
}

// released is called when a client leaves a child: there is room again,
// and the child may carry nobody now, so that a request waiting for room
// in the budget can have it reclaimed.
func (p *Shared) released() {
	p.mu.Lock()
	p.notifyLocked()
	p.mu.Unlock()
	p.sup.Poke()
}

// reclaimIdle retires a child that carries nobody, so that a waiting
// session or request gets its room.
func (p *Shared) reclaimIdle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, m := range p.muxes {
		if _, empty := m.IdleSince(); empty {
			p.muxes = append(p.muxes[:i], p.muxes[i+1:]...)
			p.owned.Go(m.Retire)
			return true
		}
	}
	return false
}

func (p *Shared) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.owned.Wait()
		return
	}
	p.closed = true
	close(p.stop)
	for _, m := range p.muxes {
		p.owned.Go(m.Retire)
	}
	p.muxes = nil
	p.notifyLocked()
	p.mu.Unlock()
	p.owned.Wait()
}

func (p *Shared) Ready() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, m := range p.muxes {
		if _, empty := m.IdleSince(); empty {
			n++
		}
	}
	return n
}

// Load counts the placement's children: idle ones carry nobody, busy
// ones carry clients.
func (p *Shared) Load() (idle, busy int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.muxes {
		if load, _ := m.Load(""); load > 0 {
			busy++
		} else {
			idle++
		}
	}
	return idle, busy
}

func (p *Shared) LastError() error { return p.failures.lastError() }

func (p *Shared) notifyLocked() {
	p.freed.NotifyLocked()
}

// refillLocked starts children until MinProcesses run or are starting;
// restarts counts the crashes that the first of them replaces.
func (p *Shared) refillLocked(restarts int) {
	for p.started && !p.closed && len(p.muxes)+p.starting < p.cfg.MinProcesses && p.failures.count() < 10 {
		p.starting++
		p.owned.Add(1)
		go p.startChild(p.failures.backoff(), restarts)
		restarts = 0
	}
}

// startChild starts one of the MinProcesses children, if there is room.
func (p *Shared) startChild(delay time.Duration, restarts int) {
	defer p.owned.Done()
	c, err := startAfter(p.sup, p.stop, delay, p.role, restarts)
	if err != nil {
		p.failures.noteStart(err, p.logger)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.starting--
	if err != nil {
		p.notifyLocked()
		if !errors.Is(err, ErrPoolExhausted) && !errors.Is(err, ErrPoolClosed) {
			p.refillLocked(restarts)
		}
		return
	}
	p.addLocked(c)
}

// onChildExit drops a child that exited and starts a replacement, later
// each time it keeps crashing.
func (p *Shared) onChildExit(m *mux.Mux) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, have := range p.muxes {
		if have == m {
			p.muxes = append(p.muxes[:i], p.muxes[i+1:]...)
			break
		}
	}
	if p.closed || m.Retired() {
		return
	}
	c := m.Child().(*supervisor.Child)
	if time.Since(c.Started()) < 10*time.Second {
		p.failures.fail(nil) // its status comes once it is reaped
	} else {
		p.failures.reset()
	}
	p.logger.Warn("shared MCP server exited", zap.Int("pid", c.Pid()), zap.Error(c.ExitErr()))
	p.owned.Go(func() { // the child may not be reaped yet: record its status once it is
		<-c.Done()
		p.failures.setLast(c.ExitError())
	})
	p.notifyLocked()
	p.refillLocked(c.Restarts() + 1)
}

// reapIdle retires children beyond MinProcesses that carried nobody for
// ProcessIdleTimeout.
func (p *Shared) reapIdle() {
	defer p.owned.Done()
	t := time.NewTicker(CheckInterval(p.cfg.ProcessIdleTimeout))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			p.mu.Lock()
			for i := 0; i < len(p.muxes) && len(p.muxes) > p.cfg.MinProcesses; {
				m := p.muxes[i]
				if since, empty := m.IdleSince(); empty && now.Sub(since) > p.cfg.ProcessIdleTimeout {
					p.muxes = append(p.muxes[:i], p.muxes[i+1:]...)
					p.owned.Go(m.Retire)
					continue
				}
				i++
			}
			p.mu.Unlock()
		}
	}
}
