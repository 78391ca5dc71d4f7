// Package connector relays a stdio MCP client to a remote MCP endpoint: it
// reads the client's messages, one a line, and sends them over Streamable
// HTTP (sessions of 2025-11-25 and earlier, or the stateless 2026-07-28
// protocol) or the legacy HTTP+SSE transport, and writes what the remote
// sends back, one message a line. Messages pass unchanged: only their
// envelopes are read.
//
// The remote side is its own HTTP client rather than an SDK's transport,
// because it must decide for itself when to retry (the remote is down),
// when to resume a stream (it dropped) and when to open a new session (the
// remote forgot the old one), without the local client noticing.
//
// # Goroutines
//
// Run owns every goroutine it starts and waits for them, but two: the one
// reading the client's input, which ends when its Read returns (at once
// when the input closes), and the one writing the client's output, which
// ends when its Write returns, if the client stopped reading.
package connector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// Config says where the connector relays to and how.
type Config struct {
	// URL is the remote endpoint: a Streamable HTTP endpoint (this
	// bridge's /mcp, or any server's), or a legacy SSE stream (/sse).
	URL string
	// Header is sent with every request: credentials, and whatever else
	// the remote or a proxy in front of it wants.
	Header http.Header
	// Insecure skips the verification of the remote's TLS certificate,
	// for a Caddy that serves `tls internal` to a machine that does not
	// trust its CA.
	Insecure bool
	// RetryFor is how long a message is sent again while the remote is
	// down (refusing connections, or answered by a proxy with 502, 503 or
	// 504), before the request gets an error; zero means
	// DefaultRetryFor, negative no retry.
	RetryFor time.Duration
	// MaxMessageSize bounds a message in either direction; zero means 16
	// MiB.
	MaxMessageSize int
	// Transport is "" to use Streamable HTTP, or the legacy SSE transport
	// when the remote does not take a POST of initialize at a URL that
	// does not end in /mcp; "streamable" or "sse" use only that one.
	Transport string
	// AuthHint is added to the error a request gets when the remote
	// refuses the credentials, to say how to give others.
	AuthHint string
	// Auth, if set, supplies credentials that change while Connect runs,
	// such as OAuth access tokens that are refreshed.
	Auth Auth
	// Logger logs what happens; nil logs nothing. It must not write to
	// the output Connect writes to.
	Logger *zap.Logger
}

// Auth supplies credentials that may change while the connector runs.
type Auth interface {
	// Apply sets the current credentials on a request's header.
	Apply(ctx context.Context, h http.Header) error
	// Refused is told of a 401 answer. It reports whether new credentials
	// were obtained, so that the request is worth sending again.
	Refused(ctx context.Context, resp *http.Response) (bool, error)
}

// The transports of Config.Transport.
const (
	// TransportAuto is Streamable HTTP, falling back to legacy SSE when
	// the remote does not take a POST of initialize at a URL that is not
	// a usual Streamable HTTP endpoint.
	TransportAuto       = ""
	TransportStreamable = "streamable"
	TransportSSE        = "sse"
)

// DefaultRetryFor is how long a message is retried while the remote is
// down, when Config.RetryFor is zero: long enough for a Caddy restart.
const DefaultRetryFor = time.Minute

// maxInFlight bounds the requests relayed at once: beyond it, reading the
// client's input waits.
const maxInFlight = 64

// shutdownWait bounds what stopping waits for: the DELETE of the session,
// and the output's writer, whose client may have stopped reading.
const shutdownWait = 3 * time.Second

// connector relays one local client.
type connector struct {
	cfg      Config
	endpoint *url.URL
	url      string // endpoint, as requests take it
	client   *http.Client
	log      *zap.Logger
	out      *output
	ctx      context.Context // ends when the connector stops
	wg       sync.WaitGroup  // the goroutines of requests and streams
	slots    chan struct{}   // one per request in flight

	mu        sync.Mutex
	sess      session  // the remote session, if any
	initMsg   []byte   // the client's initialize, replayed on a new session
	renewal   *renewal // the opening of a new session under way, if any
	renewals  int      // sessions opened by the connector
	listening bool     // the GET stream runs
	inflight  map[string]*inflight
	legacy    *legacy // the legacy SSE transport, once in use
}

// inflight is a request of the client being relayed.
type inflight struct {
	cancel    context.CancelFunc // ends its HTTP exchange
	stateless bool
	cancelled bool // the client cancelled it: it needs no answer
}

