package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// bridgeCaddy runs a real Caddy with an mcp_bridge site in front of the
// everything-server. block is extra mcp_bridge options; site is extra site
// directives. It returns the Caddy, the site's base URL and the child's path.
// Legacy SSE sessions end 200ms after their client leaves (resume_grace).
func bridgeCaddy(t *testing.T, block, site string) (*mcptest.Caddy, string, string) {
	t.Helper()
	exe := mcptest.EverythingServer(t)
	admin := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	port := mcptest.FreePort(t)
	cfg := fmt.Sprintf(`{
	admin %s
}

:%d {
	bind 127.0.0.1
	mcp_bridge {
		command %s
		resume_grace 200ms
		%s
	}
	%s
}
`, admin, port, exe, block, site)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// Cleanups run last first: this check runs after Caddy has stopped.
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	c := mcptest.StartCaddy(t, t.TempDir(), cfg, admin, addr)
	return c, "http://" + addr, exe
}

// TestCaddyGoSDKClient connects the go-sdk client through a real Caddy to a
// stdio child, with the SDK's default options (it probes 2026-07-28 and
// falls back) and with 2025-11-25, and uses tools, progress and sampling.
func TestCaddyGoSDKClient(t *testing.T) {
	c, base, exe := bridgeCaddy(t, "", "")
	for _, version := range []string{"", "2025-11-25"} {
		t.Run("version="+version, func(t *testing.T) {
			client := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: base + "/mcp"}, version)
			defer client.Close()
			// The default client speaks the stateless protocol, which the
			// bridge serves on shared children: the tool then echoes the
			// bridge's progress token, not the client's.
			stateless := client.InitializeResult().ProtocolVersion >= "2026-07-28"
			if stateless != (version == "") {
				t.Errorf("negotiated %s", client.InitializeResult().ProtocolVersion)
			}
			tools, err := client.ListTools(t.Context(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(tools.Tools) < 10 {
				t.Errorf("tools/list gave %d tools", len(tools.Tools))
			}
			if got := client.CallText(t, "test_simple_text", nil); got != "This is a simple text response for testing." {
				t.Errorf("test_simple_text = %q", got)
			}
			if got := client.CallText(t, "test_tool_with_progress", nil); got != "progress-test_tool_with_progress" && !stateless {
				t.Errorf("test_tool_with_progress = %q", got)
			}
			if p := client.WaitProgress(3); len(p) != 3 || p[2].Progress != 100 || p[2].ProgressToken != "progress-test_tool_with_progress" {
				t.Errorf("progress notifications: %+v", p)
			}
			if stateless {
				return // no server-to-client requests in the stateless protocol
			}
			if got := client.CallText(t, "test_sampling", map[string]any{"prompt": "ping"}); got != "LLM response: echo: ping" {
				t.Errorf("test_sampling = %q", got)
			}
		})
	}
	// Each closed session's child is gone; what runs now is the warm spare
	// and the shared child that served the stateless client.
	waitProcessCount(t, exe, 2)
	if d := c.Stop(t); d > 10*time.Second {
		t.Errorf("caddy stop took %v", d)
	}
	mcptest.WaitNoProcesses(t, exe, 5*time.Second)
}

// TestCaddyStopWithOpenSessions stops Caddy while sessions hold GET streams
// open: it returns promptly and leaves no child behind.
func TestCaddyStopWithOpenSessions(t *testing.T) {
	c, base, exe := bridgeCaddy(t, "", "")
	for range 3 {
		mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: base + "/mcp"}, "2025-11-25")
	}
	waitProcessCount(t, exe, 4) // three sessions and a spare
	start := time.Now()
	c.Stop(t)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("caddy stop took %v with open streams", d)
	}
	mcptest.WaitNoProcesses(t, exe, 5*time.Second)
}

