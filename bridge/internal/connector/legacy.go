package connector

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// The legacy HTTP+SSE transport (protocol 2024-11-05): a GET opens the
// session's one stream, whose first event, "endpoint", names the URI to
// POST messages to (relative to the stream's); each POST is answered 202,
// and everything the remote sends, answers included, comes down the
// stream as "message" events.

// legacy is the legacy transport of a connector.
type legacy struct {
	c *connector

	mu       sync.Mutex
	endpoint string        // where messages go; "" while there is no session
	ready    chan struct{} // closed once endpoint is set
	pending  map[string]bool
	opened   bool          // a session was open once: the next one must be initialized by the connector
	reinit   []byte        // the id of the connector's own initialize while it waits for its answer
	answered chan struct{} // closed when that answer came
	cancel   context.CancelFunc
}

// useLegacy switches the connector to the legacy transport, for good,
// and opens its stream.
func (c *connector) useLegacy() *legacy {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.legacy == nil {
		c.legacy = &legacy{c: c, ready: make(chan struct{}), pending: map[string]bool{}}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.legacy.run()
		}()
	}
	return c.legacy
}

// legacyTransport is the legacy transport, or nil when not in use.
func (c *connector) legacyTransport() *legacy {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.legacy
}

// run keeps the stream open until the connector stops. A stream that
// drops is resumed with Last-Event-ID, in the same session if the remote
// still has it; otherwise a new session is opened, and initialized with
// the client's initialize again.
func (l *legacy) run() {
	c := l.c
	var lastID string
	var delay time.Duration
	for {
		ctx, cancel := context.WithCancel(c.ctx)
		l.mu.Lock()
		l.cancel = cancel
		l.mu.Unlock()
		resp, err := c.do(ctx, c.get(session{}, lastID), nil)
		if c.ctx.Err() != nil {
			if err == nil {
				resp.Body.Close()
			}
			cancel()
			return
		}
		switch {
		case err != nil:
			c.log.Warn("cannot open the legacy SSE stream", zap.Error(err))
		case resp.StatusCode == http.StatusOK:
			r := &reply{filter: l.filter, endpoint: l.setEndpoint}
			err := c.readBody(ctx, resp, r)
			if c.ctx.Err() != nil {
				cancel()
				return
			}
			c.log.Info("the legacy SSE stream ended; opening it again", zap.Error(err))
			if r.lastID == "" || ctx.Err() != nil {
				l.lost() // no way back into this session
			}
			lastID = r.lastID
			if ctx.Err() != nil {
				lastID = ""
			}
			if r.events > 0 {
				delay = 0
			}
		case resp.StatusCode == http.StatusNotFound && lastID != "":
			discard(resp)
			lastID = ""
			l.lost()
			delay = 0
			cancel()
			continue
		default:
			c.log.Warn("the remote refused the legacy SSE stream", zap.Int("status", resp.StatusCode),
				zap.String("error", errorMessage(c.refusal(nil, resp))))
			delay = max(delay, maxBackoff/2)
		}
		cancel()
		if !sleep(c.ctx, delay) {
			return
		}
		delay = nextBackoff(delay)
	}
}

// setEndpoint takes the endpoint event of a stream. The first session is
// the client's to initialize; a later one the connector initializes
// before the client's messages go to it.
func (l *legacy) setEndpoint(uri string) {
	u, err := l.c.endpoint.Parse(uri)
	if err != nil {
		l.c.log.Warn("the remote's endpoint event is not a URI", zap.String("uri", uri))
		return
	}
	l.mu.Lock()
	if l.endpoint == u.String() {
		l.mu.Unlock()
		return // the same session, resumed
	}
	renew := l.opened
	l.opened = true
	l.mu.Unlock()
	if !renew {
		l.open(u.String())
		return
	}
	l.c.wg.Add(1)
	go func() {
		defer l.c.wg.Done()
		l.reinitialize(u.String())
	}()
}

// open makes endpoint where messages go.
func (l *legacy) open(endpoint string) {
	l.mu.Lock()
	l.endpoint = endpoint
	select {
	case <-l.ready:
	default:
		close(l.ready)
	}
	l.mu.Unlock()
}

// lost ends the session: its requests will not be answered.
func (l *legacy) lost() {
	l.mu.Lock()
	if l.endpoint == "" {
		l.mu.Unlock()
		return
	}
	l.endpoint = ""
	l.ready = make(chan struct{})
	pending := l.pending
	l.pending = map[string]bool{}
	l.mu.Unlock()
	for id := range pending {
		l.c.answer([]byte(id), jsonrpc.CodeSessionNotFound, "the remote session ended before it answered the request")
	}
}

