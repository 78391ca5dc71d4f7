//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/wsclient"
)

// sessionVersion is the protocol version asked for where the bench wants a
// session (2025-11-25) rather than the go-sdk's default, which is the
// stateless 2026-07-28 when the server offers it.
const sessionVersion = "2025-11-25"

// A system is something under test that client sessions connect to: the
// child over stdio, the bridge over one transport, or a peer.
type system struct {
	name    string
	connect func(ctx context.Context) (*mcp.ClientSession, error)
	// pid is the process whose CPU and memory are measured; 0 for none.
	pid int
	// settle, if set, waits until the system is ready for timing, such as
	// a pool having refilled its warm spares.
	settle func(ctx context.Context) error
	// stop, if set, ends the processes the system's launcher started.
	stop func()
	// profile, if set, writes a CPU profile of the next seconds to path.
	profile func(ctx context.Context, seconds int, path string) error
}

// A launcher starts a fresh instance of a system, for one run of a load or
// for one case.
type launcher func(ctx context.Context) (*system, error)

func (s *system) cpu() (time.Duration, error) {
	if s.pid == 0 {
		return 0, nil
	}
	return cpuTime(s.pid)
}

var benchClient = mcp.NewClient(&mcp.Implementation{Name: "mcp-bench", Version: "1.0.0"}, nil)

// httpClient keeps enough idle connections for every concurrent session,
// so a load does not churn through ports; the default keeps two per host.
var httpClient = &http.Client{Transport: &http.Transport{
	MaxIdleConnsPerHost: 1024,
	DisableCompression:  true,
}}

func connectWith(transport mcp.Transport, version string) func(context.Context) (*mcp.ClientSession, error) {
	var opts *mcp.ClientSessionOptions
	if version != "" {
		opts = &mcp.ClientSessionOptions{ProtocolVersion: version}
	}
	return func(ctx context.Context) (*mcp.ClientSession, error) {
		return benchClient.Connect(ctx, transport, opts)
	}
}

// stdioSystem runs a fresh child per session and talks to it directly:
// the floor that every bridge figure is compared to.
func stdioSystem(command []string) *system {
	opts := &mcp.ClientSessionOptions{ProtocolVersion: sessionVersion}
	return &system{name: "stdio", connect: func(ctx context.Context) (*mcp.ClientSession, error) {
		cmd := exec.Command(command[0], command[1:]...)
		return benchClient.Connect(ctx, &mcp.CommandTransport{Command: cmd}, opts)
	}}
}

// bridgeTransports names the bridge's transports as the bench reports
// them: Streamable HTTP with sessions, the stateless 2026-07-28 protocol,
// legacy HTTP+SSE and WebSocket.
var bridgeTransports = []string{"streamable", "stateless", "sse", "ws"}

// bridgeSystem connects over transport to the bridge at base, one of c's
// sites (such as http://127.0.0.1:8080).
func bridgeSystem(c *caddyProcess, base, transport string, minIdle int) *system {
	sys := &system{
		name:    "bridge " + transport,
		pid:     c.pid(),
		settle:  func(ctx context.Context) error { return c.waitSpares(ctx, base, minIdle) },
		profile: c.profile,
	}
	switch transport {
	case "streamable":
		sys.connect = connectWith(&mcp.StreamableClientTransport{Endpoint: base + "/mcp", HTTPClient: httpClient, MaxEventSize: -1}, sessionVersion)
	case "stateless":
		sys.connect = connectWith(&mcp.StreamableClientTransport{Endpoint: base + "/mcp", HTTPClient: httpClient, MaxEventSize: -1}, "")
	case "sse":
		sys.connect = connectWith(&mcp.SSEClientTransport{Endpoint: base + "/sse", HTTPClient: httpClient}, "")
	case "ws":
		sys.connect = connectWith(&wsclient.Transport{URL: "ws" + base[len("http"):] + "/ws"}, "")
	default:
		panic("unknown transport " + transport)
	}
	return sys
}

// connectorSystem launches `caddy mcp-bridge connect` per session, as a
// desktop client does, in front of the Streamable HTTP endpoint of the
// bridge at base (one of c's sites): what the connector adds over a
// direct HTTP client, "bridge streamable". Its CPU is the connectors', one
// process per session, so no figure is given.
func connectorSystem(c *caddyProcess, caddy, base string, minIdle int) *system {
	opts := &mcp.ClientSessionOptions{ProtocolVersion: sessionVersion}
	return &system{
		name:   "connector",
		settle: func(ctx context.Context) error { return c.waitSpares(ctx, base, minIdle) },
		connect: func(ctx context.Context) (*mcp.ClientSession, error) {
			cmd := exec.Command(caddy, "mcp-bridge", "connect", base+"/mcp")
			return benchClient.Connect(ctx, &mcp.CommandTransport{Command: cmd}, opts)
		},
	}
}

