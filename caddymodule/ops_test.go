package caddymodule

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/wsclient"
)

// The operations tests (health report, admin API, metrics) and the reload
// and CLI tests run a real Caddy, real children and real clients. The
// helpers here are shared by ops_test.go, reload_test.go and cli_test.go.

// opTestChildPackage is the minimal stdio MCP server of the tests; with
// -delay it takes that long to answer tools/call.
const opTestChildPackage = "github.com/mcpbridge/caddy-mcp-bridge/internal/testchild"

// opVersion is the protocol version the tests' go-sdk clients ask for.
const opVersion = "2025-11-25"

// opCaddy is a real Caddy whose sites each listen on a port of their own.
type opCaddy struct {
	*mcptest.Caddy
	admin string
	ports []int
}

// opStart runs a Caddy with one site per body (the inside of a site block)
// and an admin endpoint on a free port. At cleanup, after Caddy has
// stopped, no process of any of exes may be left.
func opStart(t *testing.T, exes []string, bodies ...string) *opCaddy {
	t.Helper()
	o := &opCaddy{admin: fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))}
	var addrs []string
	for range bodies {
		port := mcptest.FreePort(t)
		o.ports = append(o.ports, port)
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", port))
	}
	// Cleanups run last first: these run after Caddy has stopped.
	for _, exe := range exes {
		t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	}
	o.Caddy = mcptest.StartCaddy(t, t.TempDir(), o.caddyfile(bodies...), o.admin, addrs...)
	return o
}

// caddyfile is a config for the same admin endpoint and ports: site i
// gets bodies[i]. Fewer bodies than ports leave the last ports unserved.
func (o *opCaddy) caddyfile(bodies ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin %s\n}\n", o.admin)
	for i, body := range bodies {
		fmt.Fprintf(&b, "\n:%d {\n\tbind 127.0.0.1\n\t%s\n}\n", o.ports[i], body)
	}
	return b.String()
}

// base is the URL of site i.
func (o *opCaddy) base(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", o.ports[i]) }

// opBridge is an mcp_bridge directive running command, with more options,
// one a line.
func opBridge(command string, opts ...string) string {
	return "mcp_bridge {\n\t\tcommand " + command + "\n\t\t" + strings.Join(opts, "\n\t\t") + "\n\t}"
}

// opReport is the admin API's GET /mcp_bridge/, decoded with the JSON
// names operators' tools depend on (not with the package's own types, so
// that a renamed field shows).
type opReport struct {
	Pools []opPool `json:"pools"`
}

type opPool struct {
	ConfigHash string   `json:"config_hash"`
	Command    []string `json:"command"`
	Isolation  string   `json:"isolation"`
	Children   []struct {
		PID      int    `json:"pid"`
		Role     string `json:"role"`
		Sessions int    `json:"sessions"`
	} `json:"children"`
	Sessions  []opSession `json:"sessions"`
	Crashes   int64       `json:"crashes"`
	Hung      int64       `json:"hung"`
	LastError string      `json:"last_error"`
}

type opSession struct {
	ID              string `json:"id"`
	Transport       string `json:"transport"`
	ProtocolVersion string `json:"protocol_version"`
	Key             string `json:"key"`
	PID             int    `json:"pid"`
	InFlight        int    `json:"in_flight"`
	// UndeliveredBytes is what waits for the client to read it.
	UndeliveredBytes int64 `json:"undelivered_bytes"`
}

// childPIDs are the pids of the pool's children, sorted.
func (p *opPool) childPIDs() []int {
	var pids []int
	for _, c := range p.Children {
		pids = append(pids, c.PID)
	}
	slices.Sort(pids)
	return pids
}

// session returns the session whose id id starts with, or nil.
func (p *opPool) session(id string) *opSession {
	for i := range p.Sessions {
		if strings.HasPrefix(id, p.Sessions[i].ID) {
			return &p.Sessions[i]
		}
	}
	return nil
}

// opAdmin fetches the admin report; it also returns the raw body.
func opAdmin(t *testing.T, c *opCaddy) (opReport, []byte) {
	t.Helper()
	resp, err := c.AdminGet("/mcp_bridge/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /mcp_bridge/: %d %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("GET /mcp_bridge/: Content-Type %q", ct)
	}
	var r opReport
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("GET /mcp_bridge/: %v\n%s", err, body)
	}
	return r, body
}

