package caddymodule

import (
	"encoding/json"
	"fmt"
	"net"
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

// The named-server tests: several stdio servers in one Caddy, each known
// by its name everywhere an operator looks.

// TestCaddyfileServers runs contrib/Caddyfile.servers as it is, from a
// directory whose ../bin holds the everything-server: both servers answer
// under their paths, and each shows by its name in `caddy mcp-bridge
// status <name>`, the admin API, the metrics, the health report and the
// log.
func TestCaddyfileServers(t *testing.T) {
	example, err := os.ReadFile("../contrib/Caddyfile.servers")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	exe := mcptest.EverythingServer(t)
	for _, d := range []string{"bin", "contrib"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(exe, filepath.Join(root, "bin", "everything-server")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "contrib")
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	c := mcptest.StartCaddy(t, dir, string(example), "localhost:2019", "127.0.0.1:8765")
	// The key file, made on start in the HOME Caddy runs with (dir).
	keyFile := filepath.Join(dir, ".config", "caddy-mcp-bridge", "api-key")
	var key string
	mcptest.WaitFor(t, 10*time.Second, "the key file", func() bool {
		data, err := os.ReadFile(keyFile)
		key = strings.TrimSpace(string(data))
		return err == nil && key != ""
	})
	for _, name := range []string{"everything", "shared"} {
		base := "http://127.0.0.1:8765/" + name
		client := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: base + "/mcp", HTTPClient: mcptest.Bearer(key).Client()}, "2025-11-25")
		if got := client.CallText(t, "test_simple_text", nil); got == "" {
			t.Errorf("%s: empty tool result", name)
		}
		defer client.Close()

		resp, body := secDo(t, http.MethodGet, base+"/health", "")
		var health struct{ Server, Isolation string }
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &health) != nil || health.Server != name {
			t.Errorf("%s/health: %d %s", name, resp.StatusCode, body)
		}

		out, err := c.Run("mcp-bridge", "status", name, "--address", c.AdminAddr)
		other := map[string]string{"everything": "shared", "shared": "everything"}[name]
		if err != nil || !strings.Contains(out, "SERVER") || !strings.Contains(out, "\n"+name+" ") || strings.Contains(out, "\n"+other+" ") {
			t.Errorf("caddy mcp-bridge status %s: %v\n%s", name, err, out)
		}

		resp, body = secDo(t, http.MethodGet, "http://"+c.AdminAddr+"/mcp_bridge/"+name+"/", "")
		var status struct {
			Pools []struct {
				Server    string            `json:"server"`
				Isolation string            `json:"isolation"`
				Sessions  []json.RawMessage `json:"sessions"`
			} `json:"pools"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &status) != nil || len(status.Pools) != 1 ||
			status.Pools[0].Server != name || len(status.Pools[0].Sessions) != 1 {
			t.Errorf("admin /mcp_bridge/%s/: %d %s", name, resp.StatusCode, body)
		}
	}
	if resp, _ := secDo(t, http.MethodGet, "http://"+c.AdminAddr+"/mcp_bridge/nobody/", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("admin API for a server of no such name: %d", resp.StatusCode)
	}
	fams, _ := opScrape(t, &opCaddy{Caddy: c})
	for _, name := range []string{"everything", "shared"} {
		if n := opMetric(fams, "caddy_mcp_bridge_sessions", map[string]string{"server": name, "transport": "streamable"}); n != 1 {
			t.Errorf("caddy_mcp_bridge_sessions{server=%q} = %v", name, n)
		}
		if !strings.Contains(c.Output(), `"server":"`+name+`"`) {
			t.Errorf("no log line has server %q", name)
		}
	}
}

// TestServerNames: an explicit name must be unique among a config's
// servers (one site's HTTP and HTTPS twins run the same server and may
// share it), and look like a name; a name left out is made from the
// command.
func TestServerNames(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	dir := t.TempDir()
	validate := func(caddyfile string) (string, error) {
		if err := os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(caddyfile), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err, _ := cliRun(t, dir, "validate", "--config", "Caddyfile")
		return out, err
	}
	twice := fmt.Sprintf(":%d {\n\tmcp_bridge docs {\n\t\tcommand %s\n\t}\n}\n:%d {\n\tmcp_bridge docs {\n\t\tcommand %s\n\t\tenv X 1\n\t}\n}\n",
		mcptest.FreePort(t), exe, mcptest.FreePort(t), exe)
	if out, err := validate(twice); err == nil || !strings.Contains(out, `two mcp_bridge handlers are named \"docs\", with different servers`) {
		t.Errorf("two servers of one name: %v\n%s", err, out)
	}
	twins := fmt.Sprintf(":%d, :%d {\n\tmcp_bridge docs {\n\t\tcommand %s\n\t}\n}\n", mcptest.FreePort(t), mcptest.FreePort(t), exe)
	if out, err := validate(twins); err != nil {
		t.Errorf("one server on two addresses: %v\n%s", err, out)
	}
	for _, bad := range []string{"sessions", "-x", "a/b"} {
		if out, err := validate(fmt.Sprintf(":%d {\n\tmcp_bridge %s {\n\t\tcommand %s\n\t}\n}\n", mcptest.FreePort(t), bad, exe)); err == nil {
			t.Errorf("server name %q accepted:\n%s", bad, out)
		}
	}
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"npx", "-y", "@modelcontextprotocol/server-everything@2026.8.31", "stdio"}, "server-everything"},
		{[]string{"/usr/local/bin/github-mcp-server", "stdio"}, "github-mcp-server"},
		{[]string{"python3", "-m", "mcp_server_git"}, "mcp_server_git"},
		{[]string{"uvx", "mcp-server-fetch"}, "mcp-server-fetch"},
		{[]string{`C:\tools\srv.exe`}, "srv"},
		{[]string{"docker", "run", "-i", "--rm", "mcp/fetch"}, "fetch"},
		{nil, "mcp"},
	} {
		if got := defaultServerName(tc.argv); got != tc.want {
			t.Errorf("defaultServerName(%q) = %q, want %q", tc.argv, got, tc.want)
		}
	}
}