// Run relays between a stdio MCP client, whose messages it reads from in
// and whose input it writes to out, and the remote endpoint of cfg. It
// returns nil when in ends, having ended the remote session, and the
// context's error when ctx ends first.
func Run(ctx context.Context, cfg Config, in io.Reader, out io.Writer) error {
	endpoint, err := parseURL(cfg.URL)
	if err != nil {
		return err
	}
	switch cfg.Transport {
	case TransportAuto, TransportStreamable, TransportSSE:
	default:
		return fmt.Errorf("unknown transport %q: want %q or %q", cfg.Transport, TransportStreamable, TransportSSE)
	}
	if cfg.RetryFor == 0 {
		cfg.RetryFor = DefaultRetryFor
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = jsonrpc.DefaultMaxMessageSize
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	c := &connector{
		cfg:      cfg,
		endpoint: endpoint,
		url:      endpoint.String(),
		client:   newHTTPClient(cfg.Insecure),
		log:      cfg.Logger,
		slots:    make(chan struct{}, maxInFlight),
		inflight: map[string]*inflight{},
	}
	return c.run(ctx, in, out)
}

// parseURL checks that raw is an http or https URL with a host.
func parseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an http:// or https:// URL of an MCP endpoint, such as https://mcp.example.com/mcp", raw)
	}
	return u, nil
}

// input is one line of the client's input, or why there is none.
type input struct {
	line   []byte
	prefix []byte // the start of a line that was too long
	err    error
}

func (c *connector) run(parent context.Context, in io.Reader, w io.Writer) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	c.ctx = ctx
	// A client that no longer reads is gone, and so is the point of
	// relaying.
	c.out = newOutput(w, cancel)
	go c.out.run()
	if c.cfg.Transport == TransportSSE {
		c.useLegacy()
	}

	lines := make(chan input)
	go readInput(ctx.Done(), jsonrpc.NewLineReader(in, c.cfg.MaxMessageSize), lines)
	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			err = parent.Err()
			break loop
		case in := <-lines:
			switch {
			case in.err == nil:
				c.dispatch(in.line)
			case errors.Is(in.err, jsonrpc.ErrMessageTooLarge):
				c.refuseOversize(in.prefix)
			case errors.Is(in.err, io.EOF):
				c.log.Debug("stdin closed; stopping")
				break loop
			default:
				err = fmt.Errorf("reading the client's messages: %w", in.err)
				break loop
			}
		}
	}
	cancel()
	c.wg.Wait()
	c.endSession(parent)
	c.client.CloseIdleConnections()
	done, writeErr := c.out.close(shutdownWait)
	if !done {
		c.log.Warn("the client does not read its input; leaving what it did not read")
	}
	if err == nil && writeErr != nil && parent.Err() == nil {
		err = fmt.Errorf("writing to the client: %w", writeErr)
	}
	return err
}

// readInput sends the client's lines to lines until the input ends or
// fails, or done closes.
func readInput(done <-chan struct{}, lr *jsonrpc.LineReader, lines chan<- input) {
	for {
		line, err := lr.Next()
		in := input{line: line, err: err}
		if errors.Is(err, jsonrpc.ErrMessageTooLarge) {
			in.prefix = bytes.Clone(lr.OversizePrefix())
		}
		select {
		case lines <- in:
		case <-done:
			return
		}
		if err != nil && !errors.Is(err, jsonrpc.ErrMessageTooLarge) {
			return
		}
	}
}

// refuseOversize answers a message of the client that was too long, if
// its start shows that it was a request.
func (c *connector) refuseOversize(prefix []byte) {
	id := jsonrpc.Member(prefix, "id")
	c.log.Warn("a message from the client exceeds the maximum size; dropped it",
		zap.Int("max_message_size", c.cfg.MaxMessageSize), zap.ByteString("id", id))
	if id != nil && jsonrpc.ValidID(id) && jsonrpc.Member(prefix, "method") != nil {
		c.answer(id, jsonrpc.CodeInvalidRequest, fmt.Sprintf("the message exceeds the maximum size of %d bytes (--max-message-size)", c.cfg.MaxMessageSize))
	}
}

