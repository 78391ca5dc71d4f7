package bridge

import (
	"context"
	"io"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/connector"
)

// ConnectConfig says how Connect reaches a remote MCP endpoint.
type ConnectConfig = connector.Config

// ConnectAuth supplies credentials that change while Connect runs.
type ConnectAuth = connector.Auth

// DefaultConnectRetryFor is how long Connect retries while the remote is
// down: long enough for the remote to restart.
const DefaultConnectRetryFor = connector.DefaultRetryFor

// Connect serves a stdio MCP client, whose messages it reads from in, one
// a line, and to which it writes on out, by relaying every message to the
// remote endpoint of cfg and back, unchanged. It negotiates what the
// remote offers: each request that names the stateless protocol
// (2026-07-28 on) in its _meta goes alone; others go in a Streamable HTTP
// session, or over legacy SSE. It resumes streams that drop, opens a new
// session when the remote forgot the old one (and tells the client with a
// log message), and retries while the remote is down.
//
// Connect returns nil when in ends, after ending the remote session, and
// ctx's error when ctx ends first; it returns an error at once for a URL
// that is not an http or https URL.
func Connect(ctx context.Context, cfg ConnectConfig, in io.Reader, out io.Writer) error {
	return connector.Run(ctx, cfg, in, out)
}
