package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// The fault tests cause, against a real Caddy with real children and
// go-sdk clients, what an operator meets: a child that hangs, one that
// crash-loops, a request nobody answers.

// TestHungChildIsKilled: a child stopped with kill -STOP, in either
// isolation, is found by the health check within health_check +
// health_check_timeout and killed; the call waiting on it fails with a
// JSON-RPC error that says the server stopped answering; every session
// that lived on it ends (its next request gets 404, so the client must
// initialize again); a new session works on a new child; /health, the
// admin API and the metrics count it.
func TestHungChildIsKilled(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	for _, isolation := range []string{"session", "shared"} {
		t.Run(isolation, func(t *testing.T) {
			c := opStart(t, []string{exe}, opBridge(exe,
				"pool {\n\t\t\tisolation "+isolation+"\n\t\t\thealth_check 500ms\n\t\t\thealth_check_timeout 1s\n\t\t}"))
			connect := func() *mcptest.Client {
				return mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: c.base(0) + "/mcp"}, opVersion)
			}
			a := connect()
			defer a.Close()
			a.CallText(t, "test_simple_text", nil)
			var others []*mcptest.Client
			if isolation == "shared" {
				b := connect() // on the same child
				defer b.Close()
				b.CallText(t, "test_simple_text", nil)
				others = append(others, b)
			}
			pid := opSessionPID(t, c, a.ID())
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			defer syscall.Kill(pid, syscall.SIGCONT)
			// The signal takes effect asynchronously: wait until the child is
			// stopped, so that the call below cannot beat it.
			mcptest.WaitFor(t, 5*time.Second, "the child to be stopped", func() bool {
				stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
				fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
				return len(fields) > 0 && fields[0] == "T"
			})

			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			_, err := a.CallTool(ctx, &mcp.CallToolParams{Name: "test_simple_text"})
			if err == nil || !strings.Contains(err.Error(), "stopped answering") {
				t.Fatalf("a call to a stopped child got %v, want a JSON-RPC error saying it stopped answering", err)
			}
			mcptest.WaitFor(t, 10*time.Second, "the stopped child to be killed", func() bool { return !mcptest.Running(exe, pid) })
			for i, cl := range append(others, a) {
				if _, err := cl.CallTool(t.Context(), &mcp.CallToolParams{Name: "test_simple_text"}); err == nil {
					t.Errorf("session %d of the killed child still answers: it should have ended", i)
				}
			}
			fresh := connect()
			defer fresh.Close()
			fresh.CallText(t, "test_simple_text", nil)

			_, h, _ := opGetHealth(t, c.base(0))
			if h.Status != "ok" || h.Hung != 1 || !strings.Contains(h.LastExit, "stopped answering") {
				t.Errorf("health after the hung child was replaced: %+v, want ok, hung 1 and why", h)
			}
			if p := opPoolOf(t, c, exe); p.Hung != 1 {
				t.Errorf("admin: hung %d, want 1", p.Hung)
			}
			role := map[string]string{"session": "isolated", "shared": "shared"}[isolation]
			fams, _ := opScrape(t, c)
			if n := opMetric(fams, "caddy_mcp_bridge_child_hung_total", map[string]string{"role": role}); n != 1 {
				t.Errorf("caddy_mcp_bridge_child_hung_total{role=%q} = %v, want 1", role, n)
			}
		})
	}
}

