package caddymodule

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
)

func init() {
	caddy.RegisterModule(SessionSelection{})
}

// SessionSelection is a reverse_proxy load-balancing policy for a front
// Caddy in front of several bridge instances. A request of a session goes
// to the instance that owns it, named in the session id (or the legacy SSE
// sessionId, or the Last-Event-ID of a legacy stream resuming): an
// upstream whose dial address, or its host, is the instance's node. Other
// requests (a new session, a WebSocket, a stateless 2026-07-28 request)
// go where the fallback policy sends them.
//
// When the owner is not among the upstreams or not available (its health
// checks fail), the request also goes to the fallback: the instance it
// reaches does not know the session and answers 404, which tells an MCP
// client to start a new session. The policy keeps no state: adding an
// instance moves no session.
type SessionSelection struct {
	// FallbackRaw is the policy for requests that name no session, or
	// whose owner is down. Default: random.
	FallbackRaw json.RawMessage       `json:"fallback,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`
	fallback    reverseproxy.Selector // FallbackRaw, loaded
}

// CaddyModule returns the Caddy module information.
func (SessionSelection) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.mcp_session",
		New: func() caddy.Module { return new(SessionSelection) },
	}
}

// Provision loads the fallback policy.
func (s *SessionSelection) Provision(ctx caddy.Context) error {
	if s.FallbackRaw == nil {
		s.FallbackRaw = caddyconfig.JSONModuleObject(reverseproxy.RandomSelection{}, "policy", "random", nil)
	}
	mod, err := ctx.LoadModule(s, "FallbackRaw")
	if err != nil {
		return fmt.Errorf("loading fallback selection policy: %v", err)
	}
	s.fallback = mod.(reverseproxy.Selector)
	return nil
}

// Select returns the owner of the request's session, else what the
// fallback policy selects.
//
// The owner is the only instance that can serve its sessions, so it gets
// their requests unless requests to it failed (passive health checks:
// connections refused, timeouts): an owner whose active health check
// fails (its /health says it cannot start children now) still serves the
// sessions it has. An owner at its max_requests gets nothing for now: the
// front tries again within lb_try_duration, rather than sending the
// request to an instance that would answer 404 and end the session.
func (s *SessionSelection) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	if node := bridge.Owner(r); node != "" {
		if u := upstreamOfNode(pool, node); u != nil && (u.Healthy() || u.Host.Fails() == 0) {
			if u.Full() {
				return nil
			}
			return u
		}
	}
	return s.fallback.Select(pool, r, w)
}

// upstreamOfNode returns the upstream node names: the one dialed at node,
// else the first whose host is node.
func upstreamOfNode(pool reverseproxy.UpstreamPool, node string) *reverseproxy.Upstream {
	var byHost *reverseproxy.Upstream
	for _, u := range pool {
		if strings.EqualFold(u.Dial, node) {
			return u
		}
		if host, _, err := net.SplitHostPort(u.Dial); err == nil && byHost == nil && strings.EqualFold(host, node) {
			byHost = u
		}
	}
	return byHost
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens:
//
//	lb_policy mcp_session {
//		fallback <policy> [<options...>]
//	}
func (s *SessionSelection) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the policy's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "fallback":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if s.FallbackRaw != nil {
				return d.Err("fallback selection policy already specified")
			}
			name := d.Val()
			unm, err := caddyfile.UnmarshalModule(d, "http.reverse_proxy.selection_policies."+name)
			if err != nil {
				return err
			}
			if _, ok := unm.(reverseproxy.Selector); !ok {
				return d.Errf("module %s is not a selection policy", name)
			}
			s.FallbackRaw = caddyconfig.JSONModuleObject(unm, "policy", name, nil)
		default:
			return d.Errf("unrecognized option '%s'", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*SessionSelection)(nil)
	_ reverseproxy.Selector = (*SessionSelection)(nil)
	_ caddyfile.Unmarshaler = (*SessionSelection)(nil)
)
