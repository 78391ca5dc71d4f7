package caddymodule

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/wsclient"
)

// The reload and stop tests change a running Caddy's config with `caddy
// reload`, or stop it, while real go-sdk clients have sessions open and
// calls in flight on children that are slow to answer (testchild -delay).

// rlCall is one tools/call on a session and its outcome.
type rlCall struct {
	text string
	err  error
	done time.Time
}

// rlCallAll starts a tools/call "slow" with {"i": i} on each session and
// returns a function that waits for them all.
func rlCallAll(sessions []*mcptest.Client) func() []rlCall {
	return rlCallAllContext(context.Background(), sessions)
}

// rlCallAllContext is rlCallAll with the calls bound to ctx too.
func rlCallAllContext(ctx context.Context, sessions []*mcptest.Client) func() []rlCall {
	results := make([]rlCall, len(sessions))
	var wg sync.WaitGroup
	for i, s := range sessions {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: "slow", Arguments: map[string]any{"i": i}})
			results[i] = rlCall{err: err, done: time.Now()}
			if err == nil {
				if len(res.Content) == 1 {
					if tc, ok := res.Content[0].(*mcp.TextContent); ok {
						results[i].text = tc.Text
					}
				}
				if res.IsError {
					results[i].err = fmt.Errorf("error result %+v", res)
				}
			}
		})
	}
	return func() []rlCall {
		wg.Wait()
		return results
	}
}