// TestCLIServeSeveral: `caddy mcp-bridge serve` with two --stdio
// name=command serves each under /<name>/ and names it in status.
func TestCLIServeSeveral(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	dir := t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	serve := cliStartServe(t, dir, listen, "--stdio", "alpha="+exe, "--stdio", "beta="+exe, "--no-auth")
	for _, name := range []string{"alpha", "beta"} {
		want := "MCP endpoint of " + name + ": http://" + listen + "/" + name + "/mcp"
		mcptest.WaitFor(t, 10*time.Second, "serve to print "+want, func() bool { return strings.Contains(serve.output(), want) })
		client := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: "http://" + listen + "/" + name + "/mcp"}, "2025-11-25")
		if got := client.CallText(t, "test_simple_text", nil); got == "" {
			t.Errorf("%s: empty tool result", name)
		}
		client.Close()
		if out := cliMustRun(t, dir, "mcp-bridge", "status", name); !strings.Contains(out, "\n"+name+" ") {
			t.Errorf("status %s:\n%s", name, out)
		}
	}
	if out, err, _ := cliRun(t, dir, "mcp-bridge", "serve", "--stdio", exe, "--stdio", exe, "--listen", listen); err == nil || !strings.Contains(out, "give each a name") {
		t.Errorf("serve with two unnamed servers: %v\n%s", err, out)
	}
	serve.stop(t, dir)
}

// TestSocketActivation: systemd-socket-activate holds the port and starts
// Caddy on the first connection; Caddy takes the socket with bind fd/3,
// and that first connection's tool call works.
func TestSocketActivation(t *testing.T) {
	activate := toolsFrom(t, "MCPBRIDGE_SOCKET_ACTIVATE")[0]
	exe := mcptest.EverythingServer(t)
	dir := t.TempDir()
	admin := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	addr := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	caddyfile := fmt.Sprintf("{\n\tadmin %s\n\tauto_https off\n}\n\nhttp:// {\n\tbind fd/3\n\tmcp_bridge everything {\n\t\tcommand %s\n\t}\n}\n", admin, exe)
	if err := os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(caddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(activate, "-l", addr, mcptest.Build(t, mcptest.CaddyPackage), "run", "--config", "Caddyfile")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		mcptest.WaitNoProcesses(t, exe, 10*time.Second)
		if t.Failed() {
			t.Logf("output:\n%s", out.String())
		}
	})
	// Only the activator listens: no Caddy, no child yet.
	mcptest.WaitFor(t, 10*time.Second, "systemd-socket-activate to listen", func() bool { return strings.Contains(out.String(), "Listening on") })
	if conn, err := net.Dial("tcp", admin); err == nil {
		conn.Close()
		t.Error("Caddy runs before the first connection")
	}
	if n := len(mcptest.Processes(exe)); n != 0 {
		t.Errorf("%d children before the first connection", n)
	}
	client := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: "http://" + addr + "/mcp"}, "2025-11-25")
	if got := client.CallText(t, "test_simple_text", nil); got == "" {
		t.Error("empty tool result")
	}
	client.Close()
	if o, err, _ := cliRun(t, dir, "stop", "--address", admin); err != nil {
		t.Errorf("caddy stop: %v\n%s", err, o)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Error("Caddy did not exit after caddy stop")
	}
}
