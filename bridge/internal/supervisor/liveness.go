package supervisor

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/child"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// liveness is what the supervisor's check knows of a child that carries
// clients: when it last said anything, and the ping it waits on.
type liveness struct {
	attached atomic.Bool
	heard    atomic.Int64 // unix nanos of the child's last message
	ping     atomic.Pointer[livenessPing]
	checking atomic.Bool
	hung     atomic.Pointer[string] // why the check killed it
}

// livenessPing is one ping of the check, answered once.
type livenessPing struct {
	id       []byte
	answered chan struct{}
}

// Attach starts delivering the child's messages, as the process's Attach
// does, but keeps the answers to the liveness check's pings for the check:
// a client never sees them.
func (c *Child) Attach(onMessage func([]byte), onOversize func(prefix []byte), onClose func()) {
	c.live.attached.Store(true)
	c.Process.Attach(func(msg []byte) {
		c.live.heard.Store(time.Now().UnixNano())
		if p := c.live.ping.Load(); p != nil && bytes.Contains(msg, c.pingPrefix) {
			if id := jsonrpc.Member(msg, "id"); bytes.HasPrefix(id, c.pingPrefix) && jsonrpc.Member(msg, "method") == nil {
				if bytes.Equal(id, p.id) {
					close(p.answered)
					c.live.ping.CompareAndSwap(p, nil)
				}
				return // a late answer to an earlier ping is dropped too
			}
		}
		onMessage(msg)
	}, func(prefix []byte) {
		c.live.heard.Store(time.Now().UnixNano())
		onOversize(prefix)
	}, onClose)
}

// ExitReason says, for the clients of a child that has gone, why.
func (c *Child) ExitReason() string {
	if why := c.live.hung.Load(); why != nil {
		return "the MCP server stopped answering (" + *why + ") and was killed"
	}
	return "the MCP server process exited"
}

// pingPrefix starts the ids of the check's pings: random per supervisor,
// so that no client's own id is taken for one.
func newPingPrefix() []byte {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return []byte(`"mcpbridge-live-` + hex.EncodeToString(b[:]) + `-`)
}

// checkLiveness checks every child that carries clients, every
// HealthCheck, until Close.
func (s *Supervisor) checkLiveness() {
	defer s.owned.Done()
	t := time.NewTicker(s.cfg.HealthCheck)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		for c := range s.children {
			if c.live.attached.Load() && c.live.checking.CompareAndSwap(false, true) {
				s.owned.Add(1)
				go s.checkChild(c)
			}
		}
		s.mu.Unlock()
	}
}

// checkChild pings a child. It is alive if it answers, or says anything
// at all, within HealthCheckTimeout: a ping may wait behind a long call on
// a server that handles one request at a time, but such a server still
// sends that call's progress or result. A child that says nothing at all,
// or has not read its input for as long, is hung: it is killed, and its
// clients are told why.
func (s *Supervisor) checkChild(c *Child) {
	defer s.owned.Done()
	defer c.live.checking.Store(false)
	timeout := s.cfg.HealthCheckTimeout
	sent := time.Now()
	if stalled := c.InputStalled(sent); stalled > timeout {
		s.killHung(c, fmt.Sprintf("it has not read its input for %v", stalled.Round(time.Second)))
		return
	}
	n := s.pings.Add(1)
	p := &livenessPing{id: append(append([]byte(nil), c.pingPrefix...), strconv.FormatInt(n, 36)+`"`...), answered: make(chan struct{})}
	c.live.ping.Store(p)
	defer c.live.ping.CompareAndSwap(p, nil)
	err := c.Send([]byte(`{"jsonrpc":"2.0","id":` + string(p.id) + `,"method":"ping"}`))
	if errors.Is(err, child.ErrInputClosed) {
		return // stopping, or gone
	}
	// A full input fails the ping's Send; the child may still answer
	// something, else it is hung all the same.
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.answered:
		return
	case <-c.Done():
		return
	case <-s.stop:
		return
	case <-t.C:
	}
	if c.live.heard.Load() > sent.UnixNano() {
		s.logger.Debug("MCP server is busy: its answer to a ping waits, but it still sends", zap.Int("pid", c.Pid()))
		return
	}
	s.killHung(c, fmt.Sprintf("no answer to a ping, and no message at all, for %v", timeout))
}

// killHung kills a child that stopped answering. Its exit counts as a
// crash.
func (s *Supervisor) killHung(c *Child, why string) {
	c.live.hung.Store(&why)
	s.logger.Warn("MCP server stopped answering; killing it", zap.Int("pid", c.Pid()),
		zap.String("role", c.Role().String()), zap.String("reason", why))
	s.mu.Lock()
	s.hung++
	s.mu.Unlock()
	s.obs.ChildHung(c.Role().String())
	c.Process.Kill()
}