// TestChildThatStopsReadingIsKilled: a child that answers initialize and
// then never reads its stdin again, sent a 200 KB call (more than a pipe
// holds), wedges nothing. With the health check, the call fails with a
// JSON-RPC error saying the server stopped answering, and the child is
// killed. Without it, the client that gives up can still end its session
// (DELETE), which stops the child, and `caddy stop` returns at once.
func TestChildThatStopsReadingIsKilled(t *testing.T) {
	child := mcptest.TestChild(t)
	command := child + " -deaf-on tools/call"
	c := opStart(t, []string{child},
		opBridge(command, "pool {\n\t\t\thealth_check 500ms\n\t\t\thealth_check_timeout 2s\n\t\t}"),
		opBridge(command, "pool {\n\t\t\thealth_check off\n\t\t}", "stop_timeout 500ms", "max_message_size 256KiB"))
	big := map[string]any{"data": strings.Repeat("x", 200<<10)}

	checked := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: c.base(0) + "/mcp"}, opVersion)
	defer checked.Close()
	pid := opSessionPID(t, c, checked.ID())
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	deafen := func(cl *mcptest.Client, ctx context.Context) {
		go cl.CallTool(ctx, &mcp.CallToolParams{Name: "deafen"}) // it stops reading here
		mcptest.WaitFor(t, 10*time.Second, "the call that deafens the child in flight", func() bool {
			r, _ := opAdmin(t, c)
			for _, p := range r.Pools {
				if s := p.session(cl.ID()); s != nil {
					return s.InFlight == 1
				}
			}
			return false
		})
	}
	deafen(checked, ctx)
	_, err := checked.CallTool(ctx, &mcp.CallToolParams{Name: "big", Arguments: big})
	if err == nil || !strings.Contains(err.Error(), "stopped answering") {
		t.Fatalf("a 200 KB call to a child that stopped reading got %v, want a JSON-RPC error saying it stopped answering", err)
	}
	mcptest.WaitFor(t, 10*time.Second, "the deaf child to be killed", func() bool { return !mcptest.Running(child, pid) })

	unchecked := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: c.base(1) + "/mcp"}, opVersion)
	pid = opSessionPID(t, c, unchecked.ID())
	ctx, cancel = context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	deafen(unchecked, ctx)
	if _, err := unchecked.CallTool(ctx, &mcp.CallToolParams{Name: "big", Arguments: big}); err == nil {
		t.Fatal("a call to a child that stopped reading succeeded")
	}
	// What waits for the child's stdin is bounded by max_message_size: a
	// second large call fails at once, with a JSON-RPC error saying why.
	full, cancelFull := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancelFull()
	if _, err := unchecked.CallTool(full, &mcp.CallToolParams{Name: "big", Arguments: big}); err == nil || !strings.Contains(err.Error(), "not reading its input") {
		t.Errorf("a second large call to a child that stopped reading: %v, want a JSON-RPC error saying it is not reading its input", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- unchecked.Close() }() // DELETE
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("ending the session of a child that stopped reading hangs")
	}
	mcptest.WaitFor(t, 10*time.Second, "the deaf child to be stopped with its session", func() bool { return !mcptest.Running(child, pid) })
	if took := c.Stop(t); took > 10*time.Second {
		t.Errorf("caddy stop took %v", took)
	}
}

// opSessionPID is the pid of the child of the session id, in whichever
// pool it is.
func opSessionPID(t *testing.T, c *opCaddy, id string) int {
	t.Helper()
	r, body := opAdmin(t, c)
	for _, p := range r.Pools {
		if s := p.session(id); s != nil {
			return s.PID
		}
	}
	t.Fatalf("no session %s:\n%s", id, body)
	return 0
}

// TestAbandonedSessionsEnd: the TypeScript SDK's client ends without a
// DELETE, as the Inspector CLI and mcp-remote do, leaving a session with
// no stream behind; it ends after session_idle_timeout, and its child
// with it. A go-sdk session whose client holds its GET stream, idle as
// long, stays. With no max_processes given, the pool is capped at the
// workstation default.
func TestAbandonedSessionsEnd(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	node, dir := tsClientDir(t)
	c := opStart(t, []string{exe}, opBridge(exe, "pool {\n\t\t\tsession_idle_timeout 2s\n\t\t}"))
	held := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: c.base(0) + "/mcp"}, opVersion)
	defer held.Close()
	t.Setenv("MCPBRIDGE_TS_NO_DELETE", "1")
	runTSClient(t, node, dir, "streamable", c.base(0)+"/mcp", 0)
	var abandoned opSession
	for _, s := range opPoolOf(t, c, exe).Sessions {
		if !strings.HasPrefix(held.ID(), s.ID) {
			abandoned = s
		}
	}
	if abandoned.ID == "" || abandoned.ProtocolVersion != "2025-11-25" {
		t.Fatalf("the TypeScript client left no 2025-11-25 session behind: %+v", opPoolOf(t, c, exe).Sessions)
	}
	mcptest.WaitFor(t, 15*time.Second, "the abandoned session and its child to end", func() bool {
		return opPoolOf(t, c, exe).session(abandoned.ID) == nil && !mcptest.Running(exe, abandoned.PID)
	})
	if opPoolOf(t, c, exe).session(held.ID()) == nil {
		t.Fatal("the session whose client holds its GET stream ended as idle")
	}
	held.CallText(t, "test_simple_text", nil)
	if _, h, _ := opGetHealth(t, c.base(0)); h.Processes.Max != 32 {
		t.Errorf("health: max %d with no max_processes given, want the default 32", h.Processes.Max)
	}
}

