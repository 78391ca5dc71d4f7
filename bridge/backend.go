package bridge

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/child"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"go.uber.org/zap"
)

// BackendConfig is everything about the children and their sessions. Two
// handlers with equal BackendConfigs can share one Backend, which is how
// sessions survive a config reload.
type BackendConfig struct {
	Process ProcessConfig
	// Pool sizes the children of isolated sessions, one child each.
	Pool PoolConfig
	// Shared, when set, puts sessions on shared children instead.
	Shared *SharedPoolConfig `json:",omitempty"`
	// SessionIdleTimeout ends a session with no open stream, no request in
	// flight and no traffic for this long.
	SessionIdleTimeout time.Duration
	// Replay bounds the events each stream keeps for clients that resume.
	Replay ReplayBuffer
	// DrainTimeout bounds how long Shutdown lets requests in flight finish.
	// It is not part of what makes two configurations share a Backend.
	DrainTimeout time.Duration `json:"-"`
	// Observer, if set, is told what metrics count.
	Observer Observer `json:"-"`
}

// Defaults of BackendConfig.
const (
	DefaultSessionIdleTimeout = 30 * time.Minute
	DefaultDrainTimeout       = 30 * time.Second
)

// Backend owns a pool of children and the sessions that run on them. It
// outlives the HTTP handlers in front of it.
type Backend struct {
	cfg    BackendConfig
	logger *zap.Logger
	pool   *Pool       // isolated sessions
	shared *SharedPool // shared sessions (then pool is nil)
	// modern serves stateless requests, on shared children of its own.
	modernOnce sync.Once
	modern     *SharedPool
	prober     *prober
	exits      exitLog
	obs        Observer

	mu           sync.RWMutex
	sessions     map[string]*Session
	perPrincipal map[string]int // open sessions by principal

	draining  atomic.Bool
	startOnce sync.Once
	closeOnce sync.Once
	stop      chan struct{}
	janitor   sync.WaitGroup
}

