package bridge

import (
	"context"
	"sync"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/child"
	"go.uber.org/zap"
)

// SharedPoolConfig sizes a pool of shared children.
type SharedPoolConfig struct {
	// SessionsPerProcess is how many sessions one child carries at most.
	SessionsPerProcess int
	// MinProcesses children are kept running even with no session.
	MinProcesses int
	// MaxProcesses caps the children; zero means no cap.
	MaxProcesses int
	// IdleTimeout stops a child beyond MinProcesses that has had no
	// session for this long.
	IdleTimeout time.Duration
	// AcquireTimeout is how long a new session waits for room.
	AcquireTimeout time.Duration
}

// Shared pool defaults.
const (
	DefaultSessionsPerProcess = 64
	DefaultSharedIdleTimeout  = 5 * time.Minute
)

// SharedPool places sessions on the least-loaded of a few long-lived
// children, starting another when all are full.
type SharedPool struct {
	cfg    SharedPoolConfig
	proc   ProcessConfig
	logger *zap.Logger

	mu       sync.Mutex
	muxes    []*Mux
	starting int
	freed    chan struct{}
	started  bool
	closed   bool
	failures int
	lastErr  error
	stop     chan struct{}
	janitor  sync.WaitGroup
	exits    *exitLog // where crashes are counted, if set
}

// NewSharedPool returns a pool that starts nothing until Start or Attach.
func NewSharedPool(cfg SharedPoolConfig, proc ProcessConfig, logger *zap.Logger) *SharedPool {
	if cfg.SessionsPerProcess <= 0 {
		cfg.SessionsPerProcess = DefaultSessionsPerProcess
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultSharedIdleTimeout
	}
	if cfg.AcquireTimeout <= 0 {
		cfg.AcquireTimeout = DefaultAcquireTimeout
	}
	return &SharedPool{cfg: cfg, proc: proc, logger: logger, freed: make(chan struct{}), stop: make(chan struct{})}
}

// Start starts MinProcesses children and the idle reaper. It is idempotent.
func (p *SharedPool) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	p.refillLocked()
	p.janitor.Add(1)
	go p.reapIdle()
}

// Attach places a session on a child: the least-loaded one with room, or a
// new one, or the first to have room within AcquireTimeout.
func (p *SharedPool) Attach(ctx context.Context, deliver func([]byte), onExit func()) (*MuxMember, error) {
	p.Start()
	timer := time.NewTimer(p.cfg.AcquireTimeout)
	defer timer.Stop()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		var best *Mux
		bestLoad := p.cfg.SessionsPerProcess
		for _, m := range p.muxes {
			if load, open := m.Load(); open && load < bestLoad {
				best, bestLoad = m, load
			}
		}
		if best != nil {
			if mem := best.Attach(deliver, onExit); mem != nil {
				p.mu.Unlock()
				return mem, nil
			}
		}
		if p.starting == 0 && (p.cfg.MaxProcesses <= 0 || len(p.muxes) < p.cfg.MaxProcesses) {
			p.starting++
			go p.startChild(0)
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

// released is called when a session leaves a child: there is room again.
func (p *SharedPool) released() {
	p.mu.Lock()
	p.notifyLocked()
	p.mu.Unlock()
}

// Close stops every child.
func (p *SharedPool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.stop)
	muxes := p.muxes
	p.muxes = nil
	p.notifyLocked()
	p.mu.Unlock()
	p.janitor.Wait()
	var wg sync.WaitGroup
	for _, m := range muxes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.retire()
		}()
	}
	wg.Wait()
}

// idleChildren returns the children that carry no session.
func (p *SharedPool) idleChildren() []muxChild {
	p.mu.Lock()
	defer p.mu.Unlock()
	var idle []muxChild
	for _, m := range p.muxes {
		if load, _ := m.Load(); load == 0 {
			idle = append(idle, m.child)
		}
	}
	return idle
}

// Stats returns the pool's counts: children with sessions are busy.
func (p *SharedPool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := PoolStats{Starting: p.starting, LastError: p.lastErr}
	for _, m := range p.muxes {
		if load, _ := m.Load(); load > 0 {
			st.Busy++
		} else {
			st.Idle++
		}
	}
	return st
}

func (p *SharedPool) notifyLocked() {
	close(p.freed)
	p.freed = make(chan struct{})
}

func (p *SharedPool) refillLocked() {
	for !p.closed && len(p.muxes)+p.starting < p.cfg.MinProcesses &&
		(p.cfg.MaxProcesses <= 0 || len(p.muxes)+p.starting < p.cfg.MaxProcesses) {
		p.starting++
		go p.startChild(spawnBackoff(p.failures))
	}
}

func (p *SharedPool) startChild(delay time.Duration) {
	if delay > 0 {
		time.Sleep(delay)
	}
	child, err := child.Start(p.proc, p.logger)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.starting--
	defer p.notifyLocked()
	if err != nil {
		p.failures++
		p.lastErr = err
		p.logger.Error("starting MCP server", zap.Error(err))
		if p.failures < 10 {
			p.refillLocked()
		}
		return
	}
	if p.closed {
		go child.Stop()
		return
	}
	p.muxes = append(p.muxes, NewMux(child, p.logger, p.onChildExit, p.released))
}

// onChildExit drops a child that exited and starts a replacement, later
// each time it keeps crashing.
func (p *SharedPool) onChildExit(m *Mux) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, have := range p.muxes {
		if have == m {
			p.muxes = append(p.muxes[:i], p.muxes[i+1:]...)
			break
		}
	}
	m.mu.Lock()
	retired := m.retired
	m.mu.Unlock()
	if p.closed || retired {
		return
	}
	if time.Since(m.child.Started()) < 10*time.Second {
		p.failures++
	} else {
		p.failures = 0
	}
	go func() { // the child may not be reaped yet: record its status once it is
		<-m.child.Done()
		p.mu.Lock()
		p.lastErr = exitError(m.child)
		p.mu.Unlock()
	}()
	if p.exits != nil {
		p.exits.note(m.child)
	}
	p.logger.Warn("shared MCP server exited", zap.Int("pid", m.child.Pid()), zap.Error(m.child.ExitErr()))
	p.notifyLocked()
	p.refillLocked()
}

// reapIdle stops children beyond MinProcesses that had no session for
// IdleTimeout.
func (p *SharedPool) reapIdle() {
	defer p.janitor.Done()
	t := time.NewTicker(janitorInterval(p.cfg.IdleTimeout))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			p.mu.Lock()
			var idle []*Mux
			for i := 0; i < len(p.muxes) && len(p.muxes) > p.cfg.MinProcesses; {
				m := p.muxes[i]
				if since, empty := m.idleSince(); empty && now.Sub(since) > p.cfg.IdleTimeout {
					p.muxes = append(p.muxes[:i], p.muxes[i+1:]...)
					idle = append(idle, m)
					continue
				}
				i++
			}
			p.mu.Unlock()
			for _, m := range idle {
				go m.retire()
			}
		}
	}
}
