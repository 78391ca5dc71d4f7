package bridge

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/placement"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/supervisor"
	"go.uber.org/zap"
)

// Backend owns the children of one configuration and the sessions that
// run on them. It outlives the HTTP handlers in front of it.
type Backend struct {
	cfg    BackendConfig // with defaults
	logger *zap.Logger
	// sup owns every child; the placements below take theirs from it.
	sup       *supervisor.Supervisor
	placement placement.Placement // sessions: isolated or shared, as configured
	stateless *placement.Shared   // stateless requests, on children of their own
	prober    *prober
	obs       Observer

	mu           sync.RWMutex
	sessions     map[string]*session
	perPrincipal map[principal]int // open sessions by principal

	draining  atomic.Bool
	startOnce sync.Once
	closeOnce sync.Once
	stop      chan struct{}
	janitor   sync.WaitGroup
	// owned counts the goroutines sessions leave behind as they end (a
	// release stops an isolated child, which takes its stop timeouts).
	owned sync.WaitGroup
}

// NewBackend returns a backend that starts no child until Start or the
// first session.
func NewBackend(cfg BackendConfig, logger *zap.Logger) *Backend {
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = zap.NewNop()
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	sup := supervisor.New(supervisor.Config{
		Process:            cfg.Process,
		MaxProcesses:       cfg.Pool.MaxProcesses,
		AcquireTimeout:     cfg.Pool.AcquireTimeout,
		HealthCheck:        cfg.Pool.HealthCheck,
		HealthCheckTimeout: cfg.Pool.HealthCheckTimeout,
	}, logger, cfg.Observer)
	b := &Backend{
		cfg:          cfg,
		logger:       logger,
		sup:          sup,
		stateless:    placement.NewShared(sup, supervisor.RoleStateless, cfg.Pool.placementConfig(), logger),
		obs:          cfg.Observer,
		sessions:     make(map[string]*session),
		perPrincipal: make(map[principal]int),
		stop:         make(chan struct{}),
	}
	b.prober = newProber(b.startProbeChild, logger)
	if cfg.Pool.Isolation == IsolationShared {
		b.placement = placement.NewShared(sup, supervisor.RoleShared, cfg.Pool.placementConfig(), logger)
	} else {
		b.placement = placement.NewIsolated(sup, cfg.Pool.placementConfig(), logger)
	}
	return b
}

// startProbeChild starts the probe's child, within the budget: when it is
// full, the probe waits like a session would, and then keeps its last
// result.
func (b *Backend) startProbeChild(ctx context.Context) (*supervisor.Child, error) {
	return b.sup.Start(ctx, supervisor.RoleProbe, true, 0)
}

// CheckServer starts a child of its own and initializes it as a client
// would (then probes it as /health does, which keeps the result), and says
// what failed if it could not start or initialize: a configuration whose
// server cannot serve can be refused before it replaces a working one.
func (b *Backend) CheckServer(ctx context.Context) error {
	if res := b.prober.check(ctx); !res.Initialized {
		return res.Err
	}
	return nil
}

// Start starts the warm spares and the idle-session reaper. It is
// idempotent.
func (b *Backend) Start() {
	b.startOnce.Do(func() {
		b.placement.Start()
		b.janitor.Add(1)
		go b.reapIdle()
	})
}