// opPoolOf returns the pool running command (its words joined by spaces).
func opPoolOf(t *testing.T, c *opCaddy, command string) *opPool {
	t.Helper()
	r, body := opAdmin(t, c)
	for i := range r.Pools {
		if strings.Join(r.Pools[i].Command, " ") == command {
			return &r.Pools[i]
		}
	}
	t.Fatalf("no pool runs %q:\n%s", command, body)
	return nil
}

// opRaw is the client of raw requests. It keeps no connection alive: a
// request sent on a kept-alive connection just as the server closes it (an
// old server does, once its response is over, after a reload) fails with
// EOF, and Go does not retry a POST.
var opRaw = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// opAdminDo sends a request to the admin endpoint and returns the status.
func opAdminDo(t *testing.T, c *opCaddy, method, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+c.admin+path, nil)
	resp, err := opRaw.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// opHTTPClient presents key, if any.
func opHTTPClient(key string) *http.Client {
	if key == "" {
		return http.DefaultClient
	}
	return mcptest.Bearer(key).Client()
}

// opConnect opens a go-sdk Streamable HTTP session (which keeps its GET
// stream open), presenting key if any. Cleanup closes it.
func opConnect(t *testing.T, endpoint, key string) *mcptest.Client {
	t.Helper()
	c := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: opHTTPClient(key)}, opVersion)
	t.Cleanup(func() { c.Close() })
	return c
}

// opPost posts one JSON-RPC message to a Streamable HTTP endpoint, in
// session sid if set, and returns the answer.
func opPost(t *testing.T, endpoint, sid, key, msg string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(msg))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if sid != "" {
		req.Header.Set("Mcp-Session-Id", sid)
		req.Header.Set("MCP-Protocol-Version", opVersion)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := opRaw.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("POST %s: %v", endpoint, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// opInit is an initialize request.
const opInit = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"ops-test","version":"1"}}}`

// opErrorCode is the code of a JSON-RPC error response body, or 0.
func opErrorCode(body []byte) int {
	var m struct {
		Error struct {
			Code int `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &m)
	return m.Error.Code
}

// opKeyName is how the bridge names an inline API key: "key:" and the
// first 4 bytes of its SHA-256, in hex.
func opKeyName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "key:" + hex.EncodeToString(sum[:4])
}

// opHealth is the health report, with the JSON names monitors depend on.
type opHealth struct {
	Status     string   `json:"status"`
	Transports []string `json:"transports"`
	Isolation  string   `json:"isolation"`
	Processes  struct {
		Running  int `json:"running"`
		Idle     int `json:"idle"`
		Starting int `json:"starting"`
		Max      int `json:"max"`
	} `json:"processes"`
	Sessions  int    `json:"sessions"`
	Tools     int    `json:"tools"`
	Hung      int64  `json:"hung"`
	LastExit  string `json:"last_exit"`
	LastError string `json:"last_error"`
}

// opGetHealth fetches a site's health report, with no credentials.
func opGetHealth(t *testing.T, base string) (int, opHealth, http.Header) {
	t.Helper()
	resp, err := opRaw.Get(base + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var h opHealth
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatalf("GET %s/health: %d, not JSON: %v\n%s", base, resp.StatusCode, err, body)
	}
	return resp.StatusCode, h, resp.Header
}

