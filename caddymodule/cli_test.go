package caddymodule

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// The CLI tests run the built caddy binary as a user does, each command in
// an empty directory of its own with HOME pointing there.

// cliDefaultAdmin is where `caddy mcp-bridge serve` keeps Caddy's admin
// endpoint, and where `status` and `caddy stop` look by default.
const cliDefaultAdmin = "localhost:2019"

// cliSlack is what a command may take beyond its --timeout: starting the
// binary and printing the error.
const cliSlack = 2 * time.Second

// cliCommand is the caddy binary with args, run in dir.
func cliCommand(t *testing.T, dir string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(mcptest.Build(t, mcptest.CaddyPackage), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	return cmd
}

// cliRun runs a caddy command to its end (killing it after a minute) and
// returns its combined output, its error and how long it took.
func cliRun(t *testing.T, dir string, args ...string) (string, error, time.Duration) {
	t.Helper()
	cmd := cliCommand(t, dir, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		err = <-done
		t.Errorf("caddy %s did not exit within a minute", strings.Join(args, " "))
	}
	return out.String(), err, time.Since(start)
}

// cliMustRun runs a caddy command that must succeed.
func cliMustRun(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err, _ := cliRun(t, dir, args...)
	if err != nil {
		t.Fatalf("caddy %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// cliServe is a running `caddy mcp-bridge serve`.
type cliServe struct {
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	out  bytes.Buffer
}

func (s *cliServe) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.Write(p)
}

func (s *cliServe) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// cliStartServe runs `caddy mcp-bridge serve --listen listen` with args
// and waits until Caddy's admin endpoint (localhost:2019, which must be
// free first) and listen accept connections. Cleanup kills it if a test
// left it running.
func cliStartServe(t *testing.T, dir, listen string, args ...string) *cliServe {
	t.Helper()
	return cliStartServeEnv(t, dir, listen, nil, append([]string{"--listen", listen}, args...)...)
}

// cliStartServeEnv runs `caddy mcp-bridge serve` with args and env added
// to its environment, and waits for the admin endpoint and wait.
func cliStartServeEnv(t *testing.T, dir, wait string, env []string, args ...string) *cliServe {
	t.Helper()
	if l, err := net.Listen("tcp", "127.0.0.1:2019"); err != nil {
		t.Fatalf("`caddy mcp-bridge serve` keeps Caddy's admin endpoint on %s, but 127.0.0.1:2019 is in use "+
			"(another Caddy, or a test running in parallel?): %v", cliDefaultAdmin, err)
	} else {
		l.Close()
	}
	s := &cliServe{done: make(chan struct{})}
	s.cmd = cliCommand(t, dir, append([]string{"mcp-bridge", "serve"}, args...)...)
	s.cmd.Env = append(s.cmd.Env, env...)
	s.cmd.Stdout, s.cmd.Stderr = s, s
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			s.cmd.Process.Kill()
			<-s.done
		}
		if t.Failed() {
			t.Logf("caddy mcp-bridge serve output:\n%s", s.output())
		}
	})
	mcptest.WaitListening(t, "caddy mcp-bridge serve", s.cmd, s.done, s.output, cliDefaultAdmin, wait)
	return s
}

// stop runs `caddy stop` (at the default admin address) and waits for
// serve to exit; it returns how long that took.
func (s *cliServe) stop(t *testing.T, dir string) time.Duration {
	t.Helper()
	start := time.Now()
	if out, err, _ := cliRun(t, dir, "stop"); err != nil {
		t.Errorf("caddy stop: %v\n%s", err, out)
	}
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("caddy mcp-bridge serve still runs 30s after caddy stop")
	}
	return time.Since(start)
}

