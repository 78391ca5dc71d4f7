package bridge

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/zap/zaptest"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/wsclient"
)

// startBridge serves a bridge in front of the everything-server on a test
// HTTP server, and checks at cleanup that no child is left.
func startBridge(t *testing.T, pool PoolConfig) (*httptest.Server, *Backend) {
	t.Helper()
	exe := mcptest.EverythingServer(t)
	backend := NewBackend(BackendConfig{Process: ProcessConfig{Argv: []string{exe}}, Pool: pool}, zaptest.NewLogger(t))
	backend.Start()
	// A short resume grace, so that legacy SSE sessions end soon after
	// their clients leave.
	srv := httptest.NewServer(NewServer(backend, ServerConfig{ResumeGrace: 100 * time.Millisecond}, zaptest.NewLogger(t)))
	t.Cleanup(func() {
		srv.Close()
		backend.Close()
		mcptest.WaitNoProcesses(t, exe, 5*time.Second)
	})
	return srv, backend
}

func TestStreamableGoSDKClient(t *testing.T) {
	srv, _ := startBridge(t, PoolConfig{MinIdle: new(1)})
	for _, version := range []string{"", "2025-11-25", "2025-06-18", "2025-03-26"} {
		t.Run("version="+version, func(t *testing.T) {
			c := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: srv.URL + "/mcp"}, version)
			defer c.Close()
			want := version
			if want == "" {
				want = "2026-07-28" // the everything-server speaks the stateless protocol too
			}
			if got := c.InitializeResult().ProtocolVersion; got != want {
				t.Errorf("negotiated %q, want %q", got, want)
			}
			tools, err := c.ListTools(t.Context(), nil)
			if err != nil || len(tools.Tools) == 0 {
				t.Fatalf("tools/list: %v (%d tools)", err, len(tools.Tools))
			}
			if got := c.CallText(t, "test_simple_text", nil); !strings.Contains(got, "test") {
				t.Errorf("test_simple_text = %q", got)
			}
			c.CallText(t, "test_tool_with_progress", nil)
			if n := len(c.WaitProgress(3)); n != 3 {
				t.Errorf("got %d progress notifications, want 3", n)
			}
			if want >= "2026-07-28" {
				return // no server-to-client requests in the stateless protocol
			}
			if got := c.CallText(t, "test_sampling", map[string]any{"prompt": "hi"}); got != "LLM response: echo: hi" {
				t.Errorf("test_sampling = %q", got)
			}
		})
	}
}

// TestSingleStreamTransports drives the legacy SSE and the WebSocket
// transports with the go-sdk client (over WebSocket through a frame
// adapter): tools, progress and sampling work, and the session ends with
// its connection.
func TestSingleStreamTransports(t *testing.T) {
	srv, backend := startBridge(t, PoolConfig{MinIdle: new(1)})
	for name, transport := range map[string]mcp.Transport{
		"sse": &mcp.SSEClientTransport{Endpoint: srv.URL + "/sse"},
		"ws":  &wsclient.Transport{URL: "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"},
	} {
		t.Run(name, func(t *testing.T) {
			c := mcptest.Connect(t, transport, "")
			if got := c.InitializeResult().ProtocolVersion; got != "2025-11-25" {
				t.Errorf("negotiated %q, want 2025-11-25", got)
			}
			if got := c.CallText(t, "test_simple_text", nil); !strings.Contains(got, "test") {
				t.Errorf("test_simple_text = %q", got)
			}
			c.CallText(t, "test_tool_with_progress", nil)
			if n := len(c.WaitProgress(3)); n != 3 {
				t.Errorf("got %d progress notifications, want 3", n)
			}
			if got := c.CallText(t, "test_sampling", map[string]any{"prompt": "hi"}); got != "LLM response: echo: hi" {
				t.Errorf("test_sampling = %q", got)
			}
			c.Close()
			deadline := time.Now().Add(5 * time.Second)
			for backend.sessionCount() != 0 {
				if time.Now().After(deadline) {
					t.Fatal("the session outlived its connection")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestRequestTimeout: with request_timeout set, a call the child does not
// answer in time gets a JSON-RPC error that says so, the child gets
// notifications/cancelled for it, nothing stays in flight, and the
// session goes on; in either isolation, and for a stateless request.
func TestRequestTimeout(t *testing.T) {
	for _, mode := range []string{IsolationSession, IsolationShared, "stateless"} {
		t.Run(mode, func(t *testing.T) {
			argv, isolation, version := []string{mcptest.Build(t, muxChildPackage)}, mode, "2025-11-25"
			if mode == "stateless" {
				argv, isolation, version = append(argv, "-stateless"), IsolationSession, ""
			}
			srv, backend := startBridgeWith(t, argv,
				BackendConfig{Pool: PoolConfig{Isolation: isolation, MinIdle: new(0), RequestTimeout: 300 * time.Millisecond}}, ServerConfig{})
			c := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: srv.URL + "/mcp"}, version)
			defer c.Close()
			if got := c.InitializeResult().ProtocolVersion; mode == "stateless" && got != "2026-07-28" {
				t.Fatalf("negotiated %q, want 2026-07-28", got)
			}
			_, err := c.CallTool(t.Context(), &mcp.CallToolParams{Name: "slow", Arguments: map[string]any{"ms": 60000}})
			if err == nil || !strings.Contains(err.Error(), "request_timeout") {
				t.Fatalf("a call past request_timeout: %v, want a JSON-RPC error naming request_timeout", err)
			}
			mcptest.WaitFor(t, 10*time.Second, "the child to see the cancellation", func() bool {
				stats := c.CallText(t, "stats", nil)
				return strings.Contains(stats, `"cancelled":[`) && !strings.Contains(stats, `"cancelled":[]`)
			})
			for _, s := range backend.Status().Sessions {
				if s.InFlight != 0 {
					t.Errorf("session %s has %d requests in flight after the timeout", s.ID, s.InFlight)
				}
			}
		})
	}
}

// TestHealthCheckSparesBusyChild: a child in the middle of a call longer
// than health_check_timeout still answers the health check's pings (as
// servers that handle requests concurrently do) and is left alone; in
// either isolation.
func TestHealthCheckSparesBusyChild(t *testing.T) {
	for _, isolation := range []string{IsolationSession, IsolationShared} {
		t.Run(isolation, func(t *testing.T) {
			srv, backend := startBridgeWith(t, []string{mcptest.Build(t, muxChildPackage)},
				BackendConfig{Pool: PoolConfig{Isolation: isolation, MinIdle: new(0), HealthCheck: 50 * time.Millisecond, HealthCheckTimeout: 200 * time.Millisecond}}, ServerConfig{})
			c := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: srv.URL + "/mcp"}, "2025-11-25")
			defer c.Close()
			if _, err := c.CallTool(t.Context(), &mcp.CallToolParams{Name: "slow", Arguments: map[string]any{"ms": 1500}}); err != nil {
				t.Fatalf("a 1.5s call with a 200ms health_check_timeout: %v", err)
			}
			if h := backend.Health(); h.Hung != 0 {
				t.Errorf("health: hung %d, want 0: %+v", h.Hung, h)
			}
		})
	}
}
