package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// TestResumeAcrossReload breaks a stream while the child reports
// progress, reloads Caddy (with a changed origin list, the same child
// config), and resumes with Last-Event-ID: nothing is lost, because the
// replay log lives with the session, not with the HTTP request.
func TestResumeAcrossReload(t *testing.T) {
	exe := mcptest.Build(t, "github.com/mcpbridge/caddy-mcp-bridge/bridge/testdata/muxchild")
	admin := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	addr := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	config := func(origin string) string {
		return fmt.Sprintf("{\n\tadmin %s\n}\n\n:%s {\n\tbind 127.0.0.1\n\tmcp_bridge {\n\t\tcommand %s\n\t\tallowed_origins %s\n\t}\n}\n",
			admin, addr[strings.LastIndex(addr, ":")+1:], exe, origin)
	}
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	c := mcptest.StartCaddy(t, t.TempDir(), config("https://a.example.com"), admin, addr)
	url := "http://" + addr + "/mcp"

	post := func(ctx context.Context, session, body string) *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if session != "" {
			req.Header.Set("Mcp-Session-Id", session)
			req.Header.Set("MCP-Protocol-Version", "2025-11-25")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	init := post(t.Context(), "", `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`)
	session := init.Header.Get("Mcp-Session-Id")
	init.Body.Close()
	post(t.Context(), session, `{"jsonrpc":"2.0","method":"notifications/initialized"}`).Body.Close()

	ctx, cut := context.WithCancel(t.Context())
	resp := post(ctx, session, `{"jsonrpc":"2.0","id":1,"method":"progress","params":{"steps":40,"delayMs":25,"_meta":{"progressToken":"p"}}}`)
	progress, lastID := 0, ""
	for ev := range mcptest.NewSSEReader(resp.Body).Events() {
		if ev.ID != "" {
			lastID = ev.ID
		}
		if strings.Contains(ev.Data, "notifications/progress") {
			progress++
		}
		if progress == 5 {
			break
		}
	}
	cut()
	resp.Body.Close()

	c.Reload(t, config("https://b.example.com"))

	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Mcp-Session-Id", session)
	req.Header.Set("MCP-Protocol-Version", "2025-11-25")
	req.Header.Set("Last-Event-ID", lastID)
	resumed, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Body.Close()
	if resumed.StatusCode != http.StatusOK {
		t.Fatalf("resume after reload: %s", resumed.Status)
	}
	answered := false
	for ev := range mcptest.NewSSEReader(resumed.Body).Events() {
		if strings.Contains(ev.Data, "notifications/progress") {
			progress++
		}
		if strings.Contains(ev.Data, `"result"`) {
			answered = true
			break
		}
	}
	if progress != 40 || !answered {
		t.Errorf("across the reload: %d of 40 progress notifications, answered %v", progress, answered)
	}
}

// TestPollingWithGoSDKClient: with poll_interval, the bridge closes a long
// call's stream again and again; the go-sdk client resumes it each time
// with Last-Event-ID, and gets every progress notification and the result.
func TestPollingWithGoSDKClient(t *testing.T) {
	exe := mcptest.Build(t, "github.com/mcpbridge/caddy-mcp-bridge/bridge/testdata/muxchild")
	admin := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	port := mcptest.FreePort(t)
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	mcptest.StartCaddy(t, t.TempDir(), fmt.Sprintf("{\n\tadmin %s\n}\n\n:%d {\n\tbind 127.0.0.1\n\tmcp_bridge {\n\t\tcommand %s\n\t\tpoll_interval 150ms\n\t}\n}\n", admin, port, exe),
		admin, fmt.Sprintf("127.0.0.1:%d", port))
	client := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: fmt.Sprintf("http://127.0.0.1:%d/mcp", port)}, "2025-11-25")
	defer client.Close()
	res, err := client.CallTool(t.Context(), &mcp.CallToolParams{
		Name:      "progress",
		Arguments: map[string]any{"steps": 30, "delayMs": 30},
		Meta:      mcp.Meta{"progressToken": "poll"},
	})
	if err != nil || res.IsError {
		t.Fatalf("a 1 s call under 150 ms polling: %v %+v", err, res)
	}
	if p := client.WaitProgress(30); len(p) != 30 || p[29].Progress != 30 {
		t.Errorf("got %d progress notifications through the polling, want 30", len(p))
	}
}

// TestGoSDKSessionAcrossManyReloads holds a go-sdk session, with its GET
// stream, across 20 reloads over HTTPS, in each isolation. Each reload
// closes the GET stream and the client resumes it with Last-Event-ID; the
// go-sdk gives up a session after 5 resumptions whose last event id did
// not advance, so every resumed stream must open with a new id. Every call
// between the reloads must succeed.
func TestGoSDKSessionAcrossManyReloads(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	for _, isolation := range []string{"session", "shared"} {
		t.Run(isolation, func(t *testing.T) {
			// The reloads change only how long a body may take to arrive:
			// nothing about the pool, which stays.
			bridge := func(i int) string {
				return fmt.Sprintf("mcp_bridge {\n\t\tcommand %s\n\t\tbody_read_timeout %ds\n\t\tpool {\n\t\t\tisolation %s\n\t\t}\n\t}", exe, 30+i%2, isolation)
			}
			c := startTLSCaddy(t, bridge(0))
			watch := &rlWatch{base: c.transport(c.roots)}
			session := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: c.url("/mcp"), HTTPClient: watch.client()}, "2025-11-25")
			defer session.Close()
			session.CallText(t, "test_simple_text", nil)
			mcptest.WaitFor(t, 10*time.Second, "the GET stream", func() bool { return watch.streams.Load() == 1 })
			for i := 1; i <= 20; i++ {
				c.Reload(t, c.caddyfile(bridge(i)))
				mcptest.WaitFor(t, 30*time.Second, fmt.Sprintf("the GET stream resumed after reload %d", i), func() bool {
					return watch.streams.Load() == int64(i+1)
				})
				if got := session.CallText(t, "test_simple_text", nil); got != "This is a simple text response for testing." {
					t.Fatalf("call after reload %d: %q", i, got)
				}
			}
		})
	}
}
