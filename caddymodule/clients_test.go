package caddymodule

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// TestInspectorCLI runs the README's MCP Inspector line (its CLI mode,
// under Node 22) against a bridge with a key, over Streamable HTTP and
// legacy SSE, and without the key, which fails.
func TestInspectorCLI(t *testing.T) {
	tools := toolsFrom(t, "MCPBRIDGE_NODE", "MCPBRIDGE_INSPECTOR_CLI")
	node, cli := tools[0], tools[1]
	exe := mcptest.EverythingServer(t)
	const key = "k-inspector-6a0e"
	c := opStart(t, []string{exe}, opBridge(exe, "api_key "+key))
	inspect := func(transport, path string, header ...string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		args := []string{cli, "--cli", c.base(0) + path, "--transport", transport, "--method", "tools/list"}
		for _, h := range header {
			args = append(args, "--header", h)
		}
		out, err := exec.CommandContext(ctx, node, args...).CombinedOutput()
		return string(out), err
	}
	for _, tc := range []struct{ transport, path string }{{"http", "/mcp"}, {"sse", "/sse"}} {
		out, err := inspect(tc.transport, tc.path, "Authorization: Bearer "+key)
		if err != nil || !strings.Contains(out, "test_simple_text") {
			t.Errorf("the Inspector CLI over %s with the key: %v\n%s", tc.transport, err, out)
		}
	}
	if out, err := inspect("http", "/mcp"); err == nil {
		t.Errorf("the Inspector CLI without the key succeeded:\n%s", out)
	}
}
