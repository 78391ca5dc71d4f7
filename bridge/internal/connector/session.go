package connector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"

	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// Streamable HTTP with sessions (protocol 2025-11-25 and earlier): each
// message is a POST; a request's answer, and what the remote sends while
// working on it, come back in the POST's response, a JSON message or an
// event stream that is resumed with GET and Last-Event-ID if it drops.

// session is a remote Streamable HTTP session.
type session struct {
	id      string // Mcp-Session-Id; "" before initialize, or for a remote that keeps none
	version string // the protocol version the remote chose, sent as MCP-Protocol-Version
	gen     int    // counts the sessions opened; 0 before the first
}

// setHeaders names the session on a request.
func (s session) setHeaders(h http.Header) {
	if s.id != "" {
		h["Mcp-Session-Id"] = []string{s.id}
	}
	if s.version != "" {
		h["Mcp-Protocol-Version"] = []string{s.version}
	}
}

// session returns the current remote session.
func (c *connector) session() session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess
}

// post makes POSTs of msg in sess.
func (c *connector) post(msg []byte, sess session) func(context.Context) (*http.Request, error) {
	return func(ctx context.Context) (*http.Request, error) {
		req, err := c.newRequest(ctx, http.MethodPost, c.url, msg)
		if err == nil {
			sess.setHeaders(req.Header)
		}
		return req, err
	}
}

// get makes GETs of sess's stream, or of the stream an event id names.
func (c *connector) get(sess session, lastID string) func(context.Context) (*http.Request, error) {
	return func(ctx context.Context) (*http.Request, error) {
		req, err := c.newRequest(ctx, http.MethodGet, c.url, nil)
		if err == nil {
			sess.setHeaders(req.Header)
			if lastID != "" {
				req.Header.Set("Last-Event-ID", lastID)
			}
		}
		return req, err
	}
}

// streamablePath reports whether a URL path looks like a Streamable HTTP
// endpoint, where a 404 to initialize means a wrong URL rather than a
// legacy SSE server.
func streamablePath(p string) bool {
	return path.Base(p) == "mcp"
}

// sessionRequest relays a request of the client in the remote session. A
// session the remote forgot (404) is opened again, and the request sent
// again in the new one.
func (c *connector) sessionRequest(ctx context.Context, msg []byte, env *jsonrpc.Envelope, sent func()) {
	initialize := env.MethodName() == "initialize"
	renewed := false
	for {
		var sess session
		if !initialize {
			sess = c.session()
		}
		resp, err := c.do(ctx, c.post(msg, sess), sent)
		if err != nil {
			c.fail(env.ID, err)
			return
		}
		status := resp.StatusCode
		switch {
		case status == http.StatusNotFound && sess.id != "" && !renewed:
			discard(resp)
			if err := c.renew(sess); err != nil {
				c.fail(env.ID, err)
				return
			}
			renewed = true
			continue
		case initialize && (status == http.StatusNotFound || status == http.StatusMethodNotAllowed) &&
			c.cfg.Transport == TransportAuto && !streamablePath(c.endpoint.Path):
			discard(resp)
			c.log.Info("the remote does not take Streamable HTTP at this URL; using the legacy SSE transport", zap.Int("status", status))
			c.useLegacy().send(ctx, msg, env)
			return
		case status < 200 || status > 299:
			_ = c.out.send(c.ctx, c.refusal(env.ID, resp))
			return
		}
		r := &reply{id: env.ID}
		if initialize {
			r.filter = c.initializeFilter(env.ID, resp.Header.Get("Mcp-Session-Id"))
		}
		err = c.readBody(ctx, resp, r)
		if r.answered || status == http.StatusAccepted || ctx.Err() != nil || c.wasCancelled(env.ID) {
			// A remote may end the stream of a request the client
			// cancelled without an answer: none is missing.
			return
		}
		c.resume(ctx, sess, r, err)
		return
	}
}

