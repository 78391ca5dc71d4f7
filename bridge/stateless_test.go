package bridge

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

const statelessMeta = `"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}`

// TestStatelessRequests says what each stateless request gets, in front of a
// child that speaks the stateless protocol.
func TestStatelessRequests(t *testing.T) {
	srv, _ := startBridge(t, PoolConfig{MinIdle: new(1)})
	b64 := func(s string) string { return "=?base64?" + base64.StdEncoding.EncodeToString([]byte(s)) + "?=" }
	call := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"test_simple_text","arguments":{},` + statelessMeta + `}}`
	for _, tc := range []struct {
		name, method, version, mcpMethod, mcpName, body string
		status, code                                    int
		bodyHas                                         string
	}{
		{"a tool call", "POST", "2026-07-28", "tools/call", "test_simple_text", call, 200, 0, "This is a simple text response"},
		{"Mcp-Name in base64", "POST", "2026-07-28", "tools/call", b64("test_simple_text"), call, 200, 0, "This is a simple text response"},
		{"tools/list", "POST", "2026-07-28", "tools/list", "", `{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{` + statelessMeta + `}}`, 200, 0, "test_simple_text"},
		{"Mcp-Name mismatch", "POST", "2026-07-28", "tools/call", "other_tool", call, 400, codeHeaderMismatch, "Mcp-Name"},
		{"Mcp-Name missing", "POST", "2026-07-28", "tools/call", "", call, 400, codeHeaderMismatch, "Mcp-Name"},
		{"Mcp-Method mismatch", "POST", "2026-07-28", "tools/list", "test_simple_text", call, 400, codeHeaderMismatch, "Mcp-Method"},
		{"Mcp-Method missing", "POST", "2026-07-28", "", "test_simple_text", call, 400, codeHeaderMismatch, "Mcp-Method"},
		{"version header differs from _meta", "POST", "2026-07-28", "tools/call", "test_simple_text",
			strings.Replace(call, `"2026-07-28"`, `"2025-11-25"`, 1), 400, codeHeaderMismatch, "_meta"},
		{"unsupported version", "POST", "2099-01-01", "tools/call", "test_simple_text", call, 400, codeUnsupportedVersion, `"supported":["2026-07-28"`},
		{"unknown method", "POST", "2026-07-28", "frobnicate", "", `{"jsonrpc":"2.0","id":3,"method":"frobnicate","params":{` + statelessMeta + `}}`, 404, jsonrpc.CodeMethodNotFound, "frobnicate"},
		{"a notification", "POST", "2026-07-28", "notifications/cancelled", "", `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}`, 202, 0, ""},
		{"GET", "GET", "2026-07-28", "", "", "", 405, 0, ""},
		{"DELETE", "DELETE", "2026-07-28", "", "", "", 405, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), tc.method, srv.URL+"/mcp", strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			req.Header.Set("MCP-Protocol-Version", tc.version)
			if tc.mcpMethod != "" {
				req.Header.Set("Mcp-Method", tc.mcpMethod)
			}
			if tc.mcpName != "" {
				req.Header.Set("Mcp-Name", tc.mcpName)
			}
			req.Header.Set("Mcp-Session-Id", "ignored") // stateless requests ignore it
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.bodyHas) {
				t.Errorf("got %d %s, want %d with %q", resp.StatusCode, body, tc.status, tc.bodyHas)
			}
			if tc.code != 0 && !strings.Contains(string(body), fmt.Sprintf(`"code":%d`, tc.code)) {
				t.Errorf("body %s lacks error code %d", body, tc.code)
			}
			if resp.StatusCode == 200 && (strings.Contains(string(body), "\nid:") || strings.HasPrefix(string(body), "id:") || resp.Header.Get("Mcp-Session-Id") != "") {
				t.Errorf("a stateless answer carries event ids or a session id:\n%s", body)
			}
		})
	}
}

// TestStatelessFallback: in front of a child that only speaks sessions, the
// go-sdk default client ends up on 2025-11-25 and works.
func TestStatelessFallback(t *testing.T) {
	srv, _ := startBridgeWith(t, []string{mcptest.Build(t, muxChildPackage)}, BackendConfig{Pool: PoolConfig{MinIdle: new(1)}}, ServerConfig{})
	c := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: srv.URL + "/mcp"}, "")
	defer c.Close()
	if got := c.InitializeResult().ProtocolVersion; got != "2025-11-25" {
		t.Errorf("negotiated %q with a legacy child, want 2025-11-25", got)
	}
	if got := c.CallText(t, "echo", map[string]any{"x": 1}); !strings.Contains(got, `"x":1`) {
		t.Errorf("echo = %q", got)
	}
}

// TestStatelessAndSessionClients: 20 stateless and 20 session clients at once
// on one bridge, each getting its own answers.
func TestStatelessAndSessionClients(t *testing.T) {
	srv, _ := startBridge(t, PoolConfig{MinIdle: new(2)})
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			version := ""
			if i%2 == 1 {
				version = "2025-11-25"
			}
			c := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: srv.URL + "/mcp"}, version)
			defer c.Close()
			want := "2026-07-28"
			if version != "" {
				want = version
			}
			if got := c.InitializeResult().ProtocolVersion; got != want {
				t.Errorf("client %d negotiated %q, want %q", i, got, want)
			}
			for range 3 {
				if got := c.CallText(t, "test_simple_text", nil); got != "This is a simple text response for testing." {
					t.Errorf("client %d: %q", i, got)
				}
			}
			if p := c.WaitProgress(0); len(p) != 0 {
				t.Errorf("client %d got progress it did not ask for", i)
			}
		}()
	}
	wg.Wait()
}

// TestStatelessCancel: closing a stateless request's stream cancels it at the
// child, which sees notifications/cancelled for the id it was given.
func TestStatelessCancel(t *testing.T) {
	srv, _ := startBridgeWith(t, []string{mcptest.Build(t, muxChildPackage), "-stateless"}, BackendConfig{Pool: PoolConfig{MinIdle: new(0)}}, ServerConfig{})
	post := func(ctx context.Context, tool, args string) *http.Response {
		body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"` + tool + `","arguments":` + args + `,` + statelessMeta + `}}`
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/mcp", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("MCP-Protocol-Version", "2026-07-28")
		req.Header.Set("Mcp-Method", "tools/call")
		req.Header.Set("Mcp-Name", tool)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	ctx, cancel := context.WithCancel(t.Context())
	slow := post(ctx, "slow", `{"ms":10000}`)
	if slow.StatusCode != http.StatusOK {
		t.Fatalf("slow call: %s", slow.Status)
	}
	time.Sleep(100 * time.Millisecond) // the child has the request
	cancel()
	slow.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp := post(t.Context(), "stats", `{}`)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), `\"cancelled\":[`) && !strings.Contains(string(body), `\"cancelled\":[]`) {
			return // the child saw the cancellation
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child never saw the cancellation: %s", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStatelessListen: a subscriptions/listen stream gets its acknowledgment
// and the notifications of its subscription, tagged with the client's own
// request id, while the child knows the subscription by the bridge's id.
func TestStatelessListen(t *testing.T) {
	srv, _ := startBridge(t, PoolConfig{MinIdle: new(0)})
	send := func(ctx context.Context, method, name, params string) *http.Response {
		body := `{"jsonrpc":"2.0","id":"sub-7","method":"` + method + `","params":{` + params + statelessMeta + `}}`
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/mcp", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("MCP-Protocol-Version", "2026-07-28")
		req.Header.Set("Mcp-Method", method)
		if name != "" {
			req.Header.Set("Mcp-Name", name)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	listen := send(t.Context(), "subscriptions/listen", "", `"notifications":{"toolsListChanged":true},`)
	defer listen.Body.Close()
	events := newSSEReader(listen.Body)
	ack, ok := events.next()
	if !ok || !strings.Contains(ack.Data, "notifications/subscriptions/acknowledged") || !strings.Contains(ack.Data, `"io.modelcontextprotocol/subscriptionId":"sub-7"`) {
		t.Fatalf("first event on the listen stream: %+v", ack)
	}
	trigger := send(t.Context(), "tools/call", "test_trigger_tool_change", `"name":"test_trigger_tool_change","arguments":{},`)
	io.Copy(io.Discard, trigger.Body)
	trigger.Body.Close()
	changed, ok := events.next()
	if !ok || !strings.Contains(changed.Data, "notifications/tools/list_changed") || !strings.Contains(changed.Data, `"sub-7"`) {
		t.Errorf("after a tool change, the listen stream got %+v", changed)
	}

	// The child dies: the subscription is opened again on a new one, on
	// the same stream.
	exe := mcptest.EverythingServer(t)
	pids := mcptest.Processes(exe)
	if len(pids) != 1 {
		t.Fatalf("%d children, want the one shared child", len(pids))
	}
	syscall.Kill(pids[0], syscall.SIGKILL)
	again, ok := events.next()
	if !ok || !strings.Contains(again.Data, "notifications/subscriptions/acknowledged") || !strings.Contains(again.Data, `"sub-7"`) {
		t.Errorf("after the child died, the listen stream got %+v", again)
	}
}

// TestStatelessLogging: a stateless request that asks for logs (logLevel in
// _meta) gets its log messages on its own stream.
func TestStatelessLogging(t *testing.T) {
	srv, _ := startBridge(t, PoolConfig{MinIdle: new(0)})
	meta := `"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/logLevel":"debug"}`
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"test_tool_with_logging","arguments":{},` + meta + `}}`
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/mcp", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", "2026-07-28")
	req.Header.Set("Mcp-Method", "tools/call")
	req.Header.Set("Mcp-Name", "test_tool_with_logging")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	logs := 0
	events := newSSEReader(resp.Body)
	for {
		ev, ok := events.next()
		if !ok {
			t.Fatal("the stream ended without a result")
		}
		if strings.Contains(ev.Data, "notifications/message") {
			logs++
		}
		if strings.Contains(ev.Data, `"result"`) {
			break
		}
	}
	if logs == 0 {
		t.Error("no log message reached the stateless request that asked for them")
	}
}

// TestStatelessGoSDKCancel: the go-sdk client, speaking the stateless
// protocol by default, cancels a long call by cancelling its context, and
// the child receives the cancellation.
func TestStatelessGoSDKCancel(t *testing.T) {
	srv, _ := startBridgeWith(t, []string{mcptest.Build(t, muxChildPackage), "-stateless"}, BackendConfig{Pool: PoolConfig{MinIdle: new(0)}}, ServerConfig{})
	c := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: srv.URL + "/mcp"}, "")
	defer c.Close()
	if got := c.InitializeResult().ProtocolVersion; got != "2026-07-28" {
		t.Fatalf("negotiated %q, want 2026-07-28", got)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := c.CallTool(ctx, &mcp.CallToolParams{Name: "slow", Arguments: map[string]any{"ms": 10000}}); err == nil {
		t.Fatal("a cancelled call succeeded")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		stats := c.CallText(t, "stats", nil)
		if strings.Contains(stats, `"cancelled":[`) && !strings.Contains(stats, `"cancelled":[]`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child never saw the cancellation: %s", stats)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