// TestUndeliveredResultsAreNotKept: five clients each ask for a 10 MiB
// result and stop reading (a small receive buffer makes the bridge's
// write block), then go away. While they do not read, each session holds
// one result, as the admin API shows; once their connections are gone,
// the sessions do not keep the results (larger than replay_buffer's 4
// MiB): nothing undelivered is left. A go-sdk client still gets a 10 MiB
// result whole. In either isolation.
func TestUndeliveredResultsAreNotKept(t *testing.T) {
	child := mcptest.TestChild(t)
	command := child + " -huge 10485760"
	for _, isolation := range []string{"session", "shared"} {
		t.Run(isolation, func(t *testing.T) {
			c := opStart(t, []string{child}, opBridge(command, "pool {\n\t\t\tisolation "+isolation+"\n\t\t}"))
			endpoint := c.base(0) + "/mcp"
			undelivered := func() (total int64, sessions int) {
				for _, s := range opPoolOf(t, c, command).Sessions {
					total += s.UndeliveredBytes
					sessions++
				}
				return total, sessions
			}
			var stalled []*http.Response
			for i := range 5 {
				sid := rlRawSession(t, endpoint)
				req, _ := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"huge"}}`))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				req.Header.Set("Mcp-Session-Id", sid)
				req.Header.Set("MCP-Protocol-Version", opVersion)
				resp, err := nonReadingClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				stalled = append(stalled, resp)
				mcptest.WaitFor(t, 10*time.Second, "a result stuck for a client that does not read", func() bool {
					total, _ := undelivered()
					return total >= int64(i+1)*10<<20
				})
			}
			total, _ := undelivered()
			t.Logf("held for 5 clients that do not read: %d bytes", total)
			for _, resp := range stalled {
				resp.Body.Close() // unread: the connection closes
			}
			mcptest.WaitFor(t, 10*time.Second, "the sessions to let go of the results nobody read", func() bool {
				total, sessions := undelivered()
				return sessions == 5 && total == 0
			})
			if got := opConnect(t, endpoint, "").CallText(t, "huge", nil); len(got) != 10<<20 {
				t.Fatalf("a client that reads got %d bytes of a 10 MiB result", len(got))
			}
		})
	}
}

// nonReadingClient's connections have a 4 KiB receive buffer: a response
// it does not read soon fills it, and the server's write blocks.
var nonReadingClient = &http.Client{Transport: &http.Transport{
	DisableKeepAlives: true,
	DialContext: (&net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) {
			err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); cerr != nil {
			return cerr
		}
		return err
	}}).DialContext,
}}

// TestHTTP1ReloadsHangNoCall: 10 go-sdk sessions over plain HTTP/1.1 keep
// calling a tool that asks them for sampling (each answer takes 200ms),
// while 10 plain clients keep posting to a plain Caddy `respond` site of
// the same server, across 5 reloads. A reload closes idle keep-alive
// connections, and a POST that crosses that close fails with EOF or a
// reset: net/http's race, for the plain site as for the bridge. What the
// bridge must add to it is no hang: with request_timeout, a call whose
// sampling answer was lost with its POST fails in time instead of waiting
// on the child forever. The test logs both failure rates (the README
// reports them).
func TestHTTP1ReloadsHangNoCall(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	bridgeSite := opBridge(exe, "pool {\n\t\t\trequest_timeout 5s\n\t\t}")
	plainSite := func(i int) string { return fmt.Sprintf("respond \"plain %d\"", i) }
	c := opStart(t, []string{exe}, bridgeSite, plainSite(0))

	type tally struct{ calls, failed, hung atomic.Int32 }
	var bridgeCalls, plainCalls tally
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sessions []*mcptest.Client
	for range 10 {
		cl := mcptest.ConnectSlowSampler(t, &mcp.StreamableClientTransport{Endpoint: c.base(0) + "/mcp"}, opVersion, 200*time.Millisecond)
		defer cl.Close()
		sessions = append(sessions, cl)
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				_, err := cl.CallTool(ctx, &mcp.CallToolParams{Name: "test_sampling", Arguments: map[string]any{"prompt": "hi"}})
				hung := ctx.Err() != nil
				cancel()
				bridgeCalls.calls.Add(1)
				switch {
				case hung:
					bridgeCalls.hung.Add(1)
					t.Errorf("a call hung until its client gave up: %v", err)
				case err != nil:
					bridgeCalls.failed.Add(1)
					t.Logf("a bridge call failed: %v", err)
				}
			}
		})
		plain := &http.Client{Transport: &http.Transport{}}
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				resp, err := plain.Post(c.base(1), "text/plain", strings.NewReader("hello"))
				plainCalls.calls.Add(1)
				if err != nil {
					plainCalls.failed.Add(1)
					t.Logf("a plain POST failed: %v", err)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	for i := 1; i <= 5; i++ {
		time.Sleep(time.Second)
		c.Reload(t, c.caddyfile(bridgeSite, plainSite(i)))
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	alive := 0
	for _, cl := range sessions {
		if _, err := cl.CallTool(t.Context(), &mcp.CallToolParams{Name: "test_simple_text"}); err == nil {
			alive++
		}
	}
	t.Logf("over HTTP/1.1 across 5 reloads: bridge %d calls, %d failed, %d hung; plain Caddy site %d POSTs, %d failed; %d of 10 sessions alive after",
		bridgeCalls.calls.Load(), bridgeCalls.failed.Load(), bridgeCalls.hung.Load(), plainCalls.calls.Load(), plainCalls.failed.Load(), alive)
}

// TestCrashLoopIsContained: in front of a command that exits as soon as it
// starts, four go-sdk clients that keep trying to connect for 3 seconds
// get 503 with Retry-After once a few children have died young, and Caddy
// forks a handful of children, not one per attempt; /health says why.
func TestCrashLoopIsContained(t *testing.T) {
	c := opStart(t, nil, opBridge(`sh -c "exit 3"`))
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var attempts atomic.Int32
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				client := mcp.NewClient(&mcp.Implementation{Name: "crash-loop-test", Version: "1"}, nil)
				if s, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: c.base(0) + "/mcp"}, &mcp.ClientSessionOptions{ProtocolVersion: opVersion}); err == nil {
					s.Close()
					t.Error("a client connected to a command that exits at once")
				}
				attempts.Add(1)
			}
		})
	}
	wg.Wait()
	fams, _ := opScrape(t, c)
	spawns := opMetric(fams, "caddy_mcp_bridge_child_spawns_total", nil)
	t.Logf("%d connection attempts, %v children started", attempts.Load(), spawns)
	if spawns > 20 {
		t.Errorf("%v children started for %d attempts in 3s: the crash loop is not contained", spawns, attempts.Load())
	}
	resp, body := opPost(t, c.base(0)+"/mcp", "", "", opInit)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "keeps exiting as soon as it starts") {
		t.Errorf("initialize during the crash loop: %d, Retry-After %q, %s; want 503 with Retry-After saying why", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if status, h, _ := opGetHealth(t, c.base(0)); status != http.StatusServiceUnavailable || !strings.Contains(h.LastError, "keeps exiting") {
		t.Errorf("health during the crash loop: %d %+v", status, h)
	}
}

// TestCancelledCallClearsInFlight: a go-sdk client that gives up a call
// sends notifications/cancelled, which the server need not answer; the
// child gets it (with its own id for the request, in shared mode), the
// admin API's in_flight returns to 0 (a request left in flight would also
// keep the session from ever idling out), in either isolation.
func TestCancelledCallClearsInFlight(t *testing.T) {
	child := mcptest.Build(t, "github.com/mcpbridge/caddy-mcp-bridge/bridge/testdata/muxchild")
	for _, isolation := range []string{"session", "shared"} {
		t.Run(isolation, func(t *testing.T) {
			c := opStart(t, []string{child}, opBridge(child, "pool {\n\t\t\tisolation "+isolation+"\n\t\t}"))
			cl := opConnect(t, c.base(0)+"/mcp", "")
			inFlight := func() int {
				n := 0
				for _, s := range opPoolOf(t, c, child).Sessions {
					n += s.InFlight
				}
				return n
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() {
				_, err := cl.CallTool(ctx, &mcp.CallToolParams{Name: "slow", Arguments: map[string]any{"ms": 60000}})
				done <- err
			}()
			mcptest.WaitFor(t, 10*time.Second, "the slow call in flight", func() bool { return inFlight() == 1 })
			cancel()
			if err := <-done; err == nil {
				t.Fatal("the cancelled call succeeded")
			}
			mcptest.WaitFor(t, 10*time.Second, "no request in flight after the cancellation", func() bool { return inFlight() == 0 })
			mcptest.WaitFor(t, 10*time.Second, "the child to see the cancellation", func() bool {
				stats := cl.CallText(t, "stats", nil)
				return strings.Contains(stats, `"cancelled":[`) && !strings.Contains(stats, `"cancelled":[]`)
			})
		})
	}
}

// TestHostileChildren: a child that misbehaves on purpose, in either
// isolation, while two sessions have requests in flight on it: it floods
// server-to-client requests without reading its stdin (the bridge can
// route none of them, and its refusals fill the child's stdin), floods
// notifications, stops reading its stdin, or exits in the middle of a
// message. The pool of another site keeps working meanwhile, `caddy stop`
// returns within drain_timeout and the stop timeouts, and no child is
// left (opStart checks).
func TestHostileChildren(t *testing.T) {
	child := mcptest.TestChild(t)
	for _, hostile := range []struct{ name, flags string }{
		{"floods requests", "-flood-on hostile -flood requests"},
		{"floods notifications", "-flood-on hostile -flood notifications"},
		{"stops reading", "-deaf-on hostile"},
		{"exits mid-message", "-half-line-on hostile"},
		{"falls silent", "-silent-on hostile"},
		{"floods stderr", "-stderr-flood-on hostile"},
	} {
		for _, isolation := range []string{"session", "shared"} {
			t.Run(hostile.name+"/"+isolation, func(t *testing.T) {
				c := opStart(t, []string{child},
					opBridge(child+" "+hostile.flags, "drain_timeout 2s", "stop_timeout 500ms", "term_timeout 500ms",
						"pool {\n\t\t\tisolation "+isolation+"\n\t\t\thealth_check 500ms\n\t\t\thealth_check_timeout 1s\n\t\t}"),
					opBridge(child))
				endpoint := c.base(0) + "/mcp"
				a, b := rlRawSession(t, endpoint), rlRawSession(t, endpoint)
				var wg sync.WaitGroup
				for sid, method := range map[string]string{a: "hostile", b: "echo"} {
					wg.Go(func() {
						req, _ := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(`{"jsonrpc":"2.0","id":9,"method":"`+method+`"}`))
						req.Header.Set("Content-Type", "application/json")
						req.Header.Set("Accept", "application/json, text/event-stream")
						req.Header.Set("Mcp-Session-Id", sid)
						req.Header.Set("MCP-Protocol-Version", opVersion)
						ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
						defer cancel()
						if resp, err := opRaw.Do(req.WithContext(ctx)); err == nil {
							io.Copy(io.Discard, resp.Body) // whatever comes, until the deadline
							resp.Body.Close()
						}
					})
				}
				healthy := opConnect(t, c.base(1)+"/mcp", "")
				for range 5 {
					healthy.CallText(t, "echo", nil)
					time.Sleep(200 * time.Millisecond)
				}
				wg.Wait()
				healthy.CallText(t, "echo", nil)
				if n := strings.Count(c.Output(), `"msg":"child stderr"`); n > 200 {
					t.Errorf("%d lines of a child's stderr reached Caddy's log, want a burst of 100 and 10 a second", n)
				}
				if took := c.Stop(t); took > 2*time.Second+time.Second+5*time.Second {
					t.Errorf("caddy stop took %v with a hostile child, want drain_timeout and the stop timeouts at most", took)
				}
			})
		}
	}
}

// TestEscapedDaemonIsKilled: a child that starts a daemon (a session of
// its own, its parent gone at once, as a double fork leaves it) does not
// leave it running: it ends with the child's session (DELETE), and with
// Caddy's stop.
func TestEscapedDaemonIsKilled(t *testing.T) {
	child := mcptest.TestChild(t)
	c := opStart(t, []string{child}, opBridge(child+" -daemonize"))
	endpoint := c.base(0) + "/mcp"
	daemon := func(sid string) int {
		_, body := opPost(t, endpoint, sid, "", `{"jsonrpc":"2.0","id":2,"method":"grandchild"}`)
		var answer struct {
			Result struct {
				PID int `json:"pid"`
			} `json:"result"`
		}
		data := secSSEData(body)
		if len(data) == 0 || json.Unmarshal(data[len(data)-1], &answer) != nil || answer.Result.PID == 0 {
			t.Fatalf("no daemon pid: %s", body)
		}
		pid := answer.Result.PID
		if pgid, _ := syscall.Getpgid(pid); pgid == opSessionPID(t, c, sid) {
			t.Fatalf("the daemon %d is in its child's process group: it did not escape", pid)
		}
		return pid
	}
	sid := rlRawSession(t, endpoint)
	first := daemon(sid)
	secDelete(c.base(0), sid)
	mcptest.WaitFor(t, 10*time.Second, "the daemon of a deleted session to end", func() bool { return !mcptest.Running(child, first) })

	second := daemon(rlRawSession(t, endpoint))
	c.Stop(t)
	if mcptest.Running(child, second) {
		t.Errorf("the daemon %d outlived caddy stop", second)
	}
}