// initializeFilter records the session that the answer to the client's
// initialize opens, before the client gets the answer and sends more.
func (c *connector) initializeFilter(id []byte, sessionID string) func([]byte, *jsonrpc.Envelope) bool {
	return func(msg []byte, env *jsonrpc.Envelope) bool {
		if env.Kind() == jsonrpc.KindResponse && bytes.Equal(env.ID, id) && env.Result != nil {
			version := jsonrpc.StringValue(jsonrpc.Member(env.Result, "protocolVersion"))
			c.mu.Lock()
			c.sess = session{id: sessionID, version: version, gen: c.sess.gen + 1}
			c.mu.Unlock()
			c.log.Debug("opened a remote session", zap.String("protocol", version))
		}
		return true
	}
}

// maxStalls is how many times in a row a request's stream may be resumed
// without bringing a message, before the request is given up.
const maxStalls = 5

// resume follows a request's stream that ended before its answer, with
// GET and the last event id, as Streamable HTTP 2025-11-25 allows.
func (c *connector) resume(ctx context.Context, sess session, r *reply, cause error) {
	stalls := 0
	for r.lastID != "" && stalls < maxStalls {
		if !sleep(ctx, r.retry) {
			return
		}
		messages := r.messages
		resp, err := c.do(ctx, c.get(sess, r.lastID), nil)
		if err != nil {
			c.fail(r.id, err)
			return
		}
		if resp.StatusCode != http.StatusOK {
			if resp.StatusCode == http.StatusNotFound {
				discard(resp)
				c.fail(r.id, errors.New("the remote session ended before it answered the request"))
				return
			}
			_ = c.out.send(c.ctx, c.refusal(r.id, resp))
			return
		}
		c.log.Debug("resumed a request's stream", zap.ByteString("id", r.id))
		cause = c.readBody(ctx, resp, r)
		if r.answered || ctx.Err() != nil || c.wasCancelled(r.id) {
			return
		}
		if r.messages == messages {
			stalls++
		} else {
			stalls = 0
		}
	}
	if ctx.Err() == nil {
		c.fail(r.id, unanswered(cause))
	}
}

// unanswered is the error of a request whose stream ended, for cause,
// without its answer.
func unanswered(cause error) error {
	if cause == nil || errors.Is(cause, io.EOF) {
		return errors.New("the remote closed the request's stream before it answered")
	}
	return fmt.Errorf("the remote's stream broke before it answered the request: %w", cause)
}

// notify relays a notification or a response of the client in the
// remote session, and returns once the remote took it.
func (c *connector) notify(msg []byte, env *jsonrpc.Envelope) {
	sess := c.session()
	if sess.gen == 0 {
		c.log.Debug("no remote session yet; dropped a message", zap.String("method", env.MethodName()))
		return
	}
	resp, err := c.do(c.ctx, c.post(msg, sess), nil)
	if err != nil {
		if c.ctx.Err() == nil {
			c.log.Warn("could not relay a message", zap.String("method", env.MethodName()), zap.Error(err))
		}
		return
	}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode <= 299:
		discard(resp)
		if env.MethodName() == "notifications/initialized" {
			c.listen()
		}
	case resp.StatusCode == http.StatusNotFound && sess.id != "":
		// What the old session's requests or notifications were about
		// is gone with it; the next request opens a new session.
		discard(resp)
		c.log.Info("the remote session ended; dropped a message that belonged to it", zap.String("method", env.MethodName()))
	default:
		c.log.Warn("the remote refused a message", zap.String("method", env.MethodName()), zap.String("error", errorMessage(c.refusal(nil, resp))))
	}
}

// errorMessage is the message of a JSON-RPC error response.
func errorMessage(response []byte) string {
	return jsonrpc.StringValue(jsonrpc.Member(jsonrpc.Member(response, "error"), "message"))
}

// renewal is the opening of a new remote session, which every request
// that found the old one gone waits for.
type renewal struct {
	done chan struct{}
	err  error
}

