package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
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
	"github.com/mcpbridge/caddy-mcp-bridge/internal/wsclient"
)

// clusterInstance is one bridge instance of a cluster test: a Caddy
// process of its own, whose node is the address the front dials.
type clusterInstance struct {
	*opCaddy
	node string
	dead bool // killed: the front still lists it, as an operator's would
}

// startClusterInstance runs a bridge instance in front of command on
// ports (its site's and its admin endpoint's), with the file storage at
// storage (shared by every instance, as a distributed storage module would
// be across machines) and extra options.
func startClusterInstance(t *testing.T, ports [2]int, command, storage string, opts ...string) *clusterInstance {
	t.Helper()
	c := &opCaddy{admin: fmt.Sprintf("127.0.0.1:%d", ports[1]), ports: ports[:1]}
	node := fmt.Sprintf("127.0.0.1:%d", ports[0])
	caddyfile := fmt.Sprintf("{\n\tadmin %s\n\tstorage file_system %s\n}\n\n:%d {\n\tbind 127.0.0.1\n\t%s\n}\n",
		c.admin, storage, ports[0], opBridge(command, append([]string{"node " + node}, opts...)...))
	c.Caddy = mcptest.StartCaddy(t, t.TempDir(), caddyfile, c.admin, node)
	return &clusterInstance{opCaddy: c, node: node}
}

