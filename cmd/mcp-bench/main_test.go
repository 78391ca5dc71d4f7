//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

func TestMain(m *testing.M) { mcptest.Main(m) }

// benchPeers returns Node 22 and the npm packages the bench compares with:
// supergateway, mcp-proxy and the Node server-everything. scripts/test
// installs them and says where they are.
func benchPeers(t *testing.T) (node, supergateway, mcpProxy, nodeEverything string) {
	t.Helper()
	node, modules := os.Getenv("MCPBRIDGE_NODE"), os.Getenv("MCPBRIDGE_BENCH_MODULES")
	if node == "" || modules == "" {
		if os.Getenv("MCPBRIDGE_REQUIRE_ALL") != "" {
			t.Fatal("MCPBRIDGE_NODE and MCPBRIDGE_BENCH_MODULES must be set (scripts/test sets them)")
		}
		t.Skip("set MCPBRIDGE_NODE and MCPBRIDGE_BENCH_MODULES, or run scripts/test")
	}
	return node, filepath.Join(modules, "supergateway", "dist", "index.js"),
		filepath.Join(modules, "mcp-proxy", "dist", "bin", "mcp-proxy.mjs"),
		filepath.Join(modules, "@modelcontextprotocol", "server-everything", "dist", "index.js")
}

// TestBenchHarness runs mcp-bench as the README does, at a tiny scale: a
// real Caddy in front of the everything-server, the go-sdk client over
// every transport, the stdio floor and the peers. It checks that every
// case ran and reported its figures, not what the figures are: those
// belong to the harness's output, not to assertions.
func TestBenchHarness(t *testing.T) {
	node, supergateway, mcpProxy, nodeEverything := benchPeers(t)
	bench := mcptest.Build(t, "github.com/mcpbridge/caddy-mcp-bridge/cmd/mcp-bench")
	out := filepath.Join(t.TempDir(), "bench.json")
	cmd := exec.Command(bench,
		"--caddy", mcptest.Build(t, mcptest.CaddyPackage),
		"--server", mcptest.EverythingServer(t),
		"--node", node, "--supergateway", supergateway, "--mcp-proxy", mcpProxy, "--node-everything", nodeEverything,
		"--loads", "1x20,8x5", "--runs", "2", "--echo-calls", "5",
		"--setup-sessions", "3", "--cold-sessions", "1",
		"--idle-sessions", "50", "--idle-window", "1s", "--big-result", "1048576",
		"--json", out)
	output, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mcp-bench: %v\n%s", err, output)
	}
	for _, want := range []string{"Tool calls", "Session set-up", "Idle:", "Big result:", "Targets:"} {
		if !strings.Contains(string(output), want) {
			t.Errorf("the printed report has no %q:\n%s", want, output)
		}
	}
	rep := readReport(t, out)

	systems := []string{"stdio", "bridge streamable", "bridge stateless", "bridge sse", "bridge ws", "supergateway", "mcp-proxy", "native go"}
	for _, name := range []string{"1x20", "8x5"} {
		for _, sys := range systems {
			c := rep.find(name, sys)
			if c == nil {
				t.Errorf("%s: no result for %s", name, sys)
				continue
			}
			if c.Runs != 2 || c.CallsPerSecond <= 0 || c.P50Us <= 0 || c.MaxUs < c.P99Us || c.SetupP50Ms <= 0 {
				t.Errorf("%s on %s: implausible figures %+v", name, sys, *c)
			}
			if (c.CPUPerCallUs != nil) != (sys != "stdio") {
				t.Errorf("%s on %s: CPU per call %v; want it for every system but stdio", name, sys, c.CPUPerCallUs)
			}
		}
	}
	if c := rep.find("8x5", "bridge stateless"); c != nil && c.Protocol != "2026-07-28" {
		t.Errorf("the stateless transport negotiated %s", c.Protocol)
	}
	if c := rep.find("8x5", "bridge streamable"); c != nil && c.Protocol != sessionVersion {
		t.Errorf("the streamable transport negotiated %s", c.Protocol)
	}
	// The connector serves one desktop client: it runs in the one-session
	// load only, next to the direct client, against which it has a target.
	if c := rep.find("1x20", "connector"); c == nil || c.Protocol != sessionVersion || c.P50Us <= 0 || c.CPUPerCallUs != nil {
		t.Errorf("1x20 through the connector: %+v", c)
	}
	if rep.find("8x5", "connector") != nil {
		t.Error("the connector ran in the 8-session load")
	}
	// So does the front of "Running several instances", whose CPU is the
	// front's, and a note says what its hop adds.
	if c := rep.find("1x20", "bridge via front"); c == nil || c.Protocol != sessionVersion || c.P50Us <= 0 || c.CPUPerCallUs == nil {
		t.Errorf("1x20 through the front: %+v", c)
	}
	if !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.HasPrefix(n, "bridge via front, 1x20: the front's hop adds") }) {
		t.Errorf("no note on the front's hop among %q", rep.Notes)
	}
	// Issue 21's targets, and no peer in any of them.
	for _, want := range []string{
		"connector, 1x20: p50",
		"bridge streamable, 1x20: CPU per call ≤ 100 µs",
		"bridge stateless, 8x5: CPU per call ≤ 100 µs",
		"bridge sse, 1x20: CPU per call ≤ 1.1× bridge streamable's",
		"bridge sse, 8x5: calls/s ≥ 0.9× bridge streamable's",
		"bridge ws, 8x5: calls/s ≥ 0.85× stdio's",
		"bridge streamable, echo 64KiB: CPU per call ≤ 400 µs",
		"bridge streamable, 50 idle sessions with GET streams: RSS ≤ 150 MiB",
	} {
		if !slices.ContainsFunc(rep.Targets, func(tr targetResult) bool { return strings.HasPrefix(tr.Target, want) }) {
			t.Errorf("no target %q among %+v", want, rep.Targets)
		}
	}
	for _, tr := range rep.Targets {
		for _, p := range rep.Peers {
			if strings.Contains(tr.Target, p.Name) {
				t.Errorf("target %q names a peer", tr.Target)
			}
		}
	}
	for _, sys := range []string{"stdio", "bridge streamable", "supergateway", "mcp-proxy", "native go"} {
		if rep.find("echo 64KiB", sys) == nil {
			t.Errorf("echo 64KiB: no result for %s", sys)
		}
	}
	var setupSystems []string
	for _, s := range rep.Setups {
		setupSystems = append(setupSystems, s.System)
		if s.SetupP50Ms <= 0 {
			t.Errorf("node set-up on %s: %+v", s.System, s)
		}
	}
	if !slices.Equal(setupSystems, []string{"stdio", "supergateway", "mcp-proxy", "bridge streamable"}) {
		t.Errorf("node set-up ran on %v", setupSystems)
	}
	if i := rep.Idle; i == nil || i.Sessions != 50 || i.Connections < 50 || i.RSSMiB <= 0 || i.Goroutines <= 0 {
		t.Errorf("idle case: %+v", rep.Idle)
	}
	if b := rep.BigResult; b == nil || b.MessageMiB != 1 || len(b.PeakGrowthMiB) != 3 {
		t.Errorf("big result case: %+v", rep.BigResult)
	}
	if len(rep.Targets) == 0 {
		t.Error("no targets evaluated")
	}
	if got := len(rep.Peers); got != 3 || rep.Peers[1].Name != "mcp-proxy" || rep.Peers[1].Version == "" {
		t.Errorf("peers %+v; want supergateway, mcp-proxy and native go, with versions", rep.Peers)
	}
	// No child the bench started outlives it.
	mcptest.WaitNoProcesses(t, mcptest.EverythingServer(t), 5*time.Second)
	mcptest.WaitNoProcesses(t, bench, 5*time.Second)
}

