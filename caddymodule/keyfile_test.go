package caddymodule

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// TestKeyFileClientLines runs the client lines the design gives, with a
// shell and curl: API_KEY=$(cat <file>), then X-API-Key on /sse and
// Authorization: Bearer on /mcp; with a fresh key file (api_key_file
// ~/…, which Caddy creates once it runs, not before), after `key rotate`,
// and after `key rotate --overlap` (when the key file still holds just the
// new key, and the previous one works too).
func TestKeyFileClientLines(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	c := opStart(t, []string{exe}, opBridge(exe, "api_key_file ~/.llmc/mcp-api-key"))
	file := filepath.Join(c.Dir, ".llmc", "mcp-api-key") // StartCaddy's HOME is its directory
	mcptest.WaitFor(t, 10*time.Second, "the key file", func() bool { _, err := os.Stat(file); return err == nil })

	// clientLines runs the design's lines and returns the two statuses.
	clientLines := func(keyFile string) string {
		script := fmt.Sprintf(`API_KEY=$(cat %q)
sse=$(curl -s -o /dev/null -w '%%{http_code}' --max-time 1 -H "X-API-Key: $API_KEY" %s/sse)
mcp=$(curl -s -o /dev/null -w '%%{http_code}' -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' -d '%s' %s/mcp)
echo "$sse $mcp"`, keyFile, c.base(0), opInit, c.base(0))
		out, err := exec.Command("bash", "-c", script).Output()
		if err != nil {
			t.Fatalf("the client lines: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	works := func(what, keyFile string) {
		t.Helper()
		mcptest.WaitFor(t, 10*time.Second, what, func() bool { return clientLines(keyFile) == "200 200" })
	}
	works("the client lines with a fresh key file", file)

	rotate := func(args ...string) {
		if out, err := c.Run(append([]string{"mcp-bridge", "key", "rotate", "--file", file}, args...)...); err != nil {
			t.Fatalf("key rotate %v: %v\n%s", args, err, out)
		}
	}
	before, _ := os.ReadFile(file)
	rotate()
	works("the client lines after key rotate", file)
	if got := clientLinesWith(t, c, string(before)); got != "401" {
		t.Errorf("the replaced key, after key rotate without --overlap: %s, want 401", got)
	}

	before, _ = os.ReadFile(file)
	rotate("--overlap", "1h")
	works("the client lines after key rotate --overlap", file)
	if data, _ := os.ReadFile(file); strings.Count(string(data), "\n") != 1 || strings.TrimSpace(string(data)) == strings.TrimSpace(string(before)) {
		t.Errorf("the key file after rotate --overlap holds %q: want the new key alone", data)
	}
	if got := clientLinesWith(t, c, string(before)); got != "200" {
		t.Errorf("the previous key within its overlap: %s, want 200", got)
	}
}

// clientLinesWith sends initialize with key as a bearer token and returns
// the status.
func clientLinesWith(t *testing.T, c *opCaddy, key string) string {
	resp, _ := opPost(t, c.base(0)+"/mcp", "", strings.TrimSpace(key), opInit)
	return fmt.Sprint(resp.StatusCode)
}

// TestValidateAndAdaptWriteNothing: caddy validate and caddy adapt of a
// config whose api_key_file does not exist create no file; and adapt makes
// a relative program path absolute against the Caddyfile's directory, so
// that the config works from wherever Caddy runs.
func TestValidateAndAdaptWriteNothing(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	caddy := mcptest.Build(t, mcptest.CaddyPackage)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, filepath.Join(dir, "bin", "server")); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "keys", "mcp-api-key")
	caddyfile := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(caddyfile, []byte(":8765 {\n\tmcp_bridge {\n\t\tcommand bin/server\n\t\tapi_key_file "+keyFile+"\n\t}\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	elsewhere := t.TempDir()
	for _, args := range [][]string{{"validate"}, {"adapt"}} {
		cmd := exec.Command(caddy, append(args, "--config", caddyfile, "--adapter", "caddyfile")...)
		cmd.Dir = elsewhere
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("caddy %s from another directory: %v\n%s", args[0], err, out)
		}
		if _, err := os.Stat(keyFile); err == nil {
			t.Errorf("caddy %s created the API key file", args[0])
		}
		if args[0] == "adapt" && !strings.Contains(string(out), `"command":"`+filepath.Join(dir, "bin", "server")+`"`) {
			t.Errorf("caddy adapt did not make the relative command absolute against the Caddyfile's directory:\n%s", out)
		}
	}
}