// NewBackend returns a backend that starts no child until Start or the
// first session.
func NewBackend(cfg BackendConfig, logger *zap.Logger) *Backend {
	if cfg.SessionIdleTimeout <= 0 {
		cfg.SessionIdleTimeout = DefaultSessionIdleTimeout
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.Replay.Events <= 0 {
		cfg.Replay.Events = DefaultReplayEvents
	}
	if cfg.Replay.Bytes <= 0 {
		cfg.Replay.Bytes = DefaultReplayBytes
	}
	if cfg.Process.MaxMessageSize <= 0 {
		cfg.Process.MaxMessageSize = jsonrpc.DefaultMaxMessageSize
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	probeProcess := cfg.Process // the probe's children are not the pool's
	cfg.Process.Observer = cfg.Observer
	b := &Backend{
		cfg:          cfg,
		logger:       logger,
		sessions:     make(map[string]*Session),
		perPrincipal: make(map[string]int),
		stop:         make(chan struct{}),
		prober:       newProber(probeProcess, logger),
		obs:          cfg.Observer,
	}
	if cfg.Shared != nil {
		b.shared = NewSharedPool(*cfg.Shared, cfg.Process, logger)
		b.shared.exits = &b.exits
	} else {
		b.pool = NewPool(cfg.Pool, cfg.Process, logger)
	}
	return b
}

// Start starts the warm spares and the idle-session reaper. It is
// idempotent.
func (b *Backend) Start() {
	b.startOnce.Do(func() {
		if b.shared != nil {
			b.shared.Start()
		} else {
			b.pool.Start()
		}
		b.janitor.Add(1)
		go b.reapIdle()
	})
}

// Close ends every session, stops every child and waits until they are
// gone.
func (b *Backend) Close() {
	b.closeOnce.Do(func() {
		close(b.stop)
		b.janitor.Wait()
		b.mu.RLock()
		sessions := make([]*Session, 0, len(b.sessions))
		for _, s := range b.sessions {
			sessions = append(sessions, s)
		}
		b.mu.RUnlock()
		for _, s := range sessions {
			s.end("shutdown")
		}
		if b.shared != nil {
			b.shared.Close()
		} else {
			b.pool.Close() // waits for the sessions' children too
			b.prober.close()
			b.modernOnce.Do(func() {}) // no stateless pool from now on
			if b.modern != nil {
				b.modern.Close()
			}
		}
	})
}

// Shutdown stops taking sessions, lets the requests in flight finish for
// up to DrainTimeout, then closes the backend.
func (b *Backend) Shutdown() {
	b.draining.Store(true)
	deadline := time.Now().Add(b.cfg.DrainTimeout)
	for b.inFlight() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	b.Close()
}

// inFlight counts the requests sessions are waiting on.
func (b *Backend) inFlight() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	n := 0
	for _, s := range b.sessions {
		s.mu.Lock()
		n += len(s.pending)
		s.mu.Unlock()
	}
	return n
}

// MaxMessageSize is the largest message passed in either direction.
func (b *Backend) MaxMessageSize() int { return b.cfg.Process.MaxMessageSize }

// modernPool returns the pool that serves stateless requests. Its children
// are never the sessions' own: a server that has seen a stateless request
// may refuse a later initialize (the go-sdk's does).
func (b *Backend) modernPool() *SharedPool {
	b.modernOnce.Do(func() {
		cfg := SharedPoolConfig{MaxProcesses: b.cfg.Pool.MaxProcesses, AcquireTimeout: b.cfg.Pool.AcquireTimeout}
		if b.shared != nil {
			cfg = *b.cfg.Shared
			cfg.MinProcesses = 0
		}
		b.modern = NewSharedPool(cfg, b.cfg.Process, b.logger)
	})
	return b.modern
}

// Stats counts the backend's children.
func (b *Backend) Stats() PoolStats {
	if b.shared != nil {
		return b.shared.Stats()
	}
	return b.pool.Stats()
}

// SessionOptions describe a new session.
type SessionOptions struct {
	// Transport names the transport, for logs and status.
	Transport string
	// Single marks a single-stream transport (legacy SSE, WebSocket): every
	// message from the child goes to the session's one stream.
	Single bool
	// Principal is who opens the session (see WithPrincipal).
	Principal string
	// MaxPerPrincipal caps the principal's open sessions; zero means no cap.
	MaxPerPrincipal int
}

// NewSession takes a child from the pool and opens a session on it.
func (b *Backend) NewSession(ctx context.Context, opts SessionOptions) (_ *Session, err error) {
	start := time.Now()
	defer func() { b.obs.SessionStart(sessionStartOutcome(err), time.Since(start)) }()
	b.Start()
	if b.draining.Load() {
		return nil, ErrPoolClosed
	}
	if !b.reserve(opts.Principal, opts.MaxPerPrincipal) {
		return nil, ErrTooManySessions
	}
	s := &Session{
		ID:             newSessionID(),
		Transport:      opts.Transport,
		Principal:      opts.Principal,
		single:         opts.Single,
		created:        time.Now(),
		backend:        b,
		pending:        make(map[string]*stream),
		sent:           make(map[string]sentRequest),
		progress:       make(map[string]*stream),
		requestStreams: make(map[*stream]struct{}),
		streams:        make(map[int]*stream),
		tag:            newSessionTag(),
		lastActive:     time.Now(),
		done:           make(chan struct{}),
	}
	var child *child.Process
	if b.shared != nil {
		var member *MuxMember
		if member, err = b.shared.Attach(ctx, s.fromChild, s.onChildExit); err != nil {
			b.release(opts.Principal)
			return nil, err
		}
		s.up = member
	} else {
		if child, err = b.pool.Acquire(ctx); err != nil {
			b.release(opts.Principal)
			return nil, err
		}
		s.up = ownChild{proc: child, pool: b.pool}
	}
	s.logger = b.logger.With(zap.String("session", s.ID[:8]), zap.Int("pid", s.up.Pid()))
	b.mu.Lock()
	b.sessions[s.ID] = s
	b.mu.Unlock()
	if child != nil {
		child.Attach(s.fromChild, s.onOversize, s.onChildExit)
	}
	s.logger.Info("session opened", zap.String("transport", opts.Transport), zap.String("principal", opts.Principal))
	return s, nil
}

// reserve counts a session for principal, unless it is at max already.
func (b *Backend) reserve(principal string, max int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if max > 0 && b.perPrincipal[principal] >= max {
		return false
	}
	b.perPrincipal[principal]++
	return true
}

func (b *Backend) release(principal string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.perPrincipal[principal]--; b.perPrincipal[principal] <= 0 {
		delete(b.perPrincipal, principal)
	}
}

// Session looks a session up by id, for its principal: a session is
// invisible to anyone else.
func (b *Backend) Session(id, principal string) *Session {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if s := b.sessions[id]; s != nil && s.Principal == principal {
		return s
	}
	return nil
}

// SessionCount is the number of open sessions.
func (b *Backend) SessionCount() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.sessions)
}

func (b *Backend) removeSession(s *Session) {
	b.mu.Lock()
	if b.sessions[s.ID] == s {
		delete(b.sessions, s.ID)
	}
	b.mu.Unlock()
	b.release(s.Principal)
}

func (b *Backend) reapIdle() {
	defer b.janitor.Done()
	t := time.NewTicker(janitorInterval(b.cfg.SessionIdleTimeout))
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case now := <-t.C:
			b.mu.RLock()
			var idle []*Session
			for _, s := range b.sessions {
				if last, busy := s.idleSince(); !busy && now.Sub(last) > b.cfg.SessionIdleTimeout {
					idle = append(idle, s)
				}
			}
			b.mu.RUnlock()
			for _, s := range idle {
				s.end("idle timeout")
			}
		}
	}
}

// ProcessConfig says how to start one stdio MCP server.
type ProcessConfig = child.Config
