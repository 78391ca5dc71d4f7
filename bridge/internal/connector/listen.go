package connector

import (
	"net/http"
	"time"

	"go.uber.org/zap"
)

// The GET stream of a Streamable HTTP session carries what the remote
// sends outside any request: list changes, resource updates, log messages,
// and requests of its own (sampling, elicitation, roots, pings) that it
// cannot tie to a request.

// listen starts the GET stream, once: after the client initialized its
// session, for the connector's life.
func (c *connector) listen() {
	c.mu.Lock()
	started := c.listening
	c.listening = true
	c.mu.Unlock()
	if started {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.stream()
	}()
}

// stream keeps the GET stream of the current session open until the
// connector stops. A stream that ends is opened again with Last-Event-ID
// (a reload of the remote ends it, and it resumes where it stopped); one
// that fails to open is tried again with backoff; a session the remote
// forgot is opened again, which also tells the client, before its next
// request, that the remote's state was reset.
func (c *connector) stream() {
	var delay time.Duration
	var lastID string
	refusedWith := 0 // the status of the last refusal
	gen := -1
	for {
		sess := c.session()
		if sess.gen != gen {
			gen, lastID = sess.gen, ""
		}
		req, err := c.get(sess, lastID)(c.ctx)
		if err != nil {
			c.log.Warn("cannot open the GET stream", zap.Error(err))
			return
		}
		resp, err := c.client.Do(req)
		if c.ctx.Err() != nil {
			if err == nil {
				resp.Body.Close()
			}
			return
		}
		switch {
		case err != nil:
			c.log.Debug("the GET stream could not connect; trying again", zap.String("error", errText(err)))
		case resp.StatusCode == http.StatusOK:
			refusedWith = 0
			r := &reply{}
			err := c.readBody(c.ctx, resp, r)
			if c.ctx.Err() != nil {
				return
			}
			if r.lastID != "" {
				lastID = r.lastID
			}
			c.log.Debug("the GET stream ended; opening it again", zap.Error(err), zap.Int("events", r.events))
			if r.events > 0 {
				// It worked for a while: come back at once, or when the
				// remote asked to.
				delay = r.retry
				if !sleep(c.ctx, delay) {
					return
				}
				delay = 0
				continue
			}
		case resp.StatusCode == http.StatusMethodNotAllowed:
			discard(resp)
			c.log.Debug("the remote offers no GET stream")
			return
		case resp.StatusCode == http.StatusNotFound && sess.id != "":
			discard(resp)
			if err := c.renew(sess); err != nil {
				c.log.Warn("the remote session ended", zap.Error(err))
				break
			}
			delay = 0
			continue
		case resp.StatusCode == http.StatusBadRequest && lastID != "":
			// The stream cannot be resumed (the remote kept too little):
			// open a new one.
			discard(resp)
			lastID = ""
			continue
		default:
			// Said once per kind of refusal, not at every attempt.
			msg := errorMessage(c.refusal(nil, resp))
			if resp.StatusCode != refusedWith {
				c.log.Warn("the remote refused the GET stream; trying again", zap.Int("status", resp.StatusCode), zap.String("error", msg))
			}
			refusedWith = resp.StatusCode
			delay = max(delay, maxBackoff/2)
		}
		if !sleep(c.ctx, delay) {
			return
		}
		delay = nextBackoff(delay)
	}
}