// TestCLIServe runs `caddy mcp-bridge serve`, checks it with `check` and
// `status`, and ends it with `caddy stop`; then again with an API key file.
func TestCLIServe(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	dir := t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	endpoint := "http://" + listen + "/mcp"

	t.Run("plain", func(t *testing.T) {
		serve := cliStartServe(t, dir, listen, "--stdio", exe, "--no-auth")

		out := cliMustRun(t, dir, "mcp-bridge", "check", "--url", endpoint)
		if !strings.HasPrefix(out, "ok:") || !strings.Contains(out, "28 tools") {
			t.Errorf("check printed %q, want ok: ... 28 tools", out)
		}

		// A session open, so that status lists it.
		client := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: endpoint}, opVersion)
		defer client.Close()
		client.CallText(t, "test_simple_text", nil)
		out = cliMustRun(t, dir, "mcp-bridge", "status")
		for _, want := range []string{"POOL", "ISOLATION", "CHILDREN", "SESSIONS", "COMMAND", exe, "session", "SESSION", client.ID()[:8], "streamable"} {
			if !strings.Contains(out, want) {
				t.Errorf("status output lacks %q:\n%s", want, out)
			}
		}
		client.Close()

		took := serve.stop(t, dir)
		t.Logf("caddy stop took %v", took)
		if took > 15*time.Second {
			t.Errorf("caddy stop took %v", took)
		}
		mcptest.WaitNoProcesses(t, exe, 5*time.Second)
	})

	t.Run("api key", func(t *testing.T) {
		keyFile := filepath.Join(dir, "keys", "api.key")
		if err := os.Mkdir(filepath.Dir(keyFile), 0o700); err != nil {
			t.Fatal(err)
		}
		serve := cliStartServe(t, dir, listen, "--stdio", exe, "--api-key-file", keyFile)
		key := strings.TrimSpace(cliMustRun(t, dir, "mcp-bridge", "key", "show", "--file", keyFile))
		if key == "" {
			t.Fatal("key show printed nothing")
		}

		out, err, _ := cliRun(t, dir, "mcp-bridge", "check", "--url", endpoint, "--timeout", "10s")
		if err == nil {
			t.Errorf("check without --api-key succeeded:\n%s", out)
		} else if !strings.Contains(strings.ToLower(out), "unauthorized") {
			t.Errorf("check without --api-key: %v, output lacks \"unauthorized\":\n%s", err, out)
		}
		out, err, _ = cliRun(t, dir, "mcp-bridge", "check", "--url", endpoint, "--api-key", key, "--timeout", "10s")
		if err != nil || !strings.HasPrefix(out, "ok:") || !strings.Contains(out, "28 tools") {
			t.Errorf("check with --api-key: %v\n%s", err, out)
		}
		if strings.Contains(serve.output(), key) {
			t.Error("serve logged the API key")
		}
		serve.stop(t, dir)
		mcptest.WaitNoProcesses(t, exe, 5*time.Second)
	})
}

// TestCLICheckErrors: `check` against nothing, or against a server that
// never answers, exits non-zero within its --timeout.
func TestCLICheckErrors(t *testing.T) {
	dir := t.TempDir()
	t.Run("closed port", func(t *testing.T) {
		url := fmt.Sprintf("http://127.0.0.1:%d/mcp", mcptest.FreePort(t))
		out, err, took := cliRun(t, dir, "mcp-bridge", "check", "--url", url, "--timeout", "3s")
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("check against a closed port: %v, want a non-zero exit\n%s", err, out)
		}
		if !strings.Contains(out, url) {
			t.Errorf("the error does not name the URL:\n%s", out)
		}
		if took > 3*time.Second+cliSlack {
			t.Errorf("check took %v with --timeout 3s", took)
		}
	})
	t.Run("no answer", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		var conns []net.Conn
		var mu sync.Mutex
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c) // read nothing, answer nothing
				mu.Unlock()
			}
		}()
		defer func() {
			mu.Lock()
			defer mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
		}()
		// Several at once: whether one overruns is a race (see below).
		const runs = 6
		var wg sync.WaitGroup
		for range runs {
			wg.Go(func() {
				const timeout = 3 * time.Second
				out, err, took := cliRun(t, dir, "mcp-bridge", "check", "--url", "http://"+l.Addr().String()+"/mcp", "--timeout", timeout.String())
				if err == nil {
					t.Errorf("check against a server that never answers succeeded:\n%s", out)
				}
				// After the deadline the go-sdk client sends
				// notifications/cancelled for the initialize from a
				// goroutine, with a context of its own; when that POST has
				// started before Client.Connect's cleanup closes the
				// session, the cleanup waits for it, and this server never
				// answers. Unless check bounds every request by its one
				// deadline, about half the runs take twice the timeout or
				// more.
				if took < timeout || took > timeout+cliSlack {
					t.Errorf("check took %v with --timeout %v, want at most the timeout and %v to start: %s",
						took.Round(time.Millisecond), timeout, cliSlack, strings.TrimSpace(out))
				}
			})
		}
		wg.Wait()
	})
	t.Run("no url", func(t *testing.T) {
		out, err, _ := cliRun(t, dir, "mcp-bridge", "check")
		if err == nil || !strings.Contains(out, "--url is required") {
			t.Errorf("check without --url: %v\n%s", err, out)
		}
	})
}

