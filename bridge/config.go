package bridge

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/child"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/placement"
)

// BackendConfig is everything about the children and their sessions. Two
// handlers whose BackendConfigs have the same Key share one Backend, which
// is how sessions survive a config reload.
type BackendConfig struct {
	// Name names the server: status, the health report and logs show it.
	// Backends of different names never share children.
	Name string
	// Process says how to start a child.
	Process ProcessConfig
	// Pool says how sessions are placed on children and how many run.
	Pool PoolConfig
	// SessionIdleTimeout ends a session with no open stream, no request in
	// flight and no traffic for this long; zero means
	// DefaultSessionIdleTimeout. A session whose client reads a stream of
	// it is never idle: keepalives find a client that went away.
	SessionIdleTimeout time.Duration
	// Replay bounds the events each stream keeps for clients that resume.
	Replay ReplayBuffer
	// MaxUndelivered bounds the bytes a session holds for a client that
	// does not read them (one message always passes, whatever its size):
	// past it, a shared child's session is ended as too slow, an isolated
	// child waits, and a stream nobody reads drops its oldest message.
	// Once a client is cut off, its streams keep only what Replay allows.
	// Zero means DefaultMaxUndelivered.
	MaxUndelivered int
	// DrainTimeout bounds how long Shutdown lets requests in flight finish;
	// zero means DefaultDrainTimeout. It is not part of the Key.
	DrainTimeout time.Duration `json:"-"`
	// Observer, if set, is told what metrics count. It is not part of the
	// Key.
	Observer Observer `json:"-"`
}

// ProcessConfig says how to start one stdio MCP server.
type ProcessConfig = child.Config

// Isolation values of PoolConfig.
const (
	// IsolationSession gives each session a child of its own.
	IsolationSession = "session"
	// IsolationShared multiplexes sessions onto a few children.
	IsolationShared = "shared"
)

// PoolConfig says how sessions are placed on children and how many
// children run. Zero values mean the defaults below.
type PoolConfig struct {
	// Isolation is IsolationSession (the default) or IsolationShared.
	Isolation string
	// MaxProcesses caps the children alive at once, whatever they are for:
	// sessions' children, warm spares, those serving stateless requests and
	// the health probe's; zero means DefaultMaxProcesses, negative no cap.
	MaxProcesses int
	// AcquireTimeout is how long a session or a stateless request waits
	// for room when MaxProcesses children run, before it is refused.
	AcquireTimeout time.Duration
	// MinIdle is how many started children wait, unused, for the next
	// session in session isolation, so that a session never waits for a
	// cold start; nil means DefaultMinIdle, and it is always zero in shared
	// isolation.
	MinIdle *int
	// HealthCheck is how often every child is pinged: warm spares, and
	// children that carry sessions or requests. A spare that does not
	// answer within HealthCheckTimeout, or a busy child that says nothing
	// at all for as long, is killed and replaced, and the clients it
	// carried are told why. Zero means DefaultHealthCheck; negative turns
	// the check off.
	HealthCheck time.Duration
	// HealthCheckTimeout is how long a child may stay silent after a ping;
	// zero means DefaultHealthCheckTimeout.
	HealthCheckTimeout time.Duration
	// StartTimeout is how long a new spare may take to answer its first
	// ping, which it must before a session gets it.
	StartTimeout time.Duration
	// SessionsPerProcess is how many sessions, or stateless requests, one
	// shared child carries at most.
	SessionsPerProcess int
	// MinProcesses shared children are kept running even with no session.
	MinProcesses int
	// ProcessIdleTimeout stops a shared child beyond MinProcesses, or one
	// serving stateless requests, that has carried nothing for this long.
	ProcessIdleTimeout time.Duration
	// ShareAcrossKeys lets a shared child carry the sessions (and
	// stateless requests) of every principal, not of one API key on one
	// site only. Then what a server says to all its sessions reaches every
	// key's: list changes, resource updates to subscribers, log messages
	// at the level any session asked for, and whatever state the server
	// keeps between calls.
	ShareAcrossKeys bool
	// RequestTimeout, when set, answers a request (a session's, or a
	// stateless one) that the child has not answered for this long with a
	// JSON-RPC error, and cancels it at the child; zero means no limit.
	RequestTimeout time.Duration
}