// caddyProcess is the bridge under test: a real Caddy run from the
// project's cmd/caddy build.
type caddyProcess struct {
	cmd   *exec.Cmd
	urls  []string // a site's base, http://127.0.0.1:<port>
	ports []int
	admin string // http://127.0.0.1:<admin port>
	done  chan struct{}
	log   string
}

// startCaddy runs `caddy run` with a Caddyfile of the sites (each the body
// of a site block, on a free port of its own) and waits until it listens.
// A site of its own per bridge is how the README deploys one: no subroute
// or path rewrite sits in front of it.
func startCaddy(exe, dir string, sites ...string) (*caddyProcess, error) {
	adminPort, err := freePort()
	if err != nil {
		return nil, err
	}
	c := &caddyProcess{admin: fmt.Sprintf("http://127.0.0.1:%d", adminPort), done: make(chan struct{})}
	caddyfile := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n}\n", adminPort)
	for _, site := range sites {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		c.ports = append(c.ports, port)
		c.urls = append(c.urls, fmt.Sprintf("http://127.0.0.1:%d", port))
		caddyfile += fmt.Sprintf("\n:%d {\n\tbind 127.0.0.1\n%s}\n", port, site)
	}
	cfg := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(caddyfile), 0o644); err != nil {
		return nil, err
	}
	c.log = filepath.Join(dir, "caddy.log")
	logFile, err := os.Create(c.log)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	c.cmd = exec.Command(exe, "run", "--config", cfg, "--adapter", "caddyfile")
	c.cmd.Dir = dir
	c.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	c.cmd.Stdout, c.cmd.Stderr = logFile, logFile
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { c.cmd.Wait(); close(c.done) }()
	for _, port := range c.ports {
		if err := waitListening(fmt.Sprintf("127.0.0.1:%d", port), c.done); err != nil {
			c.stop()
			return nil, fmt.Errorf("caddy: %v (its log: %s)", err, c.log)
		}
	}
	return c, nil
}

func (c *caddyProcess) pid() int { return c.cmd.Process.Pid }

// stop ends Caddy the way `caddy stop` or systemd does, with SIGTERM, and
// waits for it to stop its children and exit.
func (c *caddyProcess) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// profile saves a CPU profile of the next seconds from Caddy's admin
// endpoint to path.
func (c *caddyProcess) profile(ctx context.Context, seconds int, path string) error {
	return c.savePprof(ctx, fmt.Sprintf("profile?seconds=%d", seconds), path)
}

// savePprof saves one of Caddy's pprof endpoints, such as "heap", to path.
func (c *caddyProcess) savePprof(ctx context.Context, which, path string) error {
	body, err := get(ctx, c.admin+"/debug/pprof/"+which)
	if err != nil {
		return err
	}
	return os.WriteFile(path, body, 0o644)
}

// goMetrics reads the named Go runtime gauges from Caddy's metrics, such
// as go_goroutines and go_memstats_stack_inuse_bytes.
func (c *caddyProcess) goMetrics(ctx context.Context, names ...string) (map[string]float64, error) {
	body, err := get(ctx, c.admin+"/metrics")
	if err != nil {
		return nil, err
	}
	values := map[string]float64{}
	for line := range strings.Lines(string(body)) {
		name, value, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok && slices.Contains(names, name) {
			if v, err := strconv.ParseFloat(value, 64); err == nil {
				values[name] = v
			}
		}
	}
	return values, nil
}

// health reads the health endpoint of the bridge at base.
func (c *caddyProcess) health(ctx context.Context, base string) (bridge.Health, error) {
	var h bridge.Health
	body, err := get(ctx, base+"/health")
	if err != nil {
		return h, err
	}
	return h, json.Unmarshal(body, &h)
}

// get fetches url, and fails on a status other than 200 or 503 (which the
// health endpoint answers with a body worth reading).
func get(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// waitSpares waits until the pool of the bridge at base has at least
// minIdle warm spares and is starting no more: the state a load should
// begin in.
func (c *caddyProcess) waitSpares(ctx context.Context, base string, minIdle int) error {
	return poll(ctx, time.Minute, func() error {
		h, err := c.health(ctx, base)
		if err == nil && (h.Processes.Starting != 0 || h.Processes.Idle < minIdle) {
			err = fmt.Errorf("%s: %d spares, %d starting, want %d spares (last error: %s)", base, h.Processes.Idle, h.Processes.Starting, minIdle, h.LastError)
		}
		return err
	})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitListening waits until addr accepts connections, or fails once the
// process whose exit closes exited has exited.
func waitListening(addr string, exited <-chan struct{}) error {
	return waitRunning(exited, func() error {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
		}
		return err
	})
}

// waitRunning polls check until it returns nil, or fails once the process
// whose exit closes exited has exited.
func waitRunning(exited <-chan struct{}, check func() error) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := poll(ctx, time.Minute, check)
	if ctx.Err() != nil {
		return errors.New("exited before listening")
	}
	return err
}

// poll calls check every 20 ms until it returns nil, and fails with its
// last error after timeout.
func poll(ctx context.Context, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