// accepts reports whether the instance takes key, with a request that
// opens no session: one for a session it does not have gets 404 with a
// key it takes, 401 with any other.
func (in *clusterInstance) accepts(t *testing.T, key string) bool {
	resp, _ := opPost(t, in.base(0)+"/mcp", "0123456789abcdef0123456789abcdef."+in.node, key, `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
	return resp.StatusCode != http.StatusUnauthorized
}

// frontCaddyfile is the front of the README's "Running several
// instances": a reverse_proxy to the instances with lb_policy mcp_session
// and health checks, on port.
func frontCaddyfile(admin string, port int, instances []*clusterInstance) string {
	var upstreams []string
	for _, in := range instances {
		upstreams = append(upstreams, in.node)
	}
	return fmt.Sprintf(`{
	admin %s
}

:%d {
	bind 127.0.0.1
	reverse_proxy %s {
		lb_policy mcp_session
		lb_try_duration 5s
		fail_duration 30s
		max_fails 3
		health_uri /health
		health_interval 250ms
		stream_close_delay 1h
	}
}
`, admin, port, strings.Join(upstreams, " "))
}

// clusterClient is a go-sdk client of the front, over one transport.
type clusterClient struct {
	transport string
	*mcptest.Client
}

// connectCluster opens a session with key through the front at base.
func connectCluster(t *testing.T, base, key, transport string) *clusterClient {
	t.Helper()
	var tr mcp.Transport
	switch transport {
	case "streamable":
		tr = &mcp.StreamableClientTransport{Endpoint: base + "/mcp", HTTPClient: mcptest.Bearer(key).Client()}
	case "sse":
		tr = &mcp.SSEClientTransport{Endpoint: base + "/sse", HTTPClient: mcptest.Bearer(key).Client()}
	case "ws":
		tr = &wsclient.Transport{URL: "ws" + strings.TrimPrefix(base, "http") + "/ws", Header: http.Header{"Authorization": {"Bearer " + key}}}
	}
	c := &clusterClient{transport: transport, Client: mcptest.Connect(t, tr, opVersion)}
	// The front waits for its streams to end before it stops.
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// call makes a tool call within ten seconds.
func (c *clusterClient) call() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.CallTool(ctx, &mcp.CallToolParams{Name: "test_simple_text"})
	if err == nil && res.IsError {
		err = fmt.Errorf("error result %+v", res.Content)
	}
	return err
}

// sessionsOf maps each instance to the ids (their first 8 characters) of
// the sessions it holds, by transport.
func sessionsOf(t *testing.T, instances []*clusterInstance) []map[string]string {
	t.Helper()
	held := make([]map[string]string, len(instances))
	for i, in := range instances {
		held[i] = map[string]string{}
		if in.dead {
			continue
		}
		for _, s := range opPoolOf(t, in.opCaddy, mcptest.EverythingServer(t)).Sessions {
			held[i][s.ID] = s.Transport
		}
	}
	return held
}

// statelessCalls makes n 2026-07-28 calls through the front, each from a
// client of its own, and returns how many tool calls each instance
// counted meanwhile.
func statelessCalls(t *testing.T, base, key string, n int, instances []*clusterInstance) []float64 {
	t.Helper()
	before := toolCallsOf(t, instances)
	client := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: base + "/mcp", HTTPClient: mcptest.Bearer(key).Client()}, "")
	defer client.Close()
	if v := client.InitializeResult().ProtocolVersion; v != "2026-07-28" {
		t.Fatalf("stateless client negotiated %s", v)
	}
	for range n {
		client.CallText(t, "test_simple_text", nil)
	}
	after := toolCallsOf(t, instances)
	for i := range after {
		after[i] -= before[i]
	}
	return after
}

// toolCallsOf is each live instance's count of tool calls.
func toolCallsOf(t *testing.T, instances []*clusterInstance) []float64 {
	t.Helper()
	calls := make([]float64, len(instances))
	for i, in := range instances {
		if !in.dead {
			fams, _ := opScrape(t, in.opCaddy)
			calls[i] = opMetric(fams, "caddy_mcp_bridge_requests_total", map[string]string{"method": "tools/call"})
		}
	}
	return calls
}

// TestSeveralInstances runs three bridge instances behind a front Caddy
// (four processes, each with its own admin endpoint), as the README's
// "Running several instances" does: 30 go-sdk sessions over Streamable
// HTTP, legacy SSE and WebSocket through the front each stay on one
// instance, stateless requests spread over all of them, the sessions of
// an instance that dies get 404 and their clients start new sessions
// elsewhere while the others see no error, and a fourth instance moves no
// session.
func TestSeveralInstances(t *testing.T) {
	everything := mcptest.EverythingServer(t)
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, everything, 10*time.Second) })
	// What the instances share is in the storage: the API key file, which
	// the first instance writes, and the quota counts.
	storage := t.TempDir()
	// They start at once: one of them writes a new key, and all take it.
	shared := []string{"api_key_storage mcp_bridge/keys/team", "policy everyone {\n\t\t\tquota 100000/day\n\t\t}"}
	ports := mcptest.FreePorts(t, 8)
	instances := make([]*clusterInstance, 3)
	var started sync.WaitGroup
	for i := range instances {
		started.Go(func() {
			instances[i] = startClusterInstance(t, [2]int{ports[2*i], ports[2*i+1]}, everything, storage, shared...)
		})
	}
	started.Wait()
	show := exec.Command(instances[2].Exe, "mcp-bridge", "key", "show", "--config", "Caddyfile")
	show.Dir = instances[2].Dir
	out, err := show.Output()
	if err != nil {
		t.Fatalf("caddy mcp-bridge key show: %v\n%s", err, out)
	}
	key := strings.TrimSpace(string(out))
	for i, in := range instances {
		mcptest.WaitFor(t, 10*time.Second, fmt.Sprintf("instance %d to take the key", i), func() bool { return in.accepts(t, key) })
	}
	frontPort := ports[6]
	frontAdmin := fmt.Sprintf("127.0.0.1:%d", ports[7])
	front := mcptest.StartCaddy(t, t.TempDir(), frontCaddyfile(frontAdmin, frontPort, instances), frontAdmin, fmt.Sprintf("127.0.0.1:%d", frontPort))
	base := fmt.Sprintf("http://127.0.0.1:%d", frontPort)

	// 30 sessions, opened concurrently as agents would.
	clients := make([]*clusterClient, 30)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() { clients[i] = connectCluster(t, base, key, []string{"streamable", "sse", "ws"}[i%3]) })
	}
	wg.Wait()
	for range 3 {
		for _, c := range clients {
			if err := c.call(); err != nil {
				t.Fatalf("%s call through the front: %v", c.transport, err)
			}
		}
	}
	held := sessionsOf(t, instances)
	total := 0
	for i, ids := range held {
		t.Logf("instance %d (%s) holds %d sessions: %v", i, instances[i].node, len(ids), ids)
		total += len(ids)
	}
	if total != len(clients) {
		t.Fatalf("the instances hold %d sessions, want %d", total, len(clients))
	}
	// A call that reached an instance other than its session's owner
	// would have failed with 404: each session stayed where it opened.
	// Its id names that instance.
	for _, c := range clients {
		if c.transport != "streamable" {
			continue
		}
		owner := -1
		for i, ids := range held {
			if _, ok := ids[c.ID()[:8]]; ok {
				owner = i
			}
		}
		if owner < 0 || !strings.HasSuffix(c.ID(), "."+instances[owner].node) {
			t.Fatalf("session %s: held by instance %d, whose node its id does not name", c.ID(), owner)
		}
	}

	// Stateless requests go anywhere.
	spread := statelessCalls(t, base, key, 30, instances)
	t.Logf("30 stateless calls reached the instances: %v", spread)
	for i, n := range spread {
		if n == 0 {
			t.Errorf("instance %d served none of the stateless calls: %v", i, spread)
		}
	}

	// Every instance adds its calls to the one quota count in storage.
	calls := 0.0
	for _, n := range toolCallsOf(t, instances) {
		calls += n
	}
	mcptest.WaitFor(t, 10*time.Second, "the quota count to reach the calls", func() bool { return storedQuotaCalls(t, storage) == int64(calls) })
	t.Logf("the quota count in the shared storage holds all %v calls", calls)

	// A forged or altered session id gets 404, never another session.
	t.Run("ForgedIDs", func(t *testing.T) {
		var a, b string
		for _, c := range clients {
			switch {
			case c.transport != "streamable":
			case a == "":
				a = c.ID()
			case !strings.HasSuffix(c.ID(), nodeSuffix(a)):
				b = c.ID()
			}
		}
		if b == "" {
			t.Fatal("every streamable session is on one instance")
		}
		call := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"test_simple_text"}}`
		for what, id := range map[string]string{
			"another instance's node":             a[:32] + nodeSuffix(b),
			"another session's random part":       b[:32] + nodeSuffix(a),
			"one digit changed":                   flipDigit(a),
			"no node":                             a[:32],
			"a node that is no instance":          a[:32] + ".127.0.0.1:1",
			"the node of the front (no instance)": a[:32] + fmt.Sprintf(".127.0.0.1:%d", frontPort),
		} {
			resp, body := opPost(t, base+"/mcp", id, key, call)
			if resp.StatusCode != http.StatusNotFound || opErrorCode(body) != -32001 {
				t.Errorf("%s (%s): %d %s, want 404 and -32001", what, id, resp.StatusCode, body)
			}
			resp, body = opPost(t, base+"/message?sessionId="+id, "", key, call)
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("legacy SSE message, %s: %d %s, want 404", what, resp.StatusCode, body)
			}
		}
	})

	// A legacy SSE client that lost its stream comes back with the
	// Last-Event-ID alone, and finds its session on its owner.
	t.Run("LegacyResume", func(t *testing.T) {
		for range 6 {
			endpoint, last := openLegacyStream(t, base, key, "")
			if resumed, _ := openLegacyStream(t, base, key, last); resumed != endpoint {
				t.Fatalf("resumed with Last-Event-ID %s: endpoint %q, want %q", last, resumed, endpoint)
			}
		}
	})

	// An instance dies (SIGKILL, as a crash or the OOM killer would).
	victim := 1
	lost := len(held[victim])
	instances[victim].Kill()
	instances[victim].dead = true
	failed, recovered := 0, 0
	for i, c := range clients {
		if err := c.call(); err == nil {
			continue
		} else {
			t.Logf("%s session on the dead instance: %v", c.transport, err)
		}
		failed++
		clients[i] = connectCluster(t, base, key, c.transport)
		if err := clients[i].call(); err != nil {
			t.Fatalf("%s call from a new session after the instance died: %v", c.transport, err)
		}
		recovered++
	}
	t.Logf("instance %d died: %d of its %d sessions' clients got an error and started a new session, %d calls from the others succeeded", victim, failed, lost, len(clients)-failed)
	if failed != lost || recovered != lost {
		t.Fatalf("%d clients failed and %d recovered, want the %d of the dead instance", failed, recovered, lost)
	}
	held = sessionsOf(t, instances)

	// A fourth instance: no session moves, and it takes its share of new
	// requests.
	instances = append(instances, startClusterInstance(t, [2]int(mcptest.FreePorts(t, 2)), everything, storage, shared...))
	front.Reload(t, frontCaddyfile(frontAdmin, frontPort, instances))
	for _, c := range clients {
		if err := c.call(); err != nil {
			t.Fatalf("%s call after a fourth instance joined: %v", c.transport, err)
		}
	}
	after := sessionsOf(t, instances)
	for i := range held {
		for id := range held[i] {
			if _, ok := after[i][id]; !ok {
				t.Errorf("session %s left instance %d when a fourth joined", id, i)
			}
		}
	}
	spread = statelessCalls(t, base, key, 40, instances)
	t.Logf("with a fourth instance, 40 stateless calls reached the instances: %v; sessions per instance: %d %d %d %d",
		spread, len(after[0]), len(after[1]), len(after[2]), len(after[3]))
	if spread[3] == 0 {
		t.Errorf("the fourth instance served none of the stateless calls: %v", spread)
	}

	// A key rotated in the storage applies on every instance.
	rotate := exec.Command(instances[0].Exe, "mcp-bridge", "key", "rotate", "--config", "Caddyfile")
	rotate.Dir = instances[0].Dir
	if out, err := rotate.CombinedOutput(); err != nil {
		t.Fatalf("caddy mcp-bridge key rotate: %v\n%s", err, out)
	}
	show = exec.Command(instances[3].Exe, "mcp-bridge", "key", "show", "--config", "Caddyfile")
	show.Dir = instances[3].Dir
	out, err = show.Output()
	newKey := strings.TrimSpace(string(out))
	if err != nil || newKey == key {
		t.Fatalf("caddy mcp-bridge key show after a rotation: %v %q", err, out)
	}
	for i, in := range instances {
		if in.dead {
			continue
		}
		mcptest.WaitFor(t, 10*time.Second, fmt.Sprintf("instance %d to take the new key", i), func() bool { return in.accepts(t, newKey) })
		if in.accepts(t, key) {
			t.Errorf("instance %d accepts the rotated key", i)
		}
	}
}