// Defaults of BackendConfig.
const (
	// DefaultSessionIdleTimeout is short: clients that never say goodbye
	// (no DELETE), such as command-line tools, leave sessions without a
	// stream behind, each holding a child in session isolation.
	DefaultSessionIdleTimeout = 5 * time.Minute
	// DefaultMaxProcesses suits a workstation: a burst of sessions (or of
	// abandoned ones) cannot fork without bound. A server sized for more
	// sets its own.
	DefaultMaxProcesses       = 32
	DefaultDrainTimeout       = 30 * time.Second
	DefaultMinIdle            = 1
	DefaultMaxUndelivered     = DefaultReplayBytes
	DefaultAcquireTimeout     = 10 * time.Second
	DefaultHealthCheck        = 15 * time.Second
	DefaultHealthCheckTimeout = 10 * time.Second
	DefaultStartTimeout       = 30 * time.Second
	DefaultSessionsPerProcess = 64
	DefaultProcessIdleTimeout = 5 * time.Minute
)

// withDefaults returns the configuration with every default filled in and
// every field that the isolation does not use cleared: two configurations
// that mean the same are equal after it. It is the only place defaults are
// applied.
func (c BackendConfig) withDefaults() BackendConfig {
	setDuration(&c.SessionIdleTimeout, DefaultSessionIdleTimeout)
	setDuration(&c.DrainTimeout, DefaultDrainTimeout)
	setInt(&c.Replay.Events, DefaultReplayEvents)
	setInt(&c.Replay.Bytes, DefaultReplayBytes)
	setInt(&c.MaxUndelivered, DefaultMaxUndelivered)

	pr := &c.Process
	setInt(&pr.MaxMessageSize, jsonrpc.DefaultMaxMessageSize)
	setDuration(&pr.StdinCloseTimeout, child.DefaultStdinCloseTimeout)
	setDuration(&pr.TermTimeout, child.DefaultTermTimeout)

	p := &c.Pool
	if p.Isolation == "" {
		p.Isolation = IsolationSession
	}
	switch {
	case p.MaxProcesses == 0:
		p.MaxProcesses = DefaultMaxProcesses
	case p.MaxProcesses < 0:
		p.MaxProcesses = -1 // no cap
	}
	p.RequestTimeout = max(p.RequestTimeout, 0)
	setDuration(&p.AcquireTimeout, DefaultAcquireTimeout)
	setInt(&p.SessionsPerProcess, DefaultSessionsPerProcess)
	setDuration(&p.ProcessIdleTimeout, DefaultProcessIdleTimeout)
	minIdle := DefaultMinIdle
	if p.MinIdle != nil {
		minIdle = max(*p.MinIdle, 0)
	}
	if p.Isolation == IsolationShared {
		minIdle = 0
	} else {
		p.MinProcesses = 0
	}
	p.MinIdle = &minIdle
	if p.HealthCheck >= 0 {
		setDuration(&p.HealthCheck, DefaultHealthCheck)
		setDuration(&p.HealthCheckTimeout, DefaultHealthCheckTimeout)
	} else {
		p.HealthCheck, p.HealthCheckTimeout = 0, 0
	}
	setDuration(&p.StartTimeout, DefaultStartTimeout)
	return c
}

// placementConfig is what the placements need of a resolved PoolConfig.
func (p PoolConfig) placementConfig() placement.Config {
	return placement.Config{
		AcquireTimeout:     p.AcquireTimeout,
		MinIdle:            *p.MinIdle,
		HealthCheck:        p.HealthCheck,
		HealthCheckTimeout: p.HealthCheckTimeout,
		StartTimeout:       p.StartTimeout,
		SessionsPerProcess: p.SessionsPerProcess,
		MinProcesses:       p.MinProcesses,
		ProcessIdleTimeout: p.ProcessIdleTimeout,
	}
}

// Key names what the configuration means: configurations with the same
// Key, defaults spelled out or not, can share a Backend.
func (c BackendConfig) Key() string {
	b, err := json.Marshal(c.withDefaults())
	if err != nil {
		panic(err) // plain data: it always marshals
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func setDuration(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

func setInt(n *int, def int) {
	if *n <= 0 {
		*n = def
	}
}