// TestCaddyHandlePath mounts the bridge under handle_path: the endpoint is
// /tools/mcp and other paths reach the next handler.
func TestCaddyHandlePath(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	admin := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	port := mcptest.FreePort(t)
	cfg := fmt.Sprintf(`{
	admin %s
}

:%d {
	bind 127.0.0.1
	handle_path /tools/* {
		route {
			mcp_bridge {
				command %s
			}
			respond "next handler" 299
		}
	}
}
`, admin, port, exe)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	mcptest.StartCaddy(t, t.TempDir(), cfg, admin, addr)

	client := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: "http://" + addr + "/tools/mcp"}, "")
	defer client.Close()
	client.CallText(t, "test_simple_text", nil)

	// The legacy SSE endpoint event names /tools/message, the path the
	// client can reach, not the /message the handler saw.
	resp, err := http.Get("http://" + addr + "/tools/sse")
	if err != nil {
		t.Fatal(err)
	}
	endpoint, err := mcptest.NewSSEReader(resp.Body).Next()
	resp.Body.Close()
	if err != nil || !strings.HasPrefix(endpoint.Data, "/tools/message?sessionId=") {
		t.Errorf("SSE endpoint event under handle_path: %+v, %v", endpoint, err)
	}
	sse := mcptest.Connect(t, &mcp.SSEClientTransport{Endpoint: "http://" + addr + "/tools/sse"}, "")
	defer sse.Close()
	sse.CallText(t, "test_simple_text", nil)
	for _, path := range []string{"/tools/other", "/tools/mcp/x"} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 299 || string(body) != "next handler" {
			t.Errorf("GET %s = %d %q, want the next handler's 299", path, resp.StatusCode, body)
		}
	}
}

// TestValidateAndAdaptSpawnNothing: `caddy validate` provisions the handler
// and `caddy adapt` parses it, and neither starts a child.
func TestValidateAndAdaptSpawnNothing(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	caddyExe := mcptest.Build(t, mcptest.CaddyPackage)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "Caddyfile")
	os.WriteFile(cfg, []byte(fmt.Sprintf(":%d {\n\tmcp_bridge {\n\t\tcommand %s\n\t\tpool {\n\t\t\tmin_idle 3\n\t\t}\n\t}\n}\n", mcptest.FreePort(t), exe)), 0o644)
	for _, args := range [][]string{{"validate", "--config", cfg}, {"adapt", "--config", cfg}} {
		cmd := exec.Command(caddyExe, args...)
		cmd.Env = append(os.Environ(), "HOME="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("caddy %s: %v\n%s", args[0], err, out)
		}
		if pids := mcptest.Processes(exe); len(pids) != 0 {
			t.Errorf("caddy %s started children: %v", args[0], pids)
		}
	}
}

// TestCaddyfileExample adapts and runs Caddyfile.example as the README says,
// from a directory holding bin/everything-server, and calls a tool at
// http://localhost:8765/mcp.
func TestCaddyfileExample(t *testing.T) {
	example, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	exe := mcptest.EverythingServer(t)
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, filepath.Join(dir, "bin", "everything-server")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(example), "admin localhost:2019") {
		t.Fatal("Caddyfile.example no longer sets admin localhost:2019")
	}
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	c := mcptest.StartCaddy(t, dir, string(example), "localhost:2019", "localhost:8765")
	if out, err := c.Run("adapt", "--config", "Caddyfile"); err != nil {
		t.Fatalf("caddy adapt: %v\n%s", err, out)
	}
	client := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: "http://localhost:8765/mcp"}, "")
	if got := client.CallText(t, "test_simple_text", nil); got == "" {
		t.Error("empty tool result")
	}
	client.Close()
	c.Stop(t)
}

// waitProcessCount waits until exactly n processes of exe run.
func waitProcessCount(t *testing.T, exe string, n int) {
	t.Helper()
	mcptest.WaitFor(t, 10*time.Second, fmt.Sprintf("exactly %d processes of %s", n, filepath.Base(exe)), func() bool {
		return len(mcptest.Processes(exe)) == n
	})
}
