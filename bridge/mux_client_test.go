package bridge

import (
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/zap/zaptest"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/wsclient"
)

// startSharedBridge serves a bridge whose sessions share children.
func startSharedBridge(t *testing.T, cfg PoolConfig) (*httptest.Server, *Backend, string) {
	t.Helper()
	exe := mcptest.EverythingServer(t)
	backend := NewBackend(BackendConfig{Process: ProcessConfig{Argv: []string{exe}}, Pool: cfg}, zaptest.NewLogger(t))
	backend.Start()
	srv := httptest.NewServer(NewServer(backend, ServerConfig{}, zaptest.NewLogger(t)))
	t.Cleanup(func() {
		srv.Close()
		backend.Close()
		mcptest.WaitNoProcesses(t, exe, 5*time.Second)
	})
	return srv, backend, exe
}

// TestSharedGoSDKClients puts several go-sdk clients, on every transport,
// on one shared child: each gets its own answers and progress.
func TestSharedGoSDKClients(t *testing.T) {
	srv, _, exe := startSharedBridge(t, PoolConfig{Isolation: IsolationShared, MinProcesses: 1, MaxProcesses: 1, SessionsPerProcess: 64})
	transports := func(i int) mcp.Transport {
		switch i % 3 {
		case 0:
			return &mcp.StreamableClientTransport{Endpoint: srv.URL + "/mcp"}
		case 1:
			return &mcp.SSEClientTransport{Endpoint: srv.URL + "/sse"}
		}
		return &wsclient.Transport{URL: "ws" + srv.URL[len("http"):] + "/ws"}
	}
	const n = 9
	clients := make([]*mcptest.Client, n)
	for i := range clients {
		// Sessions (the stateless protocol has no server requests, and is
		// served on children of its own).
		clients[i] = mcptest.Connect(t, transports(i), "2025-11-25")
	}
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The tool echoes the progress token it saw: in shared mode that
			// is the bridge's token, restored only in the notifications.
			for range 5 {
				c.CallText(t, "test_tool_with_progress", nil)
			}
			progress := c.WaitProgress(15)
			if len(progress) != 15 {
				t.Errorf("client %d got %d progress notifications, want 15", i, len(progress))
			}
			for _, p := range progress {
				if p.ProgressToken != "progress-test_tool_with_progress" {
					t.Errorf("client %d got progress for token %v", i, p.ProgressToken)
				}
			}
		}()
	}
	wg.Wait()
	// A server-to-client request reaches the one client with a call in flight.
	for i, c := range clients {
		if got := c.CallText(t, "test_sampling", map[string]any{"prompt": fmt.Sprint(i)}); got != fmt.Sprintf("LLM response: echo: %d", i) {
			t.Errorf("client %d sampling: %q", i, got)
		}
	}
	if pids := mcptest.Processes(exe); len(pids) != 1 {
		t.Errorf("%d children for %d shared sessions, want 1", len(pids), n)
	}
	for _, c := range clients {
		c.Close()
	}
}
