package bridge

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/goleak"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/wsclient"
)

// TestBackendCloseLeavesNothing: in each isolation, with a client of each
// transport connected and its session (or stateless request's child) up,
// Close returns only once every child the backend started has been reaped
// and every goroutine it started has ended: the spares, the stateless
// children and the probe's included.
func TestBackendCloseLeavesNothing(t *testing.T) {
	transports := map[string]func(url string) (mcp.Transport, string){
		"streamable": func(url string) (mcp.Transport, string) {
			return &mcp.StreamableClientTransport{Endpoint: url + "/mcp"}, "2025-11-25"
		},
		"stateless": func(url string) (mcp.Transport, string) {
			return &mcp.StreamableClientTransport{Endpoint: url + "/mcp"}, "" // the SDK's default: 2026-07-28
		},
		"sse": func(url string) (mcp.Transport, string) {
			return &mcp.SSEClientTransport{Endpoint: url + "/sse"}, "2025-11-25"
		},
		"ws": func(url string) (mcp.Transport, string) {
			return &wsclient.Transport{URL: "ws" + strings.TrimPrefix(url, "http") + "/ws"}, "2025-11-25"
		},
	}
	exe := mcptest.EverythingServer(t)
	for _, isolation := range []string{IsolationSession, IsolationShared} {
		for name, transport := range transports {
			t.Run(isolation+"/"+name, func(t *testing.T) {
				leaks := goleak.IgnoreCurrent()
				backend := NewBackend(BackendConfig{
					Process: ProcessConfig{Argv: []string{exe}},
					Pool:    PoolConfig{Isolation: isolation, MinIdle: new(1), MinProcesses: 1},
				}, mcptest.Logger(t))
				backend.Start()
				srv := httptest.NewServer(NewServer(backend, ServerConfig{}, mcptest.Logger(t)))
				tr, version := transport(srv.URL)
				c := mcptest.Connect(t, tr, version)
				if got := c.CallText(t, "test_simple_text", nil); got == "" {
					t.Fatal("no answer to a tool call")
				}
				if h := backend.Health(); h.Status != "ok" {
					t.Fatalf("health %+v", h) // runs the probe: its child must go too
				}
				if len(mcptest.Processes(exe)) == 0 {
					t.Fatal("no child running before Close")
				}

				backend.Close()
				if pids := mcptest.Processes(exe); len(pids) != 0 {
					t.Errorf("children %v still running after Close returned", pids)
				}
				c.Close()
				srv.Close()
				http.DefaultClient.CloseIdleConnections()
				goleak.VerifyNone(t, leaks)
			})
		}
	}
}
