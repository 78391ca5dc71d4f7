package caddymodule

import (
	"testing"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

func TestMain(m *testing.M) { mcptest.Main(m) }
