package placement

import (
	"testing"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

func TestMain(m *testing.M) { mcptest.Main(m) }