// dispatch relays one message of the client. Notifications and responses
// are sent before the next message is read, and a request at least begun
// (written, or failed once), so that the remote gets them in the client's
// order as far as HTTP allows; a request's answer is waited for apart.
func (c *connector) dispatch(msg []byte) {
	if !jsonrpc.Valid(msg) {
		c.log.Warn("the client sent a line that is not JSON; dropped it", zap.Int("bytes", len(msg)))
		c.answer(nil, jsonrpc.CodeParseError, "parse error: a message must be one JSON-RPC message on one line")
		return
	}
	env, err := jsonrpc.ParseEnvelope(msg)
	kind := env.Kind()
	if err != nil || kind == jsonrpc.KindInvalid {
		c.log.Warn("the client sent an invalid JSON-RPC message; dropped it")
		if env.ID != nil && jsonrpc.ValidID(env.ID) {
			c.answer(env.ID, jsonrpc.CodeInvalidRequest, "invalid JSON-RPC message")
		}
		return
	}
	switch kind {
	case jsonrpc.KindRequest:
		if version := statelessVersion(&env); version != "" {
			if c.legacyTransport() != nil {
				// Not even worth asking: a client that speaks both
				// protocols falls back to initialize on this.
				c.answer(env.ID, jsonrpc.CodeInvalidRequest, "the remote speaks the legacy SSE transport (protocol 2024-11-05), which has no stateless requests: send initialize")
				return
			}
			c.start(msg, &env, true, func(ctx context.Context, sent func()) { c.statelessRequest(ctx, msg, &env, version, sent) })
			return
		}
		if env.MethodName() == "initialize" {
			c.mu.Lock()
			c.initMsg = msg
			c.mu.Unlock()
		}
		if l := c.legacyTransport(); l != nil {
			l.send(c.ctx, msg, &env)
			return
		}
		c.start(msg, &env, false, func(ctx context.Context, sent func()) { c.sessionRequest(ctx, msg, &env, sent) })
	default:
		if kind == jsonrpc.KindNotification && env.MethodName() == "notifications/cancelled" && c.cancelled(env.Params) {
			return
		}
		if l := c.legacyTransport(); l != nil {
			l.send(c.ctx, msg, &env)
			return
		}
		c.notify(msg, &env)
	}
}

// start relays a request in a goroutine of its own, once there is room,
// and returns when the request is written or first failed.
func (c *connector) start(msg []byte, env *jsonrpc.Envelope, stateless bool, relay func(ctx context.Context, sent func())) {
	select {
	case c.slots <- struct{}{}:
	case <-c.ctx.Done():
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	req := &inflight{cancel: cancel, stateless: stateless}
	key := string(env.ID)
	c.mu.Lock()
	c.inflight[key] = req
	c.mu.Unlock()
	sent := make(chan struct{})
	var once sync.Once
	signal := func() { once.Do(func() { close(sent) }) }
	c.wg.Add(1)
	go func() {
		defer func() {
			c.mu.Lock()
			if c.inflight[key] == req {
				delete(c.inflight, key)
			}
			c.mu.Unlock()
			cancel()
			signal()
			<-c.slots
			c.wg.Done()
		}()
		relay(ctx, signal)
	}()
	select {
	case <-sent:
	case <-c.ctx.Done():
	}
}

// cancelGrace is how long the stream of a request the client cancelled
// may stay open for the remote to end it, before the connector closes it
// to free its slot: a server need not answer a cancelled request.
const cancelGrace = 10 * time.Second

// cancelled notes that the client cancelled a request, and reports whether
// that is all there is to do. A stateless request is cancelled by closing
// its stream; a session's is cancelled by the notification, which still
// goes to the remote.
func (c *connector) cancelled(params []byte) bool {
	id := jsonrpc.Member(params, "requestId")
	c.mu.Lock()
	req := c.inflight[string(id)]
	if req != nil {
		req.cancelled = true
	}
	c.mu.Unlock()
	if req == nil {
		return false
	}
	if req.stateless {
		req.cancel()
		return true
	}
	time.AfterFunc(cancelGrace, req.cancel)
	return false
}

// wasCancelled reports whether the client cancelled its request id.
func (c *connector) wasCancelled(id []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	req := c.inflight[string(id)]
	return req != nil && req.cancelled
}

// answer writes a JSON-RPC error for the client's request id (nil: an
// error with a null id).
func (c *connector) answer(id []byte, code int, message string) {
	_ = c.out.send(c.ctx, jsonrpc.ErrorResponse(id, code, message))
}

// fail answers the client's request id with the error that ended its
// relay, unless the client cancelled it or the connector is stopping.
func (c *connector) fail(id []byte, err error) {
	if c.ctx.Err() != nil || c.wasCancelled(id) {
		return
	}
	code := jsonrpc.CodeInternalError
	var unreachable *unreachableError
	if errors.As(err, &unreachable) {
		code = codeUnreachable
	}
	c.log.Warn("a request failed", zap.ByteString("id", id), zap.Error(err))
	c.answer(id, code, err.Error())
}

// sleep waits for d, and reports false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