// TestHealthReport checks GET /health on a working bridge with an API key
// and sessions open, and on one whose command cannot start: a script
// whose interpreter does not exist (a command that does not exist at all
// is refused when the config loads).
func TestHealthReport(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	const key = "ops-health-key-0123456789abcdef"
	unstartable := filepath.Join(t.TempDir(), "mcp-server")
	if err := os.WriteFile(unstartable, []byte("#!/nonexistent/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := opStart(t, []string{exe},
		opBridge(exe, "api_key "+key),
		opBridge(unstartable+" --stdio"),
	)
	ok, broken := c.base(0), c.base(1)

	t.Run("public with an api_key", func(t *testing.T) {
		status, h, _ := opGetHealth(t, ok)
		if status != http.StatusOK || h.Status != "ok" {
			t.Errorf("GET /health without a key: %d %+v, want 200 ok", status, h)
		}
		resp, body := opPost(t, ok+"/mcp", "", "", opInit)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("initialize without a key: %d %s, want 401", resp.StatusCode, body)
		}
	})

	t.Run("ok", func(t *testing.T) {
		const sessions = 2
		for range sessions {
			opConnect(t, ok+"/mcp", key).CallText(t, "test_simple_text", nil)
		}
		var (
			status int
			h      opHealth
			header http.Header
		)
		// Until the probe has counted the tools (-1 before), its child is
		// gone, and the spare taken by the last session is replaced.
		mcptest.WaitFor(t, 15*time.Second, "the health report to settle", func() bool {
			status, h, header = opGetHealth(t, ok)
			return h.Tools != -1 && h.Processes.Starting == 0 && h.Processes.Idle == 1 && h.Processes.Running == sessions+1
		})
		if status != http.StatusOK || h.Status != "ok" {
			t.Errorf("status %d %q, want 200 ok", status, h.Status)
		}
		if ct := header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		if cc := header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("Cache-Control %q, want no-store", cc)
		}
		if !slices.Equal(h.Transports, []string{"streamable", "sse", "ws"}) {
			t.Errorf("transports %v", h.Transports)
		}
		if h.Isolation != "session" {
			t.Errorf("isolation %q", h.Isolation)
		}
		if h.Sessions != sessions {
			t.Errorf("sessions %d, want %d", h.Sessions, sessions)
		}
		if h.Processes.Running != sessions+1 || h.Processes.Idle != 1 || h.Processes.Starting != 0 {
			t.Errorf("processes %+v, want running %d (the sessions' and a spare), idle 1, starting 0", h.Processes, sessions+1)
		}
		if h.Tools != 28 {
			t.Errorf("tools %d, want the everything-server's 28", h.Tools)
		}
		if h.LastError != "" {
			t.Errorf("last_error %q on a working bridge", h.LastError)
		}
	})

	t.Run("unavailable", func(t *testing.T) {
		status, h, _ := opGetHealth(t, broken)
		if status != http.StatusServiceUnavailable || h.Status != "unavailable" {
			t.Errorf("GET /health with a missing command: %d %q, want 503 unavailable", status, h.Status)
		}
		if !strings.Contains(h.LastError, unstartable) {
			t.Errorf("last_error %q does not name the command", h.LastError)
		}
		if h.Processes.Running != 0 || h.Sessions != 0 {
			t.Errorf("processes %+v, sessions %d, want none", h.Processes, h.Sessions)
		}
		resp, body := opPost(t, broken+"/mcp", "", "", opInit)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("initialize with a missing command: %d (Retry-After %q) %s, want 503 with Retry-After",
				resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
	})
}

