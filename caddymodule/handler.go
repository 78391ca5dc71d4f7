package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler puts a stdio MCP server on the network. Each client session gets a
// child process of its own, taken from a pool of warm spares, and talks to
// it over Streamable HTTP. Requests to other paths go to the next handler.
//
// The children and their sessions belong to a pool shared by every handler
// instance with the same child configuration (command, env, dir, pool and
// message size), so `caddy reload` keeps them when that configuration is
// unchanged.
type Handler struct {
	// Name names the server in status, the admin API (/mcp_bridge/<name>/),
	// metrics (label server), logs (field server) and the health report.
	// Two handlers of one config may share a name only if they run the
	// same server (a site's HTTP and HTTPS twins do). Default: a name made
	// from the command, such as server-everything for npx -y
	// @modelcontextprotocol/server-everything stdio.
	Name string `json:"name,omitempty"`

	// Command is the command line of the stdio MCP server. It is split into
	// words with shell quoting rules, but never run by a shell: no
	// expansion, pipes or redirections. Caddy placeholders such as
	// {env.HOME} are replaced when the config loads.
	Command string `json:"command,omitempty"`

	// Env holds environment variables set for the child, on top of what
	// it inherits. Values may use placeholders such as {env.API_TOKEN}.
	Env map[string]string `json:"env,omitempty"`

	// HealthDetails says who sees the health report's counts and errors
	// (children, sessions, tools, crashes, the last error, which can name
	// paths): "key" (the default) shows them to requests with a valid API
	// key or access token and to requests on a loopback address (from this machine, where
	// the admin API shows more), "on" to every request, "off" to none.
	// Everyone else gets only the status and the transports.
	HealthDetails string `json:"health_details,omitempty"`

	// AllowedHosts names the hosts, besides IP addresses, localhost and the
	// names of the server's sites, that requests may be addressed to (their
	// Host header): a name (mcp.example.com), a pattern (*.example.com) or
	// "*" for any. Requests for any other host get 403: the DNS-rebinding
	// defence for a site such as ":8080", which names no host.
	AllowedHosts []string `json:"allowed_hosts,omitempty"`

	// EnvInherit names variables of Caddy's environment that the child
	// inherits besides a short safe list (on Unix HOME, LANG, LOGNAME,
	// PATH, SHELL, TERM, TMPDIR and USER; Windows has its own), which is
	// all it inherits by default; "*" passes all of Caddy's environment.
	// Whatever it says, a variable whose value is an API key of the bridge,
	// however the config read it ({env.X} or {$X}), is never passed.
	EnvInherit []string `json:"env_inherit,omitempty"`

	// Dir is the working directory of the child. Default: Caddy's own.
	Dir string `json:"dir,omitempty"`

	// Pool sizes the pool of child processes.
	Pool *PoolConfig `json:"pool,omitempty"`

	// MaxMessageSize is the largest JSON-RPC message, in bytes, passed in
	// either direction. A larger request body gets 413; a larger line from
	// the child is dropped and its request answered with an error.
	// Default: 16 MiB.
	MaxMessageSize int `json:"max_message_size,omitempty"`

	// AllowedOrigins lists the browser origins that may call the bridge:
	// exact origins such as "https://app.example.com", patterns such as
	// "https://*.example.com", or "*". A request with any other Origin
	// header gets 403, which defeats DNS rebinding. When empty, requests
	// without an Origin are allowed, and localhost origins on connections
	// to a loopback address.
	AllowedOrigins []string `json:"allowed_origins,omitempty"`

	// Transports lists the transports served: "streamable" (Streamable
	// HTTP), "sse" (the legacy HTTP+SSE transport of 2024-11-05) and "ws"
	// (WebSocket). Default: all three.
	Transports []string `json:"transports,omitempty"`

	// StreamablePath is the path of the Streamable HTTP endpoint, relative
	// to the path the handler receives (so behind `handle_path /tools/*` the
	// default is served at /tools/mcp). Default: /mcp.
	StreamablePath string `json:"streamable_path,omitempty"`

	// SSEPath is where a legacy SSE client opens its stream. Default: /sse.
	SSEPath string `json:"sse_path,omitempty"`

	// MessagePath is where a legacy SSE client posts its messages; the
	// stream's first event names it. Default: /message.
	MessagePath string `json:"message_path,omitempty"`

	// WSPath is the WebSocket endpoint. Default: /ws.
	WSPath string `json:"ws_path,omitempty"`

	// HealthPath serves a JSON health report (status, children, sessions,
	// tools); it is public, with no API key. 200 when a child can be
	// started and initialized, else 503. Default: /health.
	HealthPath string `json:"health_path,omitempty"`

	// PublicBaseURL makes the legacy SSE endpoint event an absolute URL:
	// this base, where clients reach the handler (for example
	// "https://example.com/tools"), followed by MessagePath. By default the
	// event carries a path built from the path the client requested, which
	// stays right under handle_path or uri strip_prefix.
	PublicBaseURL string `json:"public_base_url,omitempty"`

	// Keepalive is the interval of the comments sent on idle SSE streams so
	// that clients and proxies do not drop them. Default: 25s; a negative
	// value disables them.
	Keepalive caddy.Duration `json:"keepalive,omitempty"`

	// StopTimeout is how long a child may take to exit once its stdin is
	// closed, before it gets SIGTERM. Default: 2s.
	StopTimeout caddy.Duration `json:"stop_timeout,omitempty"`

	// TermTimeout is how long a child may take to exit after SIGTERM,
	// before its whole process group gets SIGKILL. Default: 3s.
	TermTimeout caddy.Duration `json:"term_timeout,omitempty"`

	// APIKeys are keys that clients may present, as `Authorization: Bearer
	// <key>` or `X-API-Key: <key>`. Placeholders such as {env.MCP_API_KEY}
	// are replaced. When any key is configured (here or in APIKeyFile),
	// every request to the bridge needs one.
	APIKeys []string `json:"api_keys,omitempty"`

	// APIKeyFile is a file of keys (see `caddy mcp-bridge key`). If it does
	// not exist, a new random key is written to it, mode 0600.
	APIKeyFile string `json:"api_key_file,omitempty"`

	// APIKeyStorage is a key file kept in Caddy's storage (the `storage`
	// global option) under this storage key instead of a path, so that
	// several instances share their keys: the default file system storage
	// on one machine, a distributed storage module across many. It is read
	// and written like APIKeyFile (the `caddy mcp-bridge key` commands
	// find it in the config), and may not be given with it.
	APIKeyStorage string `json:"api_key_storage,omitempty"`

	// APIKeyQuery also accepts the key as the api_key query parameter, for
	// clients that cannot set headers. Keys in URLs end up in logs and
	// browser history, so it is off by default; when used, the bridge
	// removes the parameter from the request it passes on.
	APIKeyQuery bool `json:"api_key_query,omitempty"`

	// ResourceMetadata is the URL of the OAuth protected resource metadata
	// (RFC 9728), named in the WWW-Authenticate header of 401 answers.
	ResourceMetadata string `json:"resource_metadata,omitempty"`

	// CORS, when set, answers CORS preflights and adds CORS headers for
	// the origins in AllowedOrigins.
	CORS *CORSConfig `json:"cors,omitempty"`

	// MaxSessionsPerKey caps the sessions one API key may hold open; a new
	// session beyond it gets 429. Default: no cap.
	MaxSessionsPerKey int `json:"max_sessions_per_key,omitempty"`

	// BodyReadTimeout cuts a request body that takes longer than this to
	// arrive, such as a slowloris client's. Default: 30s.
	BodyReadTimeout caddy.Duration `json:"body_read_timeout,omitempty"`

	// Node names this instance in the ids of its sessions, so that a front
	// Caddy with `lb_policy mcp_session` sends every request of a session
	// to the instance that owns it. Give each instance behind one front a
	// node of its own: the address the front dials it at ("10.0.0.5:8080"),
	// or the host name of that address. Placeholders such as {env.NODE}
	// are replaced. Default: this machine's host name.
	Node string `json:"node,omitempty"`

	// DrainTimeout is how long requests in flight may take to finish when
	// their pool is retired (the child configuration changed or the
	// handler was removed on reload, or Caddy is stopping), before the
	// children are stopped. Default: 30s.
	DrainTimeout caddy.Duration `json:"drain_timeout,omitempty"`

	// MaxUndelivered bounds the bytes a session holds for a client that
	// does not read them (one message always passes, whatever its size).
	// Past it, a shared child's session is ended as too slow, an isolated
	// child waits, and a stream nobody reads drops its oldest message. Once
	// a client is cut off, its streams keep only what replay_buffer allows:
	// a larger result is not kept after its delivery failed. Default: 4MiB.
	MaxUndelivered int `json:"max_undelivered,omitempty"`

	// ReplayBuffer bounds what each SSE stream keeps of the events it
	// wrote, for clients that reconnect with Last-Event-ID: the latest
	// Events, within Bytes. It lives with the session, so it survives a
	// reload. Default: 256 events, 4 MiB.
	ReplayBuffer *ReplayBufferConfig `json:"replay_buffer,omitempty"`

	// ResumeGrace is how long a legacy SSE session outlives its stream, so
	// that its client can reconnect with Last-Event-ID and get what it
	// missed; then the session and its child end. Default: 30s.
	ResumeGrace caddy.Duration `json:"resume_grace,omitempty"`

	// PollInterval, when set, closes the SSE streams of 2025-11-25 sessions
	// after this long, with a retry field; clients resume them with
	// Last-Event-ID. For deployments behind proxies that cut long
	// responses. Default: off.
	PollInterval caddy.Duration `json:"poll_interval,omitempty"`

	// StreamCloseDelay is how long, after a reload, the old configuration's
	// Streamable HTTP GET streams stay open before they are closed; their
	// clients reconnect to the same sessions under the new configuration.
	// Legacy SSE and WebSocket connections stay open through reloads.
	// Default: 0 (closed at once).
	StreamCloseDelay caddy.Duration `json:"stream_close_delay,omitempty"`

	// NamedAPIKeys are keys by name: the name is what sessions, logs,
	// the admin API and policies know the key's holder by. Values may use
	// placeholders such as {env.ALICE_MCP_KEY}. They are accepted beside
	// APIKeys, the key file and OAuth tokens.
	NamedAPIKeys map[string]string `json:"named_api_keys,omitempty"`

	// OAuth makes the handler an OAuth 2.1 resource server that accepts
	// the access tokens of one authorization server, beside any API keys.
	OAuth *OAuthConfig `json:"oauth,omitempty"`

	// Policies say what principals (API key names, OAuth subjects,
	// clients or scopes) may do: tools, prompts and resources they see,
	// rate limits, quotas and their children's environment. The first
	// that matches a request applies.
	Policies []PolicyConfig `json:"policies,omitempty"`

	keys        []apiKey // configured inline
	keyFile     *keyFile
	tokens      *tokenValidator // nil without OAuth
	policies    []*policy
	pools       []*pool // the handler's own first, then the pools of policies with env
	storage     certmagic.Storage
	holdsQuotas bool // the handler holds the quota flusher
	origins     bridge.OriginPolicy
	node        string // the Node in force
	serverName  string // Name, or the name taken from the command
	backendKey  string
	backend     *bridge.Backend
	server      *bridge.Server
	logger      *zap.Logger
	ctx         caddy.Context

	// sites names the servers the handler serves in (see siteOf), once
	// the config has started.
	// (A pointer: a Handler is copied as a value, as modules are.)
	sites           *atomic.Pointer[map[*caddyhttp.Server]string]
	revocations     chan struct{} // closed to stop watchRevocations
	revocationsDone chan struct{} // closed when it has stopped
}