// reinitialize initializes a new session with the client's initialize,
// under an id of the connector's, before the client's messages go to it.
func (l *legacy) reinitialize(endpoint string) {
	c := l.c
	c.mu.Lock()
	init := c.initMsg
	c.renewals++
	n := c.renewals
	c.mu.Unlock()
	if init == nil {
		l.open(endpoint)
		return
	}
	env, _ := jsonrpc.ParseEnvelope(init)
	id := ownID("initialize", n)
	answered := make(chan struct{})
	l.mu.Lock()
	l.reinit, l.answered = id, answered
	l.mu.Unlock()
	err := l.post(c.ctx, endpoint, jsonrpc.ApplySplices(init, jsonrpc.Splice{Old: env.ID, New: id}))
	if err == nil {
		t := time.NewTimer(max(c.cfg.RetryFor, time.Second))
		select {
		case <-answered:
		case <-t.C:
			err = errors.New("the remote did not answer initialize")
		case <-c.ctx.Done():
			err = c.ctx.Err()
		}
		t.Stop()
	}
	if err == nil {
		err = l.post(c.ctx, endpoint, initializedMsg)
	}
	l.open(endpoint)
	if err != nil {
		c.log.Warn("could not initialize a new legacy SSE session", zap.Error(err))
		return
	}
	c.log.Info("opened a new remote session")
	_ = c.out.send(c.ctx, sessionRenewedNotice)
}

// filter keeps the answer to the connector's own initialize from the
// client, and notes the requests answered.
func (l *legacy) filter(msg []byte, env *jsonrpc.Envelope) bool {
	if env.Kind() != jsonrpc.KindResponse {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reinit != nil && bytes.Equal(env.ID, l.reinit) {
		l.reinit = nil
		close(l.answered)
		return false
	}
	delete(l.pending, string(env.ID))
	return true
}

// waitEndpoint returns where messages go, once the stream said so, and
// waits no longer than RetryFor for that.
func (l *legacy) waitEndpoint(ctx context.Context) (string, error) {
	t := time.NewTimer(max(l.c.cfg.RetryFor, time.Second))
	defer t.Stop()
	for {
		l.mu.Lock()
		endpoint, ready := l.endpoint, l.ready
		l.mu.Unlock()
		if endpoint != "" {
			return endpoint, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return "", ctx.Err()
		case <-t.C:
			return "", &unreachableError{url: l.c.redactedURL(), reason: "its SSE stream named no endpoint", retryFor: l.c.cfg.RetryFor}
		}
	}
}

// post sends msg to endpoint, and reports an error unless the remote took
// it.
func (l *legacy) post(ctx context.Context, endpoint string, msg []byte) error {
	resp, err := l.c.do(ctx, func(ctx context.Context) (*http.Request, error) {
		return l.c.newRequest(ctx, http.MethodPost, endpoint, msg)
	}, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return errors.New(errorMessage(l.c.refusal(nil, resp)))
	}
	discard(resp)
	return nil
}

// send relays a message of the client, and returns once the remote took
// it; a request's answer comes on the stream. A request that finds the
// session gone is sent again in the next.
func (l *legacy) send(ctx context.Context, msg []byte, env *jsonrpc.Envelope) {
	c := l.c
	request := env.Kind() == jsonrpc.KindRequest
	for attempt := 0; attempt < 2; attempt++ {
		endpoint, err := l.waitEndpoint(ctx)
		if err != nil {
			if request {
				c.fail(env.ID, err)
			}
			return
		}
		if request {
			l.mu.Lock()
			l.pending[string(env.ID)] = true
			l.mu.Unlock()
		}
		resp, err := c.do(ctx, func(ctx context.Context) (*http.Request, error) {
			return c.newRequest(ctx, http.MethodPost, endpoint, msg)
		}, nil)
		if err == nil && resp.StatusCode >= 200 && resp.StatusCode <= 299 {
			discard(resp)
			return
		}
		if request {
			l.mu.Lock()
			delete(l.pending, string(env.ID))
			l.mu.Unlock()
		}
		switch {
		case err != nil:
			if request {
				c.fail(env.ID, err)
			}
			return
		case resp.StatusCode == http.StatusNotFound && request:
			discard(resp)
			l.sessionGone(endpoint)
			continue
		case request:
			_ = c.out.send(c.ctx, c.refusal(env.ID, resp))
		default:
			c.log.Warn("the remote refused a message", zap.String("method", env.MethodName()), zap.String("error", errorMessage(c.refusal(nil, resp))))
		}
		return
	}
	if request {
		c.fail(env.ID, errors.New("the remote session ended, and the new one did not take the request either"))
	}
}

// sessionGone ends the session at endpoint, which the remote no longer
// knows, and has the stream open a new one.
func (l *legacy) sessionGone(endpoint string) {
	l.mu.Lock()
	current, cancel := l.endpoint == endpoint, l.cancel
	l.mu.Unlock()
	if current {
		l.lost()
		cancel()
	}
}
