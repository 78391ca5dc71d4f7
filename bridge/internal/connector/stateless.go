package connector

import (
	"context"
	"encoding/base64"
	"net/http"
	"strings"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// The stateless protocol (2026-07-28 on): every request stands alone,
// names its protocol version in _meta, and goes in a POST of its own, with
// no session, whose headers repeat what routing needs from the body.

// firstStateless is the first stateless protocol revision.
const firstStateless = "2026-07-28"

// statelessVersion returns the protocol version a request names in its
// _meta, when that is a stateless one, or "".
func statelessVersion(env *jsonrpc.Envelope) string {
	meta := jsonrpc.Member(env.Params, "_meta")
	if meta == nil {
		return ""
	}
	if v := jsonrpc.StringValue(jsonrpc.Member(meta, jsonrpc.MetaProtocolVersion)); v >= firstStateless {
		return v
	}
	return ""
}

// nameField is the body field that the Mcp-Name header repeats, by method.
var nameField = map[string]string{"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

// statelessRequest relays a stateless request: its answer, and what the
// remote sends while working on it, come back in the POST's response. A
// refusal with a JSON-RPC error (an endpoint that serves sessions only
// answers so) goes to the client as the answer, and a client that speaks
// both protocols falls back to initialize on it. Closing the request's
// stream, as cancelling it does, cancels it at the remote.
func (c *connector) statelessRequest(ctx context.Context, msg []byte, env *jsonrpc.Envelope, version string, sent func()) {
	method := env.MethodName()
	var name []string
	if field, ok := nameField[method]; ok {
		name = []string{encodeHeaderValue(jsonrpc.StringValue(jsonrpc.Member(env.Params, field)))}
	}
	versionHeader, methodHeader := []string{version}, []string{method}
	build := func(ctx context.Context) (*http.Request, error) {
		req, err := c.newRequest(ctx, http.MethodPost, c.url, msg)
		if err != nil {
			return nil, err
		}
		req.Header["Mcp-Protocol-Version"] = versionHeader
		req.Header["Mcp-Method"] = methodHeader
		if name != nil {
			req.Header["Mcp-Name"] = name
		}
		return req, nil
	}
	resp, err := c.do(ctx, build, sent)
	if err != nil {
		if ctx.Err() == nil {
			c.fail(env.ID, err)
		}
		return
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		_ = c.out.send(c.ctx, c.refusal(env.ID, resp))
		return
	}
	r := &reply{id: env.ID}
	err = c.readBody(ctx, resp, r)
	if !r.answered && ctx.Err() == nil {
		// A stateless stream cannot be resumed.
		c.fail(env.ID, unanswered(err))
	}
}

// encodeHeaderValue makes a value safe for a header as the stateless
// protocol says: one that is not printable ASCII, or has spaces at its
// ends, or looks encoded itself, goes in base64 as =?base64?…?=.
func encodeHeaderValue(s string) string {
	plain := !strings.HasPrefix(s, "=?base64?") || !strings.HasSuffix(s, "?=")
	if plain && s != "" {
		plain = s[0] != ' ' && s[0] != '\t' && s[len(s)-1] != ' ' && s[len(s)-1] != '\t'
	}
	for i := 0; plain && i < len(s); i++ {
		plain = s[i] >= 0x20 && s[i] <= 0x7e
	}
	if plain {
		return s
	}
	return "=?base64?" + base64.StdEncoding.EncodeToString([]byte(s)) + "?="
}