// PoolConfig sizes the pool of child processes.
type PoolConfig struct {
	// Isolation is "session" (the default): each session gets a child of
	// its own, or "shared": sessions are multiplexed onto a few children,
	// for servers that keep no per-client state.
	Isolation string `json:"isolation,omitempty"`

	// MinIdle is the number of warm spares in session isolation: children
	// started ahead of demand, so that a new session does not wait for a
	// cold start. Default: 1. Set it to 0 to start children only on demand.
	MinIdle *int `json:"min_idle,omitempty"`

	// SessionsPerProcess is how many sessions a shared child carries at
	// most. Default: 64.
	SessionsPerProcess int `json:"sessions_per_process,omitempty"`

	// MinProcesses is how many shared children run even with no session.
	// Default: 0.
	MinProcesses int `json:"min_processes,omitempty"`

	// ProcessIdleTimeout stops a shared child beyond MinProcesses that has
	// had no session for this long. Default: 5m.
	ProcessIdleTimeout caddy.Duration `json:"process_idle_timeout,omitempty"`

	// MaxProcesses caps the children alive at once, whatever they are for:
	// sessions' children, warm spares, shared children, those serving
	// stateless requests and the health probe's. A negative value means
	// no cap. Default: 32, for a workstation.
	MaxProcesses int `json:"max_processes,omitempty"`

	// AcquireTimeout is how long a new session waits for a child when
	// MaxProcesses are running, before it gets 503 with Retry-After.
	// Default: 10s.
	AcquireTimeout caddy.Duration `json:"acquire_timeout,omitempty"`

	// SessionIdleTimeout ends a session, and its child, after this long
	// with no request, no response and no open stream; a session whose
	// client reads one of its streams is never idle. It is short by
	// default because some clients never end their sessions. Default: 5m.
	SessionIdleTimeout caddy.Duration `json:"session_idle_timeout,omitempty"`

	// ShareAcrossKeys lets a shared child (isolation shared, and the
	// children of stateless requests) carry the clients of every API key,
	// not of one key on one site only, as it does by default. Then what the
	// server says to all its sessions reaches every key's: list changes,
	// resource updates to subscribers, log messages at the level any
	// session asked for, and whatever state the server keeps between
	// calls. Default: off.
	ShareAcrossKeys bool `json:"share_across_keys,omitempty"`

	// RequestTimeout, when set, answers a request (of a session, or
	// stateless) that the child has not answered for this long with a
	// JSON-RPC error, and sends the child notifications/cancelled for it.
	// Default: off.
	RequestTimeout caddy.Duration `json:"request_timeout,omitempty"`

	// HealthCheck is how often every child is pinged (an MCP ping, which
	// servers answer even before initialize): warm spares, and children
	// that carry sessions or requests, shared or not, busy or not. A child
	// that says nothing at all (neither the ping's answer nor any other
	// message) within health_check_timeout, or does not read its input for
	// as long, is killed and replaced; its sessions' requests fail with a
	// JSON-RPC error that says why and the sessions end, so clients
	// initialize again. A negative value turns the check off. Default: 15s.
	HealthCheck caddy.Duration `json:"health_check,omitempty"`

	// HealthCheckTimeout is how long a child may stay silent after a
	// health-check ping before it is judged hung. A server that handles
	// one request at a time and sends nothing during a call longer than
	// this is judged hung too: raise it for such a server. Default: 10s.
	HealthCheckTimeout caddy.Duration `json:"health_check_timeout,omitempty"`
}

