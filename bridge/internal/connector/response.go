package connector

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// reply follows the messages of one response body, a JSON message or an
// event stream, as they are relayed to the client.
type reply struct {
	// id is the id of the request the body answers; nil for a stream that
	// answers none.
	id       []byte
	answered bool
	// lastID and retry are the last event id and retry field of a stream,
	// for resuming it.
	lastID   string
	retry    time.Duration
	events   int // events read, priming events (without data) too
	messages int // messages read
	// filter, if set, sees each message first, and says whether the
	// client gets it.
	filter func(msg []byte, env *jsonrpc.Envelope) bool
	// endpoint, if set, is told of endpoint events (legacy SSE).
	endpoint func(uri string)
}

// answerLinger is how long a stream may stay open after it answered its
// request: the remote ends it then, and reading to its end keeps the
// connection for the next request; a remote that does not is cut off.
const answerLinger = time.Second

// readBody relays the messages of a response body to the client, until
// the body ends or fails. An event stream ends with io.EOF; a JSON body
// with nil.
func (c *connector) readBody(ctx context.Context, resp *http.Response, r *reply) error {
	defer resp.Body.Close()
	switch mediaType(resp.Header.Get("Content-Type")) {
	case "text/event-stream":
		return c.readEvents(ctx, resp.Body, r)
	case "application/json":
		body, err := io.ReadAll(io.LimitReader(resp.Body, int64(c.cfg.MaxMessageSize)+1))
		if err != nil {
			return err
		}
		if len(body) > c.cfg.MaxMessageSize {
			c.oversize(ctx, body[:min(len(body), jsonrpc.OversizePrefixSize)], r)
			return nil
		}
		if i := jsonrpc.SkipSpace(body, 0); i < len(body) && body[i] == '[' {
			// A batch, which a remote may answer a batch with; the
			// connector sends none, but relays one whole.
			if !jsonrpc.Valid(body) {
				c.log.Warn("dropped a body from the remote that is not JSON")
				return nil
			}
			var msgs [][]byte
			_ = jsonrpc.ScanArray(body, func(m []byte) { msgs = append(msgs, m) })
			for _, m := range msgs {
				if err := c.receive(ctx, m, r); err != nil {
					return err
				}
			}
			return nil
		}
		if len(bytes.TrimSpace(body)) == 0 {
			return nil
		}
		return c.receive(ctx, body, r)
	}
	discard(resp)
	return nil
}

// readEvents relays a stream's message events.
func (c *connector) readEvents(ctx context.Context, body io.ReadCloser, r *reply) error {
	er := newEventReader(body, c.cfg.MaxMessageSize)
	var linger *time.Timer
	defer func() {
		if linger != nil {
			linger.Stop()
		}
	}()
	for {
		ev, err := er.next()
		if err != nil {
			if linger != nil && !errors.Is(err, io.EOF) {
				// Cut off after its answer: done all the same.
				return io.EOF
			}
			return err
		}
		r.events++
		if ev.hasID {
			r.lastID = ev.id
		}
		if ev.retry > 0 {
			r.retry = ev.retry
		}
		switch {
		case ev.name == "endpoint" && r.endpoint != nil:
			r.endpoint(string(ev.data))
		case ev.name != "" && ev.name != "message":
		case ev.tooLarge:
			c.oversize(ctx, ev.prefix, r)
		case len(ev.data) > 0:
			if err := c.receive(ctx, ev.data, r); err != nil {
				return err
			}
		}
		if r.answered && r.id != nil && linger == nil {
			linger = time.AfterFunc(answerLinger, func() { body.Close() })
		}
	}
}

// receive relays one message from the remote to the client.
func (c *connector) receive(ctx context.Context, msg []byte, r *reply) error {
	if !jsonrpc.Valid(msg) {
		c.log.Warn("dropped a message from the remote that is not JSON", zap.Int("bytes", len(msg)))
		return nil
	}
	env, err := jsonrpc.ParseEnvelope(msg)
	if err != nil {
		c.log.Warn("dropped a message from the remote that is not a JSON-RPC message", zap.Int("bytes", len(msg)))
		return nil
	}
	r.messages++
	if r.id != nil && !r.answered && env.Kind() == jsonrpc.KindResponse && bytes.Equal(env.ID, r.id) {
		r.answered = true
	}
	if r.filter != nil && !r.filter(msg, &env) {
		return nil
	}
	return c.out.send(ctx, msg)
}

// oversize answers, with an error, a response from the remote that was
// too large, when its start shows its id; a request or notification that
// was too large is only logged.
func (c *connector) oversize(ctx context.Context, prefix []byte, r *reply) {
	id := jsonrpc.Member(prefix, "id")
	c.log.Warn("a message from the remote exceeds the maximum size; dropped it",
		zap.Int("max_message_size", c.cfg.MaxMessageSize), zap.ByteString("id", id))
	if id == nil || !jsonrpc.ValidID(id) || jsonrpc.Member(prefix, "method") != nil {
		return
	}
	msg := jsonrpc.ErrorResponse(id, jsonrpc.CodeInternalError, "the remote MCP server's response exceeds the maximum message size (--max-message-size)")
	_ = c.receive(ctx, msg, r)
}