// nodeSuffix is the dot and node that end a session id.
func nodeSuffix(id string) string { return id[32:] }

// flipDigit changes the first hex digit of an id.
func flipDigit(id string) string {
	if id[0] == '0' {
		return "1" + id[1:]
	}
	return "0" + id[1:]
}

// openLegacyStream opens a legacy SSE stream through the front, resuming
// after lastEventID if given, and returns the endpoint (the first event)
// and the id of the response to a ping sent to it, after which it closes
// the stream.
func openLegacyStream(t *testing.T, base, key, lastEventID string) (endpoint, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/sse", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", "Bearer "+key)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	resp, err := opRaw.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /sse (Last-Event-ID %q): %d", lastEventID, resp.StatusCode)
	}
	events := mcptest.NewSSEReader(resp.Body)
	ev := events.MustNext(t)
	if ev.Event != "endpoint" {
		t.Fatalf("first event %+v, want the endpoint", ev)
	}
	if post, body := opPost(t, base+ev.Data, "", key, `{"jsonrpc":"2.0","id":"p","method":"ping"}`); post.StatusCode != http.StatusAccepted {
		t.Fatalf("ping to %s: %d %s", ev.Data, post.StatusCode, body)
	}
	answer := events.MustNext(t)
	if !strings.Contains(answer.Data, `"id":"p"`) || answer.ID == "" {
		t.Fatalf("answer to the ping: %+v", answer)
	}
	return ev.Data, answer.ID
}

// storedQuotaCalls sums the quota counts in a file system storage.
func storedQuotaCalls(t *testing.T, storage string) int64 {
	t.Helper()
	var total int64
	files, _ := filepath.Glob(filepath.Join(storage, "mcp_bridge", "quota", "*", "*", "*", "*"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var q storedQuota
		if json.Unmarshal(data, &q) == nil {
			total += q.Calls
		}
	}
	return total
}