// ReplayBufferConfig bounds a stream's replay buffer.
type ReplayBufferConfig struct {
	// Events is how many written events a stream keeps at most.
	Events int `json:"events,omitempty"`
	// Bytes is how many bytes of written events a stream keeps at most.
	Bytes int `json:"bytes,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mcp_bridge",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets the handler up. It starts no child: `caddy validate` runs
// Provision too. The warm spares start on Caddy's "started" event.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.ctx = ctx
	h.sites = new(atomic.Pointer[map[*caddyhttp.Server]string])
	cfg, err := h.backendConfig()
	if err != nil {
		return err
	}
	h.serverName = cfg.Name
	h.logger = ctx.Logger().With(zap.String("server", cfg.Name))
	transports, err := parseTransports(h.Transports)
	if err != nil {
		return err
	}
	if err := h.loadKeys(ctx); err != nil {
		return err
	}
	h.origins = bridge.OriginPolicy{Allowed: h.AllowedOrigins}
	if h.node = caddy.NewReplacer().ReplaceAll(h.Node, ""); h.node == "" {
		h.node = bridge.DefaultNode()
	}
	if err := bridge.CheckNode(h.node); err != nil {
		return err
	}
	main, err := h.provisionPool(ctx, cfg, transports)
	if err != nil {
		return err
	}
	h.backendKey, h.backend, h.server = main.key, main.backend, main.server
	if h.Name != "" {
		if err := claimServerName(ctx, h.Name, main.key); err != nil {
			return err
		}
	}
	if err := h.provisionAuth(ctx, cfg, transports); err != nil {
		return err
	}

	if err := registerMetrics(ctx); err != nil {
		return err
	}
	// On process exit, Caddy returns only once the children are gone.
	registerExit.Do(func() { caddy.OnExit(shutdownAll) })
	eventsApp, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("loading events app: %v", err)
	}
	events := eventsApp.(*caddyevents.App)
	if err := events.On("started", h); err != nil {
		return err
	}
	return events.On("stopping", h)
}

// A pool is a backend, its children and sessions, and the bridge server in
// front of it.
type pool struct {
	key     string
	backend *bridge.Backend
	server  *bridge.Server
}

// provisionPool finds or makes the backend of cfg, shared with every
// handler of the same child configuration, and puts a server in front.
func (h *Handler) provisionPool(ctx caddy.Context, cfg bridge.BackendConfig, transports bridge.Transports) (*pool, error) {
	// caddy validate and caddy reload fail here, before a mistyped command
	// replaces a working one.
	if err := bridge.CheckCommand(cfg.Process); err != nil {
		return nil, err
	}
	key := cfg.Key()
	cfg.Observer = newPoolObserver(key[:12], cfg.Name)
	val, loaded, err := backends.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newBackendHandle(bridge.NewBackend(cfg, h.logger.With(zap.String("pool", key[:12])))), nil
	})
	if err != nil {
		return nil, err
	}
	p := &pool{key: key, backend: val.(backendHandle).Backend}
	h.pools = append(h.pools, p) // Cleanup releases it, whatever happens next
	// A reload to a new pool whose server cannot start or initialize
	// fails here, and the running configuration, its pools and sessions
	// stay (Caddy cleans this handler up). caddy validate, and the first
	// load, have no running configuration and start nothing.
	if configServing.Load() && !loaded {
		if err := p.backend.CheckServer(ctx); err != nil {
			return nil, fmt.Errorf("command %q cannot serve: %v (the running configuration stays)", strings.Join(cfg.Process.Argv, " "), err)
		}
	}
	p.server = bridge.NewServer(p.backend, bridge.ServerConfig{
		Transports:     transports,
		StreamablePath: h.StreamablePath,
		SSEPath:        h.SSEPath,
		MessagePath:    h.MessagePath,
		WSPath:         h.WSPath,
		HealthPath:     h.HealthPath,
		MountPrefix:    mountPrefix,
		PublicBaseURL:  h.PublicBaseURL,
		Keepalive:      time.Duration(h.Keepalive),
		ResumeGrace:    time.Duration(h.ResumeGrace),
		PollInterval:   time.Duration(h.PollInterval),
		Origins:        h.origins,

		MaxSessionsPerPrincipal: h.MaxSessionsPerKey,
		BodyReadTimeout:         time.Duration(h.BodyReadTimeout),
		Node:                    h.node,
	}, h.logger)
	return p, nil
}

// loadKeys gathers the accepted API keys, creating the key file if needed.
func (h *Handler) loadKeys(ctx caddy.Context) error {
	repl := caddy.NewReplacer()
	h.keys = h.keys[:0]
	for _, raw := range h.APIKeys {
		key := repl.ReplaceAll(raw, "")
		if key == "" {
			return fmt.Errorf("api_key %q is empty once placeholders are replaced", raw)
		}
		h.keys = append(h.keys, acceptKey(key, keyName(key), time.Time{}))
	}
	for _, name := range slices.Sorted(maps.Keys(h.NamedAPIKeys)) {
		raw := h.NamedAPIKeys[name]
		key := repl.ReplaceAll(raw, "")
		if key == "" {
			return fmt.Errorf("named_api_key %s: %q is empty once placeholders are replaced", name, raw)
		}
		h.keys = append(h.keys, acceptKey(key, "key:"+name, time.Time{}))
	}
	switch {
	case h.APIKeyFile != "":
		path := expandPath(repl.ReplaceAll(h.APIKeyFile, ""))
		h.keyFile = &keyFile{store: fileKeys{}, path: path, shown: "file:" + path}
	case h.APIKeyStorage != "":
		key := repl.ReplaceAll(h.APIKeyStorage, "")
		h.keyFile = &keyFile{store: storageKeys{ctx.Storage()}, path: key, shown: "storage:" + key}
	default:
		return nil
	}
	return h.keyFile.load(h.logger)
}

// envPlaceholder finds the {env.NAME} placeholders of a value.
var envPlaceholder = regexp.MustCompile(`\{env\.([^{}]+)\}`)

// secretEnv names the environment variables that hold API keys, the
// introspection secret and policies' credentials: the child must not
// inherit them, unless an env line gives them on purpose.
func (h *Handler) secretEnv() []string {
	var names []string
	secrets := slices.Concat(h.APIKeys, slices.Collect(maps.Values(h.NamedAPIKeys)))
	if h.OAuth != nil {
		secrets = append(secrets, h.OAuth.ClientSecret)
	}
	for _, p := range h.Policies {
		// One principal's credentials reach only its own children.
		secrets = slices.AppendSeq(secrets, maps.Values(p.Env))
	}
	for _, raw := range secrets {
		for _, m := range envPlaceholder.FindAllStringSubmatch(raw, -1) {
			if _, set := h.Env[m[1]]; !set && !slices.Contains(names, m[1]) {
				names = append(names, m[1])
			}
		}
	}
	slices.Sort(names)
	return names
}

// backendConfig is the child configuration with placeholders replaced.
// Defaults are the bridge's to apply (BackendConfig.Key), so that a
// default spelled out and one left out mean the same pool.
func (h *Handler) backendConfig() (bridge.BackendConfig, error) {
	repl := caddy.NewReplacer()
	argv, err := bridge.SplitCommand(repl.ReplaceAll(h.Command, ""))
	if err != nil {
		return bridge.BackendConfig{}, err
	}
	if len(argv) > 0 {
		argv[0] = expandPath(argv[0])
	}
	env := make([]string, 0, len(h.Env))
	for k, v := range h.Env {
		env = append(env, k+"="+repl.ReplaceAll(v, ""))
	}
	slices.Sort(env)
	name := h.Name
	if name == "" {
		name = defaultServerName(argv)
	}
	cfg := bridge.BackendConfig{
		Name: name,
		Process: bridge.ProcessConfig{
			Argv:              argv,
			Env:               env,
			Inherit:           h.EnvInherit,
			UnsetEnv:          h.secretEnv(),
			Withhold:          isKnownKey,
			Dir:               expandPath(repl.ReplaceAll(h.Dir, "")),
			MaxMessageSize:    h.MaxMessageSize,
			StdinCloseTimeout: time.Duration(h.StopTimeout),
			TermTimeout:       time.Duration(h.TermTimeout),
		},
		DrainTimeout:   time.Duration(h.DrainTimeout),
		MaxUndelivered: h.MaxUndelivered,
	}
	if r := h.ReplayBuffer; r != nil {
		cfg.Replay = bridge.ReplayBuffer{Events: r.Events, Bytes: r.Bytes}
	}
	if p := h.Pool; p != nil {
		cfg.Pool = bridge.PoolConfig{
			Isolation:          p.Isolation,
			MaxProcesses:       p.MaxProcesses,
			AcquireTimeout:     time.Duration(p.AcquireTimeout),
			MinIdle:            p.MinIdle,
			HealthCheck:        time.Duration(p.HealthCheck),
			HealthCheckTimeout: time.Duration(p.HealthCheckTimeout),
			SessionsPerProcess: p.SessionsPerProcess,
			MinProcesses:       p.MinProcesses,
			ProcessIdleTimeout: time.Duration(p.ProcessIdleTimeout),
			RequestTimeout:     time.Duration(p.RequestTimeout),
			ShareAcrossKeys:    p.ShareAcrossKeys,
		}
		cfg.SessionIdleTimeout = time.Duration(p.SessionIdleTimeout)
	}
	return cfg, nil
}

var transportNames = map[string]bridge.Transports{
	"streamable": bridge.TransportStreamable,
	"sse":        bridge.TransportSSE,
	"ws":         bridge.TransportWebSocket,
}

func parseTransports(names []string) (bridge.Transports, error) {
	var t bridge.Transports
	for _, name := range names {
		bit, ok := transportNames[name]
		if !ok {
			return 0, fmt.Errorf("unknown transport %q: want streamable, sse or ws", name)
		}
		t |= bit
	}
	return t, nil
}

// mountPrefix is the part of the path the client requested that Caddy
// stripped before this handler (handle_path, uri strip_prefix).
func mountPrefix(r *http.Request) string {
	orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request)
	if !ok {
		return ""
	}
	prefix, found := strings.CutSuffix(orig.URL.Path, r.URL.Path)
	if !found {
		return ""
	}
	return prefix
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if strings.TrimSpace(h.Command) == "" {
		return fmt.Errorf("command is required")
	}
	return h.checkOptions()
}

// configServing is set once a configuration has started in this process:
// every later load is a reload, which must not replace it with one whose
// server cannot serve.
var configServing atomic.Bool

// Handle reacts to Caddy's lifecycle events. "started" warms the pool.
// "stopping" comes on reload and on exit: on a reload that keeps the pool,
// this instance's GET streams close after StreamCloseDelay (Caddy would
// wait on them forever; clients reconnect to the new instance);
// on exit every stream ends now, requests in flight get up to
// DrainTimeout, and the children are stopped before Caddy returns.
func (h *Handler) Handle(_ context.Context, e caddy.Event) error {
	switch e.Name() {
	case "started":
		configServing.Store(true)
		h.keyFile.create(h.logger)
		for _, p := range h.pools {
			p.backend.Start()
		}
		sites := h.findSites()
		h.warnIfOpen(sites)
		h.watchRevocations(sites)
	case "stopping":
		if caddy.Exiting() {
			// Every pool drains at once; Caddy waits for them in the exit
			// callback that Provision registered.
			for _, p := range h.pools {
				p.server.CloseStreams()
				go p.backend.Shutdown()
			}
			return nil
		}
		// Only when the new config keeps this pool: then the sessions live
		// on and their clients reconnect to them. A pool being retired
		// keeps its streams until it has drained, or its clients, finding
		// no session to reconnect to, would give up their requests in
		// flight.
		for _, p := range h.pools {
			if refs, _ := backends.References(p.key); refs > 1 {
				time.AfterFunc(time.Duration(h.StreamCloseDelay), p.server.CloseStreams)
			}
		}
	}
	return nil
}

// Cleanup releases this instance's hold on the shared pool; the last
// holder's release drains and stops it.
func (h *Handler) Cleanup() error {
	h.stopRevocations()
	if h.holdsQuotas {
		quotaFlusher.release()
	}
	var errs []error
	for _, p := range h.pools {
		if _, err := backends.Delete(p.key); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ServeHTTP serves the MCP endpoints and passes other paths on. First the
// Host check (403), which the health report passes too; the health report
// is public; for the rest, in order: the Origin check (403), CORS
// preflights (answered before any key is asked for, as browsers send
// none), the API key (401), then the bridge, which never sees the client's
// credentials.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.OAuth != nil && strings.HasPrefix(r.URL.Path, resourceMetadataPath) && h.hostAllowed(r) && h.serveResourceMetadata(w, r) {
		return nil
	}
	if !h.server.Handles(r) {
		return next.ServeHTTP(w, r)
	}
	if !h.hostAllowed(r) {
		h.logger.Info("refused a request for a host this site does not serve", zap.String("host", r.Host))
		bridge.WriteError(w, http.StatusForbidden, bridge.CodeInvalidRequest,
			"host not allowed: this site does not serve "+strconv.Quote(r.Host)+" (allowed_hosts adds names)")
		return nil
	}
	if h.server.IsHealthCheck(r) {
		if !h.showHealthDetails(r) {
			r = r.WithContext(bridge.WithoutHealthDetails(r.Context()))
		}
		h.server.ServeHTTP(w, r)
		return nil
	}
	if !h.origins.Allow(r) {
		h.logger.Info("refused a request from a disallowed origin", zap.String("origin", r.Header.Get("Origin")))
		bridge.WriteError(w, http.StatusForbidden, bridge.CodeInvalidRequest, "origin not allowed")
		return nil
	}
	if h.CORS != nil {
		if isPreflight(r) {
			h.CORS.preflight(w, r)
			return nil
		}
		h.CORS.allowOrigin(w, r)
	}
	site := h.siteOf(r)
	ctx := bridge.WithSite(r.Context(), site)
	server := h.server
	if h.requiresAuth() {
		c, failure := h.identify(r)
		if failure != nil {
			authDecisions.WithLabelValues(failureReason(failure)).Inc()
			h.refuse(w, r, failure)
			return nil
		}
		ctx = bridge.WithPrincipal(ctx, c.principal)
		if c.credential != "" {
			ctx = bridge.WithCredential(ctx, c.credential)
		}
		if c.fromQuery {
			// A client that can only put its key in URLs needs it in the
			// legacy SSE endpoint event too.
			ctx = bridge.WithEndpointQuery(ctx, "api_key", c.key)
		}
		p := h.policyFor(&c)
		if gate := h.gateFor(p, &c, site); gate != nil {
			ctx = bridge.WithGate(ctx, gate)
		}
		if p != nil && p.pool != nil {
			server = p.pool.server
		}
	}
	stripCredentials(r)
	server.ServeHTTP(w, r.WithContext(ctx))
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyevents.Handler         = (*Handler)(nil)
)
