package bridge

import (
	"context"
	"testing"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/supervisor"
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
			res := probeChild(t.Context(), probeStarter(t, mcptest.Build(t, tc.pkg)))
			if res.Err != nil || res.Era != tc.era || res.Tools != tc.tools {
				t.Errorf("probe: era %q, %d tools, error %v; want %q and %d", res.Era, res.Tools, res.Err, tc.era, tc.tools)
			}
		})
	}
	t.Run("a command that cannot start", func(t *testing.T) {
		if res := probeChild(t.Context(), probeStarter(t, "/nonexistent/server")); res.Err == nil {
			t.Error("no error for a server that cannot start")
		}
	})
}

// probeStarter starts probe children of argv under a supervisor that is
// closed at cleanup.
func probeStarter(t *testing.T, argv ...string) func(context.Context) (*supervisor.Child, error) {
	sup := supervisor.New(supervisor.Config{Process: BackendConfig{Process: ProcessConfig{Argv: argv}}.withDefaults().Process}, mcptest.Logger(t), nopObserver{})
	t.Cleanup(sup.Close)
	return func(ctx context.Context) (*supervisor.Child, error) {
		return sup.Start(ctx, supervisor.RoleProbe, true, 0)
	}
}