// TestCLIStatusNoCaddy: `status` against an address where no Caddy runs
// exits non-zero and says what it could not reach.
func TestCLIStatusNoCaddy(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	out, err, _ := cliRun(t, t.TempDir(), "mcp-bridge", "status", "--address", addr)
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("status --address %s: %v, want a non-zero exit\n%s", addr, err, out)
	}
	if !strings.Contains(out, "admin endpoint at "+addr) || !strings.Contains(out, "connection refused") {
		t.Errorf("status --address %s: the error does not say what failed:\n%s", addr, out)
	}
}

// TestCLIServeRequiresStdio: `serve` without --stdio exits non-zero at
// once, saying the flag is required, and starts nothing.
func TestCLIServeRequiresStdio(t *testing.T) {
	out, err, _ := cliRun(t, t.TempDir(), "mcp-bridge", "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t)))
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("serve without --stdio: %v, want a non-zero exit\n%s", err, out)
	}
	if !strings.Contains(out, "--stdio is required") {
		t.Errorf("serve without --stdio printed:\n%s", out)
	}
}

// TestCLIServeDefaults: `serve --stdio <command>` and nothing else (the
// port from $MCP_BRIDGE_PORT) listens on 127.0.0.1 only, creates a key
// file in the user's config directory, prints the endpoint and how to send
// the key, and refuses a request without it.
func TestCLIServeDefaults(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	dir := t.TempDir()
	port := mcptest.FreePort(t)
	local := fmt.Sprintf("127.0.0.1:%d", port)
	s := cliStartServeEnv(t, dir, local, []string{fmt.Sprintf("MCP_BRIDGE_PORT=%d", port)}, "--stdio", exe)

	keyFile := filepath.Join(dir, "config", "caddy-mcp-bridge", "api-key")
	for _, want := range []string{"MCP endpoint: http://" + local + "/mcp", "API_KEY=$(cat " + keyFile + ")", "Authorization: Bearer $API_KEY"} {
		mcptest.WaitFor(t, 10*time.Second, "serve to print "+want, func() bool { return strings.Contains(s.output(), want) })
	}
	if conn, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", nonLoopbackIP(t), port), time.Second); err == nil {
		conn.Close()
		t.Error("serve with no flags accepts connections beyond loopback")
	}
	mcptest.WaitFor(t, 10*time.Second, "the key file", func() bool { _, err := os.Stat(keyFile); return err == nil })
	key, _ := os.ReadFile(keyFile)
	endpoint := "http://" + local + "/mcp"
	if resp, _ := opPost(t, endpoint, "", "", opInit); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("initialize without the key: %d, want 401", resp.StatusCode)
	}
	if resp, body := opPost(t, endpoint, "", strings.TrimSpace(string(key)), opInit); resp.StatusCode != http.StatusOK {
		t.Errorf("initialize with the key from the file: %d %s", resp.StatusCode, body)
	}
	s.stop(t, dir)
}

// TestCLICheckSaysWhy: `check` against a server whose command cannot
// start prints the bridge's reason, not just "Service Unavailable";
// against a WebSocket URL or the /sse endpoint it says to use /mcp.
func TestCLICheckSaysWhy(t *testing.T) {
	unstartable := filepath.Join(t.TempDir(), "mcp-server")
	if err := os.WriteFile(unstartable, []byte("#!/nonexistent/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	exe := mcptest.EverythingServer(t)
	c := opStart(t, []string{exe}, opBridge(unstartable, "pool {\n\t\t\tmin_idle 0\n\t\t}"), opBridge(exe))
	dir := t.TempDir()
	// The client's own request id, and the reason, in the 503.
	resp, body := opPost(t, c.base(0)+"/mcp", "", "", opInit)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), `"id":1,`) || !strings.Contains(string(body), "could not be started: ") {
		t.Errorf("initialize with id 1 to a server that cannot start: %d %s; want 503 answering id 1 with the reason", resp.StatusCode, body)
	}
	for _, tc := range []struct{ url, want string }{
		{c.base(0) + "/mcp", "could not be started"},
		{"ws" + strings.TrimPrefix(c.base(1), "http") + "/ws", "give it the http(s) URL of the /mcp endpoint"},
		{c.base(1) + "/sse", "is " + c.base(1) + "/sse the /mcp endpoint?"},
	} {
		out, err, _ := cliRun(t, dir, "mcp-bridge", "check", "--url", tc.url, "--timeout", "10s")
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("check --url %s: %v, want a failure saying %q:\n%s", tc.url, err, tc.want, out)
		}
	}
}