// TestURL runs `mcp-bench url` against the everything-server serving
// Streamable HTTP itself, as the README's standalone check of a peer does,
// and checks that it measured the process given by --pid.
func TestURL(t *testing.T) {
	bench := mcptest.Build(t, "github.com/mcpbridge/caddy-mcp-bridge/cmd/mcp-bench")
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	server, err := startProcess([]string{mcptest.EverythingServer(t), "-http", fmt.Sprintf("127.0.0.1:%d", port), "-stateless=false"}, port)
	if err != nil {
		t.Fatal(err)
	}
	defer server.stop()
	out := filepath.Join(t.TempDir(), "url.json")
	cmd := exec.Command(bench, "url", "--url", fmt.Sprintf("http://127.0.0.1:%d/mcp", port),
		"--pid", strconv.Itoa(server.cmd.Process.Pid), "--name", "native go", "--loads", "1x20,2x10", "--json", out)
	output, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mcp-bench url: %v\n%s", err, output)
	}
	rep := readReport(t, out)
	for _, name := range []string{"1x20", "2x10"} {
		if c := rep.find(name, "native go"); c == nil || c.Runs != 1 || c.Protocol != sessionVersion || c.CPUPerCallUs == nil || *c.CPUPerCallUs <= 0 {
			t.Errorf("%s: %+v", name, c)
		}
	}
	if len(rep.Targets) != 0 {
		t.Errorf("targets %+v; a run against a URL has none", rep.Targets)
	}
}

// TestOwnLoad checks that the background load check counts a busy
// child's CPU as the bench's own, which the foreign share leaves out. The
// share itself is only logged: other programs on a shared machine are
// what it measures.
func TestOwnLoad(t *testing.T) {
	busy := exec.Command("sh", "-c", "while :; do :; done")
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { busy.Process.Kill(); busy.Wait() }()
	ticks0, err := ownTicks(0)
	if err != nil {
		t.Fatal(err)
	}
	share, err := foreignShare(context.Background(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ticks1, err := ownTicks(0)
	if err != nil {
		t.Fatal(err)
	}
	// The child had a core, or most of one on a busy machine.
	if ticks1-ticks0 < 30 {
		t.Errorf("own CPU over 1 s with a busy child: %d ticks", ticks1-ticks0)
	}
	t.Logf("own CPU %d ticks, foreign share %.1f%%", ticks1-ticks0, share)
}

// readReport reads the JSON report mcp-bench wrote to path.
func readReport(t *testing.T, path string) report {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}