// renew opens a new remote session in place of old, which the remote
// forgot: it sends the client's initialize again (with an id of its own,
// and keeps the answer), then notifications/initialized, and tells the
// client what that reset. Concurrent calls for the same session open one.
func (c *connector) renew(old session) error {
	c.mu.Lock()
	if c.sess.gen != old.gen {
		c.mu.Unlock()
		return nil
	}
	if rn := c.renewal; rn != nil {
		c.mu.Unlock()
		select {
		case <-rn.done:
			return rn.err
		case <-c.ctx.Done():
			return c.ctx.Err()
		}
	}
	init := c.initMsg
	if init == nil {
		c.mu.Unlock()
		return errors.New("the remote session ended, and the client never sent an initialize to open another with")
	}
	rn := &renewal{done: make(chan struct{})}
	c.renewal = rn
	c.renewals++
	n := c.renewals
	c.mu.Unlock()

	c.log.Warn("the remote session ended (the server restarted, or the session idled out); opening a new one")
	sess, err := c.reinitialize(init, n)
	c.mu.Lock()
	if err == nil {
		sess.gen = c.sess.gen + 1
		c.sess = sess
	} else {
		err = fmt.Errorf("the remote session ended, and opening a new one failed: %w", err)
	}
	c.renewal = nil
	rn.err = err
	c.mu.Unlock()
	close(rn.done)
	if err != nil {
		return err
	}
	c.log.Info("opened a new remote session")
	_ = c.out.send(c.ctx, sessionRenewedNotice)
	return nil
}

// reinitialize opens a session with the client's initialize request init,
// under the connector's nth id, and returns it.
func (c *connector) reinitialize(init []byte, n int) (session, error) {
	env, _ := jsonrpc.ParseEnvelope(init)
	id := ownID("initialize", n)
	msg := jsonrpc.ApplySplices(init, jsonrpc.Splice{Old: env.ID, New: id})
	resp, err := c.do(c.ctx, c.post(msg, session{}), nil)
	if err != nil {
		return session{}, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return session{}, errors.New(errorMessage(c.refusal(id, resp)))
	}
	var sess session
	var refused []byte
	r := &reply{id: id, filter: func(m []byte, e *jsonrpc.Envelope) bool {
		if e.Kind() != jsonrpc.KindResponse || !bytes.Equal(e.ID, id) {
			return true // what the remote says on the way is the client's
		}
		if e.Result != nil {
			sess.version = jsonrpc.StringValue(jsonrpc.Member(e.Result, "protocolVersion"))
		} else {
			refused = e.Error
		}
		return false
	}}
	sessionID := resp.Header.Get("Mcp-Session-Id")
	err = c.readBody(c.ctx, resp, r)
	switch {
	case !r.answered:
		return session{}, fmt.Errorf("the remote did not answer initialize (%v)", err)
	case refused != nil:
		return session{}, fmt.Errorf("the remote refused initialize: %s", refused)
	}
	sess.id = sessionID
	resp, err = c.do(c.ctx, c.post(initializedMsg, sess), nil)
	if err != nil {
		return session{}, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return session{}, errors.New(errorMessage(c.refusal(nil, resp)))
	}
	discard(resp)
	return sess, nil
}

// endSession ends the remote session with DELETE, as a client that is
// done should, so that the remote frees it at once.
func (c *connector) endSession(parent context.Context) {
	sess := c.session()
	if sess.id == "" || c.legacyTransport() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), shutdownWait)
	defer cancel()
	req, err := c.newRequest(ctx, http.MethodDelete, c.url, nil)
	if err != nil {
		return
	}
	sess.setHeaders(req.Header)
	resp, err := c.client.Do(req)
	if err != nil {
		c.log.Debug("could not end the remote session", zap.String("error", errText(err)))
		return
	}
	discard(resp)
	c.log.Debug("ended the remote session", zap.Int("status", resp.StatusCode))
}
