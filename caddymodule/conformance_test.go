package caddymodule

import (
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// conformanceChecks is how many checks @modelcontextprotocol/conformance
// 0.1.16 runs in its default server suite.
const conformanceChecks = 40

var conformanceTotal = regexp.MustCompile(`(?m)^Total: (\d+) passed, (\d+) failed`)

// TestConformance runs the official MCP conformance suite's server
// scenarios against the bridge, in a real Caddy, fronting the everything-
// server over stdio. scripts/test installs Node 22 and the suite and says
// where they are.
func TestConformance(t *testing.T) {
	tools := toolsFrom(t, "MCPBRIDGE_NODE", "MCPBRIDGE_CONFORMANCE")
	node, suite := tools[0], tools[1]
	for name, pool := range map[string]string{
		"isolation=session": "",
		// Every scenario's session lands on the one shared child.
		"isolation=shared": "pool {\n\t\t\tisolation shared\n\t\t\tsessions_per_process 1000\n\t\t\tmax_processes 1\n\t\t}",
	} {
		t.Run(name, func(t *testing.T) { runConformance(t, node, suite, pool) })
	}
}

func runConformance(t *testing.T, node, suite, pool string) {
	_, base, exe := bridgeCaddy(t, pool, "")
	cmd := exec.Command(node, suite, "server", "--url", base+"/mcp")
	cmd.Dir = t.TempDir()
	start := time.Now()
	out, err := cmd.CombinedOutput()
	m := conformanceTotal.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no summary from the conformance suite (%v):\n%s", err, out)
	}
	passed, _ := strconv.Atoi(string(m[1]))
	failed, _ := strconv.Atoi(string(m[2]))
	t.Logf("conformance: %s (%v)", strings.TrimSpace(string(m[0])), time.Since(start).Round(time.Millisecond))
	if passed != conformanceChecks || failed != 0 || err != nil {
		t.Errorf("conformance: %d passed, %d failed, exit %v; want %d passed\n%s", passed, failed, err, conformanceChecks, out)
	}
	if pool != "" {
		if n := len(mcptest.Processes(exe)); n != 1 {
			t.Errorf("%d shared children ran the suite, want 1", n)
		}
	}
}