// Close ends every session, stops every child and returns once every child
// the backend started has been reaped and every goroutine it started has
// ended, whatever the isolation.
func (b *Backend) Close() {
	b.closeOnce.Do(func() {
		b.startOnce.Do(func() {}) // no reaper once closing
		close(b.stop)
		b.janitor.Wait()
		b.mu.RLock()
		sessions := make([]*session, 0, len(b.sessions))
		for _, s := range b.sessions {
			sessions = append(sessions, s)
		}
		b.mu.RUnlock()
		for _, s := range sessions {
			s.end("shutdown")
		}
		b.owned.Wait()
		b.prober.close()
		b.placement.Close()
		b.stateless.Close()
		b.sup.Close()
		b.owned.Wait() // sessions that ended as their children were stopped
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

// maxMessageSize is the largest message passed in either direction.
func (b *Backend) maxMessageSize() int { return b.cfg.Process.MaxMessageSize }

// lastError is the last failure to start a child for sessions or
// stateless requests.
func (b *Backend) lastError() error {
	if err := b.placement.LastError(); err != nil {
		return err
	}
	return b.stateless.LastError()
}

// Name is the server's name (BackendConfig.Name).
func (b *Backend) Name() string { return b.cfg.Name }

// Counts returns how many children run, by role, for metrics.
func (b *Backend) Counts() map[string]int {
	c := b.sup.Counts()
	out := make(map[string]int, len(c.ByRole))
	for _, r := range supervisor.Roles() {
		out[r.String()] = c.ByRole[r]
	}
	return out
}

// sessionOptions describe a new session.
type sessionOptions struct {
	// Transport names the transport, for logs and status.
	Transport string
	// Single marks a single-stream transport (legacy SSE, WebSocket): every
	// message from the child goes to the session's one stream.
	Single bool
	// Principal is who opens the session (see WithPrincipal).
	Principal principal
	// MaxPerPrincipal caps the principal's open sessions; zero means no cap.
	MaxPerPrincipal int
	// Node names this instance in the session's ids (see Owner).
	Node string
}

// newSession takes a child from the pool and opens a session on it.
func (b *Backend) newSession(ctx context.Context, opts sessionOptions) (_ *session, err error) {
	start := time.Now()
	defer func() { b.obs.SessionStart(sessionStartOutcome(err), time.Since(start)) }()
	b.Start()
	if b.draining.Load() {
		return nil, placement.ErrPoolClosed
	}
	if !b.reserve(opts.Principal, opts.MaxPerPrincipal) {
		return nil, ErrTooManySessions
	}
	s := &session{
		ID:          newOwnedID(opts.Node),
		Transport:   opts.Transport,
		Principal:   opts.Principal,
		single:      opts.Single,
		created:     time.Now(),
		backend:     b,
		logger:      b.logger,
		undelivered: &undelivered{limit: int64(b.cfg.MaxUndelivered)},
		streams:     make(map[int]*stream),
		tag:         newOwnedID(opts.Node),
		lastActive:  time.Now(),
		done:        make(chan struct{}),
	}
	_, err = b.placement.Acquire(ctx, placement.Request{Group: b.childGroup(opts.Principal), Deliver: s.fromChild, Oversize: s.onOversize, Exited: s.onChildExit, Bind: func(l placement.Lease) {
		s.up = l
		s.logFields = [2]zap.Field{zap.String("session", s.ID[:8]), zap.Int("pid", l.Pid())}
	}})
	if err != nil {
		b.release(opts.Principal)
		return nil, err
	}
	// A child that exits at once ends the session before it is listed:
	// list it only if it has not ended (end unlists it after this).
	b.mu.Lock()
	s.mu.Lock()
	ended := s.ended
	s.mu.Unlock()
	if !ended {
		b.sessions[s.ID] = s
	}
	b.mu.Unlock()
	if ended {
		return nil, errors.New("the MCP server process exited")
	}
	s.logAt(zap.InfoLevel, "session opened", zap.String("transport", opts.Transport), zap.String("principal", opts.Principal.Key), zap.String("site", opts.Principal.Site))
	return s, nil
}

// childGroup is who may share a shared child with p's clients: p alone,
// unless the pool shares children across keys.
func (b *Backend) childGroup(p principal) string {
	if b.cfg.Pool.ShareAcrossKeys {
		return ""
	}
	return p.Site + "\x00" + p.Key
}

// reserve counts a session for principal, unless it is at max already.
func (b *Backend) reserve(p principal, max int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if max > 0 && b.perPrincipal[p] >= max {
		return false
	}
	b.perPrincipal[p]++
	return true
}

func (b *Backend) release(p principal) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.perPrincipal[p]--; b.perPrincipal[p] <= 0 {
		delete(b.perPrincipal, p)
	}
}

// findSession looks a session up by id, for its principal: a session is
// invisible to anyone else.
func (b *Backend) findSession(id string, p principal) *session {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if s := b.sessions[id]; s != nil && s.Principal == p {
		return s
	}
	return nil
}

// EndSessions ends every session of site whose credential revoked
// reports revoked, with reasonRevoked: their streams and WebSockets close
// and their next request gets 404. It returns how many it ended.
func (b *Backend) EndSessions(site string, revoked func(credential string) bool) int {
	b.mu.RLock()
	var doomed []*session
	for _, s := range b.sessions {
		if s.Principal.Site != site {
			continue
		}
		s.mu.Lock()
		c := s.credential
		s.mu.Unlock()
		if c != "" && revoked(c) {
			doomed = append(doomed, s)
		}
	}
	b.mu.RUnlock()
	for _, s := range doomed {
		s.end(reasonRevoked)
	}
	return len(doomed)
}

// sessionCount is the number of open sessions.
func (b *Backend) sessionCount() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.sessions)
}

func (b *Backend) removeSession(s *session) {
	b.mu.Lock()
	if b.sessions[s.ID] == s {
		delete(b.sessions, s.ID)
	}
	b.mu.Unlock()
	b.release(s.Principal)
}

func (b *Backend) reapIdle() {
	defer b.janitor.Done()
	t := time.NewTicker(placement.CheckInterval(b.cfg.SessionIdleTimeout))
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case now := <-t.C:
			b.mu.RLock()
			var idle []*session
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