// TestAdminAPI checks GET /mcp_bridge/ against the real sessions and
// processes, and DELETE /mcp_bridge/sessions/<prefix>.
func TestAdminAPI(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	const key = "ops-admin-key-fedcba9876543210"
	c := opStart(t, []string{exe}, opBridge(exe, "api_key "+key))
	endpoint := c.base(0) + "/mcp"

	streamable := []*mcptest.Client{opConnect(t, endpoint, key), opConnect(t, endpoint, key)}
	header := http.Header{"Authorization": {"Bearer " + key}}
	ws := mcptest.Connect(t, &wsclient.Transport{URL: "ws" + strings.TrimPrefix(c.base(0), "http") + "/ws", Header: header}, "")
	defer ws.Close()
	for _, s := range append(streamable, ws) {
		s.CallText(t, "test_simple_text", nil)
	}
	const opened = 3

	var pool *opPool
	var raw []byte
	mcptest.WaitFor(t, 10*time.Second, "three sessions and a spare in the admin report", func() bool {
		var r opReport
		r, raw = opAdmin(t, c)
		if len(r.Pools) != 1 {
			t.Fatalf("%d pools, want 1:\n%s", len(r.Pools), raw)
		}
		pool = &r.Pools[0]
		return len(pool.Sessions) == opened && len(pool.Children) == opened+1
	})
	if strings.Contains(string(raw), key) {
		t.Errorf("the admin report shows the API key:\n%s", raw)
	}
	if !slices.Equal(pool.Command, []string{exe}) || pool.Isolation != "session" {
		t.Errorf("command %q, isolation %q", pool.Command, pool.Isolation)
	}
	if len(pool.ConfigHash) != 12 {
		t.Errorf("config_hash %q, want 12 hex digits", pool.ConfigHash)
	}
	procs := mcptest.Processes(exe)
	for _, ch := range pool.Children {
		if !slices.Contains(procs, ch.PID) {
			t.Errorf("child %d is not a process of %s (those are %v)", ch.PID, filepath.Base(exe), procs)
		}
	}
	transports := map[string]int{}
	for _, s := range pool.Sessions {
		transports[s.Transport]++
		if len(s.ID) != 8 {
			t.Errorf("session id %q, want 8 characters", s.ID)
		}
		if s.Key != opKeyName(key) {
			t.Errorf("session %s: key %q, want %q", s.ID, s.Key, opKeyName(key))
		}
		if !slices.Contains(pool.childPIDs(), s.PID) {
			t.Errorf("session %s: pid %d is not among the children %v", s.ID, s.PID, pool.childPIDs())
		}
	}
	if transports["streamable"] != 2 || transports["ws"] != 1 {
		t.Errorf("sessions by transport %v, want 2 streamable and 1 ws", transports)
	}
	for _, s := range streamable {
		st := pool.session(s.ID())
		if st == nil {
			t.Fatalf("session %s is not in the report:\n%s", s.ID(), raw)
		}
		if st.ProtocolVersion != opVersion {
			t.Errorf("session %s: protocol_version %q", st.ID, st.ProtocolVersion)
		}
	}

	t.Run("delete", func(t *testing.T) {
		victim := streamable[0]
		st := pool.session(victim.ID())
		if code, body := opAdminDo(t, c, http.MethodDelete, "/mcp_bridge/sessions/"+st.ID); code != http.StatusNoContent {
			t.Fatalf("DELETE /mcp_bridge/sessions/%s: %d %s, want 204", st.ID, code, body)
		}
		resp, body := opPost(t, endpoint, victim.ID(), key, `{"jsonrpc":"2.0","id":9,"method":"tools/list"}`)
		if resp.StatusCode != http.StatusNotFound || opErrorCode(body) != bridge.CodeSessionNotFound {
			t.Errorf("request in the ended session: %d %s, want 404 with %d", resp.StatusCode, body, bridge.CodeSessionNotFound)
		}
		mcptest.WaitFor(t, 10*time.Second, fmt.Sprintf("the ended session's child %d to exit", st.PID), func() bool {
			return !mcptest.Running(exe, st.PID)
		})
		if _, err := victim.ListTools(t.Context(), nil); err == nil {
			t.Error("the go-sdk client's next request in the ended session succeeded")
		}
		// The others carry on.
		streamable[1].CallText(t, "test_simple_text", nil)
		if p := opPoolOf(t, c, exe); len(p.Sessions) != opened-1 || p.session(victim.ID()) != nil {
			t.Errorf("after the DELETE: sessions %+v", p.Sessions)
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			method, path string
			want         int
		}{
			{http.MethodDelete, "/mcp_bridge/sessions/zzzzzzzz", http.StatusNotFound},
			{http.MethodDelete, "/mcp_bridge/sessions/" + pool.Sessions[0].ID[:5], http.StatusBadRequest},
			{http.MethodDelete, "/mcp_bridge/sessions/", http.StatusBadRequest},
			{http.MethodPut, "/mcp_bridge/", http.StatusMethodNotAllowed},
			{http.MethodGet, "/mcp_bridge/nothing", http.StatusNotFound},
		} {
			if code, body := opAdminDo(t, c, tc.method, tc.path); code != tc.want {
				t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, code, body, tc.want)
			}
		}
	})
}

