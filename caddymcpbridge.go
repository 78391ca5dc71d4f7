// Package caddymcpbridge is the plugin that xcaddy builds into Caddy:
// importing it registers the mcp_bridge HTTP handler
// (http.handlers.mcp_bridge) and the `caddy mcp-bridge` commands.
//
//	xcaddy build --with github.com/mcpbridge/caddy-mcp-bridge@<version>
package caddymcpbridge

import _ "github.com/mcpbridge/caddy-mcp-bridge/caddymodule"