// rlCheckCalls fails the test for every call that failed or answered
// something other than testchild's "slow:{"i":<i>}".
func rlCheckCalls(t *testing.T, what string, calls []rlCall) {
	t.Helper()
	failed := 0
	for i, c := range calls {
		want := fmt.Sprintf(`slow:{"i":%d}`, i)
		if c.err != nil || c.text != want {
			failed++
			if failed <= 5 {
				t.Errorf("%s: call %d: %q, %v; want %q", what, i, c.text, c.err, want)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%s: %d of %d calls failed", what, failed, len(calls))
	}
}

// rlConnectAll opens n go-sdk sessions at once, with hc as their HTTP
// client (nil for Go's default). Unless noGET, each keeps its standalone
// GET stream open, as the go-sdk client does by default. Cleanup closes
// them.
func rlConnectAll(t *testing.T, hc *http.Client, endpoint string, n int, noGET bool) []*mcptest.Client {
	t.Helper()
	client := mcp.NewClient(&mcp.Implementation{Name: "reload-test", Version: "1"}, nil)
	sessions := make([]*mcptest.Client, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Go(func() {
			transport := &mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: hc, DisableStandaloneSSE: noGET}
			s, err := client.Connect(t.Context(), transport, &mcp.ClientSessionOptions{ProtocolVersion: opVersion})
			sessions[i], errs[i] = &mcptest.Client{ClientSession: s}, err
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for i, s := range sessions {
			if errs[i] == nil {
				s.Close()
			}
		}
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("connect %d of %d: %v", i, n, err)
		}
	}
	return sessions
}

// rlWatch is Go's default HTTP transport, watched: it counts what the
// go-sdk clients that use it do in the background, for the tests to wait
// on. Such a client reads a call's stream in a goroutine of its own, which
// closes it only after the call has returned, and reopens a GET stream
// the server closed after a backoff.
type rlWatch struct {
	base      http.RoundTripper // nil: http.DefaultTransport
	openPOSTs atomic.Int64      // POST answers whose bodies are not closed yet
	streams   atomic.Int64      // GET streams opened
}

func (w *rlWatch) RoundTrip(r *http.Request) (*http.Response, error) {
	base := w.base
	if base == nil {
		base = http.DefaultTransport
	}
	resp, err := base.RoundTrip(r)
	if err != nil {
		return resp, err
	}
	switch {
	case r.Method == http.MethodPost:
		w.openPOSTs.Add(1)
		resp.Body = &rlWatchedBody{ReadCloser: resp.Body, open: &w.openPOSTs}
	case r.Method == http.MethodGet && resp.StatusCode == http.StatusOK:
		w.streams.Add(1)
	}
	return resp, nil
}

// client is an http.Client that sends through w.
func (w *rlWatch) client() *http.Client { return &http.Client{Transport: w} }

// rlWatchedBody is the body of a POST answer, counted in open until it is
// closed.
type rlWatchedBody struct {
	io.ReadCloser
	open *atomic.Int64
	once sync.Once
}

func (b *rlWatchedBody) Close() error {
	b.once.Do(func() { b.open.Add(-1) })
	return b.ReadCloser.Close()
}

// rlForgetOldConnections lets the HTTP transport of the go-sdk clients
// that w watches (Go's default) drop its connections to the old server
// after a reload, so that their next requests reach the new one. Otherwise
// a POST may go out on a connection to the old server and fail, and Go's
// client does not retry a POST. Two ways: the old server closes each
// connection once its response is over, and a client that sends on it
// before it has seen the close gets "server closed idle connection" (the
// go-sdk client hands back a call's connection only once it has closed the
// call's stream, after the call has returned, so the test waits for that);
// and Go's client dials connections ahead and pools those it did not need,
// which the old server leaves open (no request read yet) for up to 5s,
// then closes without an answer when a request comes on one (EOF;
// net/http server.go: "if c.server.shuttingDown() { return }"), so the
// test closes the idle ones. That is Go's and Caddy's graceful reload, the
// same whatever the handler; the tests step around it so that what they
// find is the bridge's.
func rlForgetOldConnections(t *testing.T, w *rlWatch) {
	t.Helper()
	mcptest.WaitFor(t, 10*time.Second, "the go-sdk clients to close their calls' streams", func() bool {
		return w.openPOSTs.Load() == 0
	})
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
}

// rlInFlight is the number of requests the pool running command waits on.
func rlInFlight(t *testing.T, c *opCaddy, command string) int {
	n := 0
	for _, s := range opPoolOf(t, c, command).Sessions {
		n += s.InFlight
	}
	return n
}

// rlSessionPIDs maps the session id prefixes of a pool to their pids.
func rlSessionPIDs(p *opPool) map[string]int {
	m := map[string]int{}
	for _, s := range p.Sessions {
		m[s.ID] = s.PID
	}
	return m
}

// rlOriginStatus is the status of a request with an Origin header: 403
// when the origin is refused, 400 (no session) when it is allowed.
func rlOriginStatus(t *testing.T, endpoint, origin string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Origin", origin)
	resp, err := opRaw.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestReloadUnderLoad reloads with a changed allowed_origins (the child
// configuration unchanged) while 50 sessions each have a call in flight:
// every call succeeds, every session and child carries on.
func TestReloadUnderLoad(t *testing.T) {
	exe := mcptest.Build(t, opTestChildPackage)
	command := exe + " -delay 1s"
	// 50 sessions need more children than the default cap.
	uncapped := "pool {\n\t\t\tmax_processes off\n\t\t}"
	c := opStart(t, []string{exe}, opBridge(command, "allowed_origins https://a.example", uncapped))
	endpoint := c.base(0) + "/mcp"
	if code := rlOriginStatus(t, endpoint, "https://b.example"); code != http.StatusForbidden {
		t.Fatalf("origin b before the reload: %d, want 403", code)
	}

	const n = 50
	var watch rlWatch
	sessions := rlConnectAll(t, watch.client(), endpoint, n, false)
	wait := rlCallAll(sessions)
	mcptest.WaitFor(t, 10*time.Second, "50 calls in flight", func() bool { return rlInFlight(t, c, command) == n })
	pidsBefore := mcptest.Processes(exe)
	slices.Sort(pidsBefore)
	poolBefore := opPoolOf(t, c, command)

	reloadStart := time.Now()
	c.Reload(t, c.caddyfile(opBridge(command, "allowed_origins https://a.example https://b.example", uncapped)))
	reloadTook := time.Since(reloadStart)
	calls := wait()
	rlCheckCalls(t, "calls in flight during the reload", calls)
	after := 0
	for _, call := range calls {
		if call.done.After(reloadStart) {
			after++
		}
	}
	t.Logf("caddy reload took %v; %d of %d calls finished after it began", reloadTook, after, n)
	if after == 0 {
		t.Error("no call was still in flight when the reload began: the test proves nothing")
	}
	if code := rlOriginStatus(t, endpoint, "https://b.example"); code == http.StatusForbidden {
		t.Error("origin b still refused after the reload: the new config is not in effect")
	}

	// Every session is still valid: a second call on each.
	rlForgetOldConnections(t, &watch)
	rlCheckCalls(t, "calls after the reload", rlCallAll(sessions)())

	pidsAfter := mcptest.Processes(exe)
	slices.Sort(pidsAfter)
	if !slices.Equal(pidsBefore, pidsAfter) {
		t.Errorf("child pids changed across the reload:\nbefore %v\nafter  %v", pidsBefore, pidsAfter)
	}
	poolAfter := opPoolOf(t, c, command)
	if before, after := rlSessionPIDs(poolBefore), rlSessionPIDs(poolAfter); len(before) != n || !maps.Equal(before, after) {
		t.Errorf("sessions changed across the reload: %d before, %d after", len(before), len(after))
	}
	for _, s := range sessions {
		if poolAfter.session(s.ID()) == nil {
			t.Errorf("session %s is missing from the admin report after the reload", s.ID())
		}
	}
	if poolAfter.ConfigHash != poolBefore.ConfigHash {
		t.Errorf("the pool changed: %s, then %s", poolBefore.ConfigHash, poolAfter.ConfigHash)
	}
}

// rlCmdline is a process's command line, words joined by spaces.
func rlCmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// TestReloadChangedCommand reloads with another child command while calls
// are in flight: they finish on the old children, which are then stopped;
// new sessions run the new command; the old sessions are gone (404).
//
// The calls take 3s, longer than the go-sdk client's reconnect backoff for
// a standalone GET stream (1-2s). Half the sessions keep that stream open
// (the go-sdk default), half do not. Were the retired pool's GET streams
// closed at the reload, as a kept pool's are, their clients would
// reconnect during the drain to the new configuration, which does not know
// the session (404), and the go-sdk client would fail the whole session,
// its call in flight included.
func TestReloadChangedCommand(t *testing.T) {
	exe := mcptest.Build(t, opTestChildPackage)
	oldCommand, newCommand := exe+" -delay 3s", exe+" -delay 10ms"
	c := opStart(t, []string{exe}, opBridge(oldCommand, "drain_timeout 5s"))
	endpoint := c.base(0) + "/mcp"

	const n = 3
	var watch rlWatch
	withGET := rlConnectAll(t, watch.client(), endpoint, n, false)
	withoutGET := rlConnectAll(t, watch.client(), endpoint, n, true)
	sessions := append(append([]*mcptest.Client(nil), withGET...), withoutGET...)
	waitWith, waitWithout := rlCallAll(withGET), rlCallAll(withoutGET)
	mcptest.WaitFor(t, 10*time.Second, "the calls in flight", func() bool { return rlInFlight(t, c, oldCommand) == 2*n })
	oldPids := mcptest.Processes(exe)
	if len(oldPids) != 2*n+1 {
		t.Fatalf("%d children before the reload, want %d sessions' and a spare", len(oldPids), 2*n+1)
	}

	reloadStart := time.Now()
	c.Reload(t, c.caddyfile(opBridge(newCommand, "drain_timeout 5s")))
	t.Logf("caddy reload took %v", time.Since(reloadStart))
	rlCheckCalls(t, "calls in flight on the old pool, sessions without a GET stream", waitWithout())
	rlCheckCalls(t, "calls in flight on the old pool, sessions with a GET stream", waitWith())

	// A new session runs the new command.
	rlForgetOldConnections(t, &watch)
	fresh := opConnect(t, endpoint, "")
	if got := fresh.CallText(t, "fast", map[string]any{"x": 1}); got != `fast:{"x":1}` {
		t.Errorf("new session's call: %q", got)
	}
	pool := opPoolOf(t, c, newCommand)
	st := pool.session(fresh.ID())
	if st == nil {
		t.Fatalf("the new session is not in the new pool: %+v", pool.Sessions)
	}
	if got := rlCmdline(st.PID); got != newCommand {
		t.Errorf("the new session's child %d runs %q, want %q", st.PID, got, newCommand)
	}
	if slices.Contains(oldPids, st.PID) {
		t.Errorf("the new session got an old child, %d", st.PID)
	}
	r, raw := opAdmin(t, c)
	if len(r.Pools) != 1 {
		t.Errorf("%d pools after the reload, want only the new one:\n%s", len(r.Pools), raw)
	}

	// The old children are gone once the drain is over.
	mcptest.WaitFor(t, 5*time.Second+5*time.Second, "the old children to exit", func() bool {
		for _, pid := range oldPids {
			if mcptest.Running(exe, pid) {
				return false
			}
		}
		return true
	})
	t.Logf("old children gone %v after the reload began", time.Since(reloadStart))

	// The old sessions are gone: 404, and the go-sdk client errors.
	for i, s := range sessions {
		resp, body := opPost(t, endpoint, s.ID(), "", `{"jsonrpc":"2.0","id":7,"method":"tools/list"}`)
		if resp.StatusCode != http.StatusNotFound || opErrorCode(body) != bridge.CodeSessionNotFound {
			t.Errorf("old session %d: %d %s, want 404 with %d", i, resp.StatusCode, body, bridge.CodeSessionNotFound)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := s.CallTool(ctx, &mcp.CallToolParams{Name: "slow"})
		cancel()
		if err == nil {
			t.Errorf("old session %d: a call after the reload succeeded", i)
		} else if i == 0 {
			// What the go-sdk client reports (documentation, not contract).
			t.Logf("old session's call after the reload: %v", err)
		}
	}

	// No orphan: what runs is the new pool's children, nothing else.
	mcptest.WaitFor(t, 5*time.Second, "only the new pool's children to run", func() bool {
		got := mcptest.Processes(exe)
		slices.Sort(got)
		return slices.Equal(got, opPoolOf(t, c, newCommand).childPIDs())
	})
	for _, pid := range mcptest.Processes(exe) {
		if got := rlCmdline(pid); got != newCommand {
			t.Errorf("process %d runs %q after the drain", pid, got)
		}
	}
}

// TestReloadRemovesHandler reloads to a config without mcp_bridge while a
// call is in flight: it finishes, then every child stops, with Caddy
// still running.
func TestReloadRemovesHandler(t *testing.T) {
	exe := mcptest.Build(t, opTestChildPackage)
	command := exe + " -delay 1s"
	c := opStart(t, []string{exe}, opBridge(command, "drain_timeout 5s"))
	endpoint := c.base(0) + "/mcp"
	sessions := rlConnectAll(t, nil, endpoint, 2, false)
	wait := rlCallAll(sessions[:1])
	mcptest.WaitFor(t, 10*time.Second, "the call in flight", func() bool { return rlInFlight(t, c, command) == 1 })
	if n := len(mcptest.Processes(exe)); n != 3 {
		t.Fatalf("%d children, want 3", n)
	}

	reloadStart := time.Now()
	c.Reload(t, c.caddyfile(`respond "no bridge here" 200`))
	rlCheckCalls(t, "the call in flight", wait())
	mcptest.WaitNoProcesses(t, exe, 10*time.Second)
	t.Logf("children gone %v after the reload began", time.Since(reloadStart))

	if r, raw := opAdmin(t, c); len(r.Pools) != 0 {
		t.Errorf("pools after the handler was removed:\n%s", raw)
	}
	resp, body := opPost(t, endpoint, "", "", opInit)
	if resp.StatusCode != http.StatusOK || string(body) != "no bridge here" {
		t.Errorf("POST /mcp after the reload: %d %q, want the new config's 200", resp.StatusCode, body)
	}
	if _, err := c.AdminGet("/config/"); err != nil {
		t.Errorf("Caddy is not running: %v", err)
	}
}

// TestStopWithSessionsOnAllTransports runs `caddy stop` with a session
// open on each transport (the Streamable HTTP one with its GET stream open)
// and a call in flight: it returns within the drain and kill timeouts and
// leaves no child.
func TestStopWithSessionsOnAllTransports(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	child := mcptest.Build(t, opTestChildPackage)
	c := opStart(t, []string{exe, child}, opBridge(exe, "drain_timeout 5s"), opBridge(child+" -delay 2s", "drain_timeout 5s"))
	base := c.base(0)
	streamable := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: base + "/mcp"}, opVersion)
	sse := mcptest.Connect(t, &mcp.SSEClientTransport{Endpoint: base + "/sse"}, "")
	ws := mcptest.Connect(t, &wsclient.Transport{URL: "ws" + strings.TrimPrefix(base, "http") + "/ws"}, "")
	for _, s := range []*mcptest.Client{streamable, sse, ws} {
		s.CallText(t, "test_simple_text", nil)
	}
	transports := map[string]bool{}
	for _, s := range opPoolOf(t, c, exe).Sessions {
		transports[s.Transport] = true
	}
	if !transports["streamable"] || !transports["sse"] || !transports["ws"] || len(transports) != 3 {
		t.Fatalf("sessions by transport: %v", transports)
	}
	slow := rlConnectAll(t, nil, c.base(1)+"/mcp", 1, false)
	wait := rlCallAll(slow)
	mcptest.WaitFor(t, 10*time.Second, "the slow call in flight", func() bool { return rlInFlight(t, c, child+" -delay 2s") == 1 })

	took := c.Stop(t)
	t.Logf("caddy stop took %v", took)
	if took > 15*time.Second {
		t.Errorf("caddy stop took %v with open sessions, want under 15s", took)
	}
	mcptest.WaitNoProcesses(t, exe, 5*time.Second)
	mcptest.WaitNoProcesses(t, child, 5*time.Second)
	// The call in flight had its drain: it finished before Caddy exited.
	rlCheckCalls(t, "the call in flight at the stop", wait())
}

// TestStopDrainsPoolsConcurrently runs `caddy stop` while three pools each
// have a call in flight that never ends in time: the stop takes one drain
// (and the children's stop and term timeouts), not one per pool.
func TestStopDrainsPoolsConcurrently(t *testing.T) {
	child := mcptest.Build(t, opTestChildPackage)
	const pools = 3
	var sites []string
	command := child + " -delay 60s"
	for i := range pools {
		// An env line of its own gives each site a pool of its own.
		sites = append(sites, opBridge(command, "drain_timeout 2s", "stop_timeout 500ms", "term_timeout 500ms", fmt.Sprintf("env POOL %d", i)))
	}
	c := opStart(t, []string{child}, sites...)
	// The calls are cut by the drain; their clients would then try to
	// resume them for a while: the test ends them once Caddy has stopped.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waits []func() []rlCall
	for i := range pools {
		waits = append(waits, rlCallAllContext(ctx, rlConnectAll(t, nil, c.base(i)+"/mcp", 1, true)))
	}
	mcptest.WaitFor(t, 10*time.Second, "a call in flight in each pool", func() bool {
		r, _ := opAdmin(t, c)
		n := 0
		for _, p := range r.Pools {
			for _, s := range p.Sessions {
				n += s.InFlight
			}
		}
		return len(r.Pools) == pools && n == pools
	})
	took := c.Stop(t)
	t.Logf("caddy stop took %v with %d pools draining", took, pools)
	// One drain is 2s, then stdin closed and 500ms, SIGTERM (which ends
	// testchild): about 2.5s. Were each handler's "stopping" event to
	// drain its pool before the next handler's runs, it would take 3 x 2.5s.
	if limit := 2*time.Second + 500*time.Millisecond + 500*time.Millisecond + 1500*time.Millisecond; took > limit {
		t.Errorf("caddy stop took %v with %d pools draining, want under %v (one drain, not one per pool)", took, pools, limit)
	}
	cancel()
	for i, wait := range waits {
		for _, call := range wait() {
			if call.err == nil {
				t.Errorf("a call cut by the drain succeeded: %q", call.text)
			} else if i == 0 {
				t.Logf("what the client of a call cut by the drain got: %v", call.err)
			}
		}
	}
	mcptest.WaitNoProcesses(t, child, 5*time.Second)
}

// TestReloadStreamCloseDelay reloads with stream_close_delay 200ms: the old
// instance's GET streams close about 200ms later, and a go-sdk session
// reconnects its own and keeps working, notifications included.
func TestReloadStreamCloseDelay(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	c := opStart(t, []string{exe}, opBridge(exe, "stream_close_delay 200ms", "allowed_origins https://a.example"))
	endpoint := c.base(0) + "/mcp"

	changed := make(chan struct{}, 10)
	client := mcp.NewClient(&mcp.Implementation{Name: "reload-test", Version: "1"}, &mcp.ClientOptions{
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) { changed <- struct{}{} },
	})
	var watch rlWatch
	session, err := client.Connect(t.Context(), &mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: watch.client()}, &mcp.ClientSessionOptions{ProtocolVersion: opVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	call := func(name string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := session.CallTool(ctx, &mcp.CallToolParams{Name: name})
		if err != nil {
			t.Fatalf("call %s: %v", name, err)
		}
		return res.Content[0].(*mcp.TextContent).Text
	}
	call("test_simple_text")
	before := opPoolOf(t, c, exe).session(session.ID())
	if before == nil {
		t.Fatal("the session is not in the admin report")
	}

	// A raw GET stream of a session of its own shows when the old
	// instance closes its streams.
	sid := rlRawSession(t, endpoint)
	req, _ := http.NewRequest(http.MethodGet, endpoint, nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Mcp-Session-Id", sid)
	req.Header.Set("MCP-Protocol-Version", opVersion)
	resp, err := opRaw.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET stream: %v %v", resp, err)
	}
	streamEnded := make(chan time.Time, 1)
	go func() {
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		streamEnded <- time.Now()
	}()
	// The go-sdk session opens its GET stream once connected, in the
	// background.
	mcptest.WaitFor(t, 10*time.Second, "the session's GET stream to open", func() bool { return watch.streams.Load() > 0 })
	opened := watch.streams.Load()

	reloadStart := time.Now()
	c.Reload(t, c.caddyfile(opBridge(exe, "stream_close_delay 200ms", "allowed_origins https://b.example")))
	reloaded := time.Now()
	select {
	case end := <-streamEnded:
		t.Logf("the old GET stream ended %v after caddy reload returned (%v after it began)", end.Sub(reloaded), end.Sub(reloadStart))
		if end.Sub(reloadStart) < 200*time.Millisecond {
			t.Errorf("the old GET stream ended %v after the reload began, before stream_close_delay", end.Sub(reloadStart))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the old instance's GET stream was still open 5s after the reload")
	}

	// The go-sdk session reopens its stream (1-2s backoff) and works.
	mcptest.WaitFor(t, 10*time.Second, "the session to reopen its GET stream", func() bool { return watch.streams.Load() > opened })
	rlForgetOldConnections(t, &watch)
	if got := call("test_simple_text"); got == "" {
		t.Error("empty result after the reload")
	}
	after := opPoolOf(t, c, exe).session(session.ID())
	if after == nil || after.PID != before.PID {
		t.Errorf("the session after the reload: %+v, before %+v", after, before)
	}
	// A notification on the session's GET stream still arrives.
	for len(changed) > 0 {
		<-changed
	}
	call("test_trigger_tool_change")
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Error("no notifications/tools/list_changed reached the session after the reload")
	}
}

// rlRawSession opens a session with raw HTTP and returns its id.
func rlRawSession(t *testing.T, endpoint string) string {
	t.Helper()
	resp, body := opPost(t, endpoint, "", "", opInit)
	sid := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || sid == "" {
		t.Fatalf("initialize: %d %s", resp.StatusCode, body)
	}
	t.Cleanup(func() {
		req, _ := http.NewRequest(http.MethodDelete, endpoint, nil)
		req.Header.Set("Mcp-Session-Id", sid)
		if resp, err := opRaw.Do(req); err == nil {
			resp.Body.Close()
		}
	})
	if resp, body := opPost(t, endpoint, sid, "", `{"jsonrpc":"2.0","method":"notifications/initialized"}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("notifications/initialized: %d %s", resp.StatusCode, body)
	}
	return sid
}

// TestMistypedCommandIsRefused: `caddy validate` fails on a command that
// cannot be found, naming it, and `caddy reload` to it fails and leaves
// the working config, its pool and its session, in place.
func TestMistypedCommandIsRefused(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	c := opStart(t, []string{exe}, opBridge(exe))
	session := opConnect(t, c.base(0)+"/mcp", "")
	session.CallText(t, "test_simple_text", nil)
	pool := opPoolOf(t, c, exe).ConfigHash

	mistyped := c.caddyfile(opBridge("npxx -y @modelcontextprotocol/server-everything"))
	path := filepath.Join(c.Dir, "Caddyfile.mistyped")
	if err := os.WriteFile(path, []byte(mistyped), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"validate", "--config", path, "--adapter", "caddyfile"},
		{"reload", "--config", path, "--adapter", "caddyfile", "--address", c.admin},
	} {
		out, err := c.Run(args...)
		if err == nil {
			t.Errorf("caddy %s succeeded with a mistyped command:\n%s", args[0], out)
		}
		if !strings.Contains(out, "npxx") || !strings.Contains(out, "not found on the PATH") {
			t.Errorf("caddy %s does not say what is wrong:\n%s", args[0], out)
		}
	}
	if got := opPoolOf(t, c, exe).ConfigHash; got != pool {
		t.Errorf("the pool changed (%s, was %s) after a refused reload", got, pool)
	}
	if got := session.CallText(t, "test_simple_text", nil); got == "" {
		t.Error("the session does not work after a refused reload")
	}
}

// TestReloadToBrokenServerIsRefused: a reload to a command that exists but
// dies before it answers initialize fails (non-zero, naming the command
// and what went wrong), and the running pool, its session and /health
// carry on; a reload to a working command then goes through.
func TestReloadToBrokenServerIsRefused(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	child := mcptest.TestChild(t)
	c := opStart(t, []string{exe, child}, opBridge(exe))
	session := opConnect(t, c.base(0)+"/mcp", "")
	session.CallText(t, "test_simple_text", nil)
	pool := opPoolOf(t, c, exe).ConfigHash

	broken := child + " -die-on initialize"
	path := filepath.Join(c.Dir, "Caddyfile.broken")
	if err := os.WriteFile(path, []byte(c.caddyfile(opBridge(broken))), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := c.Run("reload", "--config", path, "--adapter", "caddyfile", "--address", c.admin)
	if err == nil {
		t.Fatalf("caddy reload to a server that dies at initialize succeeded:\n%s", out)
	}
	if !strings.Contains(out, broken) || !strings.Contains(out, "cannot serve") {
		t.Errorf("caddy reload does not say what is wrong:\n%s", out)
	}
	if got := opPoolOf(t, c, exe).ConfigHash; got != pool {
		t.Errorf("the pool changed (%s, was %s) after a refused reload", got, pool)
	}
	session.CallText(t, "test_simple_text", nil)
	if status, h, _ := opGetHealth(t, c.base(0)); status != http.StatusOK || h.Tools <= 0 {
		t.Errorf("health after a refused reload: %d %+v", status, h)
	}
	mcptest.WaitNoProcesses(t, child, 10*time.Second) // the refused pool's probe child

	c.Reload(t, c.caddyfile(opBridge(child)))
	opConnect(t, c.base(0)+"/mcp", "").CallText(t, "echo", nil)
}
