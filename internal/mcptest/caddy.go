package mcptest

import (
	"bytes"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// CaddyPackage is this project's Caddy build: Caddy plus mcp_bridge.
const CaddyPackage = "github.com/mcpbridge/caddy-mcp-bridge/cmd/caddy"

// Caddy is a real Caddy process run by a test.
type Caddy struct {
	Exe       string
	Dir       string // working directory, holding the config
	AdminAddr string
	cmd       *exec.Cmd
	done      chan struct{}
	mu        sync.Mutex
	output    bytes.Buffer
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	return FreePorts(t, 1)[0]
}

// FreePorts returns n distinct TCP ports on 127.0.0.1 that were free a
// moment ago: unlike n calls of FreePort, it holds each until it has them
// all, so that processes started together get ports of their own.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// StartCaddy runs `caddy run` with a Caddyfile whose global options must set
// `admin` to adminAddr, and waits until its admin endpoint answers and every
// address in wait accepts connections. Cleanup stops it with `caddy stop`.
func StartCaddy(t testing.TB, dir, caddyfile, adminAddr string, wait ...string) *Caddy {
	t.Helper()
	c := &Caddy{Exe: Build(t, CaddyPackage), Dir: dir, AdminAddr: adminAddr, done: make(chan struct{})}
	cfgPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(caddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(c.Exe, "run", "--config", cfgPath, "--adapter", "caddyfile")
	c.cmd.Dir = dir
	c.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	c.cmd.Stdout = (*lockedWriter)(c)
	c.cmd.Stderr = (*lockedWriter)(c)
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.Stop(t)
		if t.Failed() {
			t.Logf("caddy output:\n%s", c.Output())
		}
	})
	WaitListening(t, "caddy", c.cmd, c.done, c.Output, append([]string{adminAddr}, wait...)...)
	return c
}

// WaitListening waits up to a minute until every address in addrs accepts
// connections, and fails the test if the program named name (run by cmd,
// whose exit closes exited) exits first or never listens, with its output.
func WaitListening(t testing.TB, name string, cmd *exec.Cmd, exited <-chan struct{}, output func() string, addrs ...string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for _, addr := range addrs {
		for {
			conn, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				conn.Close()
				break
			}
			select {
			case <-exited:
				t.Fatalf("%s exited: %v\n%s", name, cmd.ProcessState, output())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not listen on %s:\n%s", name, addr, output())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

type lockedWriter Caddy

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.output.Write(p)
}

// Output is what Caddy has logged so far.
func (c *Caddy) Output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.output.String()
}

// Pid is the Caddy process id.
func (c *Caddy) Pid() int { return c.cmd.Process.Pid }

// Run runs a caddy subcommand against this instance and returns its
// combined output.
func (c *Caddy) Run(args ...string) (string, error) {
	cmd := exec.Command(c.Exe, args...)
	cmd.Dir = c.Dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Reload loads a new Caddyfile with `caddy reload`.
func (c *Caddy) Reload(t testing.TB, caddyfile string) {
	t.Helper()
	cfgPath := filepath.Join(c.Dir, "Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(caddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Run("reload", "--config", cfgPath, "--adapter", "caddyfile", "--address", c.AdminAddr); err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
}

// Stop stops Caddy with `caddy stop` and waits for the process to exit; it
// fails the test if that takes over 30 seconds.
func (c *Caddy) Stop(t testing.TB) time.Duration {
	t.Helper()
	select {
	case <-c.done:
		return 0
	default:
	}
	start := time.Now()
	if out, err := c.Run("stop", "--address", c.AdminAddr); err != nil {
		t.Errorf("caddy stop: %v\n%s", err, out)
		c.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		c.cmd.Process.Kill()
		t.Errorf("caddy did not exit within 30s of caddy stop")
		<-c.done
	}
	return time.Since(start)
}

// Kill sends SIGKILL to Caddy, as a crash or the OOM killer would, and
// waits for it to exit.
func (c *Caddy) Kill() {
	_ = c.cmd.Process.Kill()
	<-c.done
}

// AdminGet fetches a path from the admin API.
func (c *Caddy) AdminGet(path string) (*http.Response, error) {
	return http.Get("http://" + c.AdminAddr + path)
}
