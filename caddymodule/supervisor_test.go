package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/wsclient"
)

// The supervisor tests check, against a real Caddy, what an operator is
// promised about children: max_processes caps all of them, whatever they
// are for, and none outlives its pool, however Caddy ends.

// caddyChildren lists the processes of Caddy's that run exe, with
// `pgrep -P`, as an operator would count them.
func caddyChildren(t *testing.T, caddyPid int, exe string) []int {
	out, err := exec.Command("pgrep", "-P", strconv.Itoa(caddyPid)).Output()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) { // 1: none
		t.Errorf("pgrep: %v", err)
		return nil
	}
	var pids []int
	for _, field := range strings.Fields(string(out)) {
		pid, _ := strconv.Atoi(field)
		if path, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && strings.TrimSuffix(path, " (deleted)") == exe {
			pids = append(pids, pid)
		}
	}
	return pids
}

// clientsOfEveryTransport connects one go-sdk client over each transport:
// Streamable HTTP in a 2025-11-25 session, Streamable HTTP stateless
// (2026-07-28, the SDK's default), legacy SSE and WebSocket.
func clientsOfEveryTransport(t *testing.T, base string) map[string]func() (*mcptest.Client, error) {
	connect := func(tr mcp.Transport, version string) (*mcptest.Client, error) {
		var opts *mcp.ClientSessionOptions
		if version != "" {
			opts = &mcp.ClientSessionOptions{ProtocolVersion: version}
		}
		client := mcp.NewClient(&mcp.Implementation{Name: "supervisor-test", Version: "1"}, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := client.Connect(ctx, tr, opts)
		if err != nil {
			return nil, err
		}
		return &mcptest.Client{ClientSession: s}, nil
	}
	return map[string]func() (*mcptest.Client, error){
		"streamable": func() (*mcptest.Client, error) {
			return connect(&mcp.StreamableClientTransport{Endpoint: base + "/mcp"}, opVersion)
		},
		"stateless": func() (*mcptest.Client, error) {
			return connect(&mcp.StreamableClientTransport{Endpoint: base + "/mcp"}, "")
		},
		"sse": func() (*mcptest.Client, error) {
			// The SSE stream lives as long as the connect context: the test's.
			client := mcp.NewClient(&mcp.Implementation{Name: "supervisor-test", Version: "1"}, nil)
			s, err := client.Connect(t.Context(), &mcp.SSEClientTransport{Endpoint: base + "/sse"}, nil)
			if err != nil {
				return nil, err
			}
			return &mcptest.Client{ClientSession: s}, nil
		},
		"ws": func() (*mcptest.Client, error) {
			return connect(&wsclient.Transport{URL: "ws" + strings.TrimPrefix(base, "http") + "/ws"}, opVersion)
		},
	}
}

// TestMaxProcessesCapsEveryChild: with max_processes 2, clients of every
// transport at once (sessions, stateless requests) and health probes never
// have more than 2 children of the command alive, counted with pgrep -P
// on Caddy; the admin status lists each child with its role. A client
// that finds no room in time is refused with 503 (busy), nothing else.
func TestMaxProcessesCapsEveryChild(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	// A shared child carries 3 sessions at most, so that shared mode needs
	// both children too.
	perIsolation := map[string]string{"session": "min_idle 1", "shared": "sessions_per_process 3"}
	for _, isolation := range []string{"session", "shared"} {
		t.Run(isolation, func(t *testing.T) {
			// A legacy SSE session whose client left keeps its child for
			// resume_grace: a short one lets the load flow.
			c := opStart(t, []string{exe}, opBridge(exe, "resume_grace 100ms",
				"pool {\n\t\t\tisolation "+isolation+"\n\t\t\tmax_processes 2\n\t\t\tacquire_timeout 5s\n\t\t\t"+perIsolation[isolation]+"\n\t\t}"))
			base := c.base(0)

			var most atomic.Int32
			stop := make(chan struct{})
			var sampler sync.WaitGroup
			sampler.Go(func() {
				for {
					if n := int32(len(caddyChildren(t, c.Pid(), exe))); n > most.Load() {
						most.Store(n)
					}
					select {
					case <-stop:
						return
					case <-time.After(2 * time.Millisecond):
					}
				}
			})

			var (
				wg              sync.WaitGroup
				calls, refusals atomic.Int32
			)
			for name, connect := range clientsOfEveryTransport(t, base) {
				for i := range 3 {
					wg.Go(func() {
						for round := range 3 {
							cl, err := connect()
							if err == nil {
								_, err = cl.CallTool(t.Context(), &mcp.CallToolParams{Name: "test_simple_text"})
								cl.Close()
							}
							switch {
							case err == nil:
								calls.Add(1)
							case strings.Contains(err.Error(), "Service Unavailable") || strings.Contains(err.Error(), "busy"):
								refusals.Add(1)
							default:
								t.Errorf("%s client %d, round %d: %v", name, i, round, err)
							}
						}
					})
				}
			}
			wg.Go(func() { // health probes, each of which may start a child
				for range 20 {
					opGetHealth(t, base)
					time.Sleep(20 * time.Millisecond) // a client polling /health, not a busy loop
				}
			})
			// The admin status lists each child with its role, within the cap.
			wg.Go(func() {
				for range 20 {
					p := opPoolOf(t, c, exe)
					if len(p.Children) > 2 {
						t.Errorf("admin status lists %d children, over max_processes 2", len(p.Children))
					}
					for _, ch := range p.Children {
						switch ch.Role {
						case "spare", "isolated", "shared", "stateless", "probe":
						default:
							t.Errorf("child %d has role %q", ch.PID, ch.Role)
						}
					}
					time.Sleep(20 * time.Millisecond) // an operator's status poll, not a busy loop
				}
			})
			wg.Wait()
			close(stop)
			sampler.Wait()
			t.Logf("%d calls answered, %d refused as busy; at most %d children at once", calls.Load(), refusals.Load(), most.Load())
			if most.Load() > 2 {
				t.Errorf("%d children of the command alive at once with max_processes 2", most.Load())
			}
			if most.Load() == 0 || calls.Load() == 0 {
				t.Errorf("the load never ran: %d children seen, %d calls answered", most.Load(), calls.Load())
			}
		})
	}
}

// TestNoChildOutlivesItsPool: with clients of every transport connected
// (so that sessions', stateless and probe children run), no child of the
// command is left after `caddy stop`, after a reload that retires the
// pool, or after kill -9 of Caddy, in either isolation.
func TestNoChildOutlivesItsPool(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	for _, isolation := range []string{"session", "shared"} {
		for _, end := range []string{"stop", "reload", "kill -9"} {
			t.Run(isolation+"/"+end, func(t *testing.T) {
				c := opStart(t, []string{exe}, opBridge(exe, "pool {\n\t\t\tisolation "+isolation+"\n\t\t}"))
				for name, connect := range clientsOfEveryTransport(t, c.base(0)) {
					cl, err := connect()
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					defer cl.Close()
					if _, err := cl.CallTool(t.Context(), &mcp.CallToolParams{Name: "test_simple_text"}); err != nil {
						t.Fatalf("%s: %v", name, err)
					}
				}
				opGetHealth(t, c.base(0))
				roles := map[string]bool{}
				for _, ch := range opPoolOf(t, c, exe).Children {
					roles[ch.Role] = true
				}
				if !roles["stateless"] || !roles[map[string]string{"session": "isolated", "shared": "shared"}[isolation]] {
					t.Fatalf("children by role before the end: %v", roles)
				}
				switch end {
				case "stop":
					c.Stop(t)
				case "reload":
					// The same command in another pool, which starts no child
					// (no spare in session isolation): the old one retires.
					noSpare := map[string]string{"session": "\n\t\t\tmin_idle 0", "shared": ""}[isolation]
					c.Reload(t, c.caddyfile(opBridge(exe, "pool {\n\t\t\tisolation "+isolation+noSpare+"\n\t\t\tmax_processes 7\n\t\t}")))
					mcptest.WaitFor(t, 15*time.Second, "the retired pool's children to end", func() bool {
						return len(opPoolOf(t, c, exe).Children) == 0 && len(caddyChildren(t, c.Pid(), exe)) == 0
					})
				case "kill -9":
					c.Kill()
				}
				mcptest.WaitNoProcesses(t, exe, 10*time.Second)
			})
		}
	}
}

// TestReloadSpelledOutDefaultsKeepSessions: a reload to a config that
// spells out the defaults the first one left out keeps the pool, and the
// session on it.
func TestReloadSpelledOutDefaultsKeepSessions(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	c := opStart(t, []string{exe}, opBridge(exe))
	// No kept-alive connection: over HTTP/1.1 a POST that crosses the
	// reload's close of idle connections fails (see TestHTTP1ReloadsHangNoCall).
	session := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: c.base(0) + "/mcp", HTTPClient: opRaw}, opVersion)
	defer session.Close()
	session.CallText(t, "test_simple_text", nil)
	before := opPoolOf(t, c, exe).ConfigHash
	c.Reload(t, c.caddyfile(opBridge(exe,
		"max_message_size 16777216",
		"stop_timeout 2s",
		"term_timeout 3s",
		"replay_buffer 256 4MiB",
		"max_undelivered 4MiB",
		"pool {\n\t\t\tisolation session\n\t\t\tmin_idle 1\n\t\t\tmax_processes 32\n\t\t\tacquire_timeout 10s\n\t\t\tsession_idle_timeout 5m\n\t\t\thealth_check 15s\n\t\t\thealth_check_timeout 10s\n\t\t}",
	)))
	if after := opPoolOf(t, c, exe).ConfigHash; after != before {
		t.Errorf("pool %s became %s for a config that only spells out the defaults", before, after)
	}
	if got := session.CallText(t, "test_simple_text", nil); got == "" {
		t.Error("the session did not survive the reload")
	}
}
