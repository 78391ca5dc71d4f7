// Command caddy is Caddy with its standard modules and the mcp_bridge module:
// the same binary that `xcaddy build --with github.com/mcpbridge/caddy-mcp-bridge` produces.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/mcpbridge/caddy-mcp-bridge"
)

func main() {
	caddycmd.Main()
}