// opScrape fetches Caddy's admin /metrics and returns the caddy_mcp_bridge_*
// families, and the raw text.
func opScrape(t *testing.T, c *opCaddy) (map[string]*dto.MetricFamily, []byte) {
	t.Helper()
	resp, err := c.AdminGet("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	all, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	ours := map[string]*dto.MetricFamily{}
	for name, mf := range all {
		if strings.HasPrefix(name, "caddy_mcp_bridge_") {
			ours[name] = mf
		}
	}
	return ours, body
}

// opMetric sums the samples of a counter or gauge family whose labels
// include want.
func opMetric(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	mf := fams[name]
	if mf == nil {
		return 0
	}
	sum := 0.0
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// opLint lints metric families, returning the problems as text.
func opLint(t *testing.T, fams map[string]*dto.MetricFamily) []string {
	t.Helper()
	var mfs []*dto.MetricFamily
	for _, mf := range fams {
		mfs = append(mfs, mf)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range problems {
		out = append(out, p.Metric+": "+p.Text)
	}
	return out
}

// TestMetrics scrapes Caddy's admin /metrics after known traffic and
// checks the bridge's metrics and that they pass the Prometheus linter.
func TestMetrics(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	c := opStart(t, []string{exe}, opBridge(exe))
	endpoint := c.base(0) + "/mcp"
	a, b := opConnect(t, endpoint, ""), opConnect(t, endpoint, "")
	const okCalls = 3
	for i := range okCalls {
		[]*mcptest.Client{a, b}[i%2].CallText(t, "test_simple_text", nil)
	}
	if _, err := a.CallTool(t.Context(), &mcp.CallToolParams{Name: "no_such_tool"}); err == nil {
		t.Error("calling an unknown tool succeeded")
	}
	pool := opPoolOf(t, c, exe).ConfigHash
	// Wait for the spare that replaced the last one taken.
	mcptest.WaitFor(t, 10*time.Second, "a spare", func() bool { return len(opPoolOf(t, c, exe).Children) == 3 })

	fams, raw := opScrape(t, c)
	if len(fams) == 0 {
		t.Fatalf("no caddy_mcp_bridge_* metrics on /metrics:\n%s", raw)
	}
	p := func(kv ...string) map[string]string {
		m := map[string]string{"pool": pool}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, want := range []struct {
		name   string
		labels map[string]string
		value  float64
	}{
		{"caddy_mcp_bridge_requests_total", p("method", "tools/call", "outcome", "ok"), okCalls},
		{"caddy_mcp_bridge_requests_total", p("method", "tools/call", "outcome", "error"), 1},
		{"caddy_mcp_bridge_requests_total", p("method", "initialize", "outcome", "ok"), 2},
		{"caddy_mcp_bridge_request_duration_seconds", p("method", "tools/call"), okCalls + 1},
		{"caddy_mcp_bridge_sessions", p("transport", "streamable"), 2},
		{"caddy_mcp_bridge_sessions", p("transport", "sse"), 0},
		{"caddy_mcp_bridge_sessions", p("transport", "ws"), 0},
		{"caddy_mcp_bridge_children", p("role", "isolated"), 2},
		{"caddy_mcp_bridge_children", p("role", "spare"), 1},
		{"caddy_mcp_bridge_children", p("role", "shared"), 0},
		{"caddy_mcp_bridge_children", p("role", "stateless"), 0},
		{"caddy_mcp_bridge_children", p("role", "probe"), 0},
		// Two sessions' children and the spare; no health probe ran.
		{"caddy_mcp_bridge_child_spawns_total", p(), 3},
		{"caddy_mcp_bridge_session_starts_total", p("outcome", "ok"), 2},
		{"caddy_mcp_bridge_session_start_wait_seconds", p(), 2},
	} {
		if got := opMetric(fams, want.name, want.labels); got != want.value {
			t.Errorf("%s%v = %v, want %v", want.name, want.labels, got, want.value)
		}
	}
	if opMetric(fams, "caddy_mcp_bridge_message_bytes_total", p("direction", "in")) == 0 ||
		opMetric(fams, "caddy_mcp_bridge_message_bytes_total", p("direction", "out")) == 0 {
		t.Error("caddy_mcp_bridge_message_bytes_total counts nothing")
	}
	// The server's name, made from its command, labels every metric.
	if !bytes.Contains(raw, []byte(`caddy_mcp_bridge_requests_total{method="tools/call",outcome="ok",pool="`+pool+`",server="everything-server"} 3`)) {
		t.Errorf("the scrape lacks the tools/call ok line:\n%s", opGrep(raw, "caddy_mcp_bridge_requests_total"))
	}

	// A session that ends leaves the gauges and its child is counted.
	a.Close()
	mcptest.WaitFor(t, 10*time.Second, "the closed session to leave the gauges", func() bool {
		f, _ := opScrape(t, c)
		return opMetric(f, "caddy_mcp_bridge_sessions", p("transport", "streamable")) == 1 &&
			opMetric(f, "caddy_mcp_bridge_child_exits_total", p("crashed", "false")) == 1
	})

	t.Run("lint scraped", func(t *testing.T) {
		fams, _ := opScrape(t, c)
		for _, p := range opLint(t, fams) {
			t.Errorf("promlint: %s", p)
		}
	})
}

// opGrep returns the lines of text that contain s.
func opGrep(text []byte, s string) string {
	var out []string
	for line := range strings.SplitSeq(string(text), "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestMetricsLintCollectors lints the collectors of metrics.go in-process,
// each with samples, on a pedantic registry (which also checks that what
// they collect matches what they describe).
func TestMetricsLintCollectors(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	for _, c := range []prometheus.Collector{
		childSpawns, childExits, requests, requestDuration, messageBytes, sessionStarts, acquireWait, stateCollector{},
	} {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	o := newPoolObserver("lint00000000", "lint")
	o.ChildStarted("isolated")
	o.ChildExited("isolated", true)
	o.ChildExited("spare", false)
	o.RequestDone("tools/call", "ok", time.Millisecond)
	o.MessageBytes("in", 10)
	o.MessageBytes("out", 20)
	o.SessionStart("ok", time.Millisecond)
	o.SessionStart("busy", time.Millisecond)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("pedantic gather: %v", err)
	}
	fams := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		fams[mf.GetName()] = mf
	}
	for _, name := range []string{"caddy_mcp_bridge_child_spawns_total", "caddy_mcp_bridge_child_exits_total",
		"caddy_mcp_bridge_requests_total", "caddy_mcp_bridge_request_duration_seconds", "caddy_mcp_bridge_message_bytes_total",
		"caddy_mcp_bridge_session_starts_total", "caddy_mcp_bridge_session_start_wait_seconds"} {
		if fams[name] == nil {
			t.Errorf("%s was not gathered", name)
		}
	}
	for _, p := range opLint(t, fams) {
		t.Errorf("promlint: %s", p)
	}
}

// TestMetricsPoolAtCap: with max_processes 1 and one session open, a second
// initialize waits acquire_timeout and gets 503 with Retry-After, which
// session_starts_total counts as busy; once the first session ends, a new
// one opens.
func TestMetricsPoolAtCap(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	c := opStart(t, []string{exe}, opBridge(exe, "pool {\n\t\t\tmax_processes 1\n\t\t\tmin_idle 0\n\t\t\tacquire_timeout 200ms\n\t\t}"))
	endpoint := c.base(0) + "/mcp"
	first := opConnect(t, endpoint, "")
	first.CallText(t, "test_simple_text", nil)

	start := time.Now()
	resp, body := opPost(t, endpoint, "", "", opInit)
	waited := time.Since(start)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second initialize at the cap: %d %s, want 503", resp.StatusCode, body)
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra <= 0 {
		t.Errorf("Retry-After %q, want a positive number of seconds", resp.Header.Get("Retry-After"))
	}
	if code := opErrorCode(body); code != bridge.CodeServerBusy {
		t.Errorf("JSON-RPC error code %d, want %d: %s", code, bridge.CodeServerBusy, body)
	}
	if waited < 200*time.Millisecond || waited > 5*time.Second {
		t.Errorf("the 503 came after %v, want about the 200ms acquire_timeout", waited)
	}
	if n := len(mcptest.Processes(exe)); n != 1 {
		t.Errorf("%d processes of the child at a cap of 1", n)
	}

	pool := opPoolOf(t, c, exe).ConfigHash
	fams, _ := opScrape(t, c)
	if got := opMetric(fams, "caddy_mcp_bridge_session_starts_total", map[string]string{"pool": pool, "outcome": "busy"}); got != 1 {
		t.Errorf(`session_starts_total{outcome="busy"} = %v, want 1`, got)
	}
	if got := opMetric(fams, "caddy_mcp_bridge_session_starts_total", map[string]string{"pool": pool, "outcome": "ok"}); got != 1 {
		t.Errorf(`session_starts_total{outcome="ok"} = %v, want 1`, got)
	}

	// Once the first session's child has stopped, a new session gets one.
	first.Close()
	mcptest.WaitFor(t, 10*time.Second, "the first session's child to stop", func() bool { return len(mcptest.Processes(exe)) == 0 })
	second := opConnect(t, endpoint, "")
	second.CallText(t, "test_simple_text", nil)
}

// TestStatusProtocolOfEveryTransport: the admin API names the protocol
// version of sessions of every transport, legacy SSE and WebSocket too.
func TestStatusProtocolOfEveryTransport(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	c := opStart(t, []string{exe}, opBridge(exe))
	transports := map[string]bool{}
	for name, connect := range clientsOfEveryTransport(t, c.base(0)) {
		if name == "stateless" {
			continue // no session
		}
		cl, err := connect()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer cl.Close()
		cl.CallText(t, "test_simple_text", nil)
	}
	for _, s := range opPoolOf(t, c, exe).Sessions {
		transports[s.Transport] = true
		if s.ProtocolVersion == "" {
			t.Errorf("a %s session's admin status lacks the protocol version: %+v", s.Transport, s)
		}
	}
	if len(transports) != 3 {
		t.Errorf("sessions of %v, want streamable, sse and ws", transports)
	}
}
