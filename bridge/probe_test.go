package bridge

import (
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// TestProbe: the probe tells the protocol eras a child speaks and counts
// its tools, by the era's own rules.
func TestProbe(t *testing.T) {
	for _, tc := range []struct {
		name, pkg string
		era       string
		tools     int
	}{
		{"go-sdk everything-server", mcptest.EverythingServerPackage, "dual", 28},
		{"legacy-only server", muxChildPackage, "legacy", 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := probeChild(t.Context(), ProcessConfig{Argv: []string{mcptest.Build(t, tc.pkg)}, MaxMessageSize: jsonrpc.DefaultMaxMessageSize}, zaptest.NewLogger(t))
			if res.Err != nil || res.Era != tc.era || res.Tools != tc.tools {
				t.Errorf("probe: era %q, %d tools, error %v; want %q and %d", res.Era, res.Tools, res.Err, tc.era, tc.tools)
			}
		})
	}
	t.Run("a command that cannot start", func(t *testing.T) {
		if res := probeChild(t.Context(), ProcessConfig{Argv: []string{"/nonexistent/server"}}, zaptest.NewLogger(t)); res.Err == nil {
			t.Error("no error for a server that cannot start")
		}
	})
}
