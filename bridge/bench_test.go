package bridge

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// BenchmarkInitialize measures opening a session up to its initialize
// answer, with a warm spare waiting and with a cold start, in front of the
// go-sdk everything-server.
func BenchmarkInitialize(b *testing.B) {
	exe := mcptest.EverythingServer(b)
	for _, bc := range []struct {
		name    string
		minIdle int
	}{{"warm", 1}, {"cold", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			backend := NewBackend(BackendConfig{Process: ProcessConfig{Argv: []string{exe}}, Pool: PoolConfig{MinIdle: new(bc.minIdle)}}, zap.NewNop())
			backend.Start()
			defer backend.Close()
			initialize := []byte(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}`)
			for b.Loop() {
				if bc.minIdle > 0 {
					b.StopTimer() // a spare is ready, as between real clients
					for backend.placement.Ready() == 0 {
						time.Sleep(time.Millisecond)
					}
					time.Sleep(100 * time.Millisecond) // and has finished starting up
					b.StartTimer()
				}
				sess, err := backend.newSession(context.Background(), sessionOptions{Transport: "bench"})
				if err != nil {
					b.Fatal(err)
				}
				st, _ := sess.openRequestStream([][]byte{[]byte("1")}, nil)
				env, _ := jsonrpc.ParseEnvelope(initialize)
				if err := sess.send(append([]byte(nil), initialize...), &env); err != nil {
					b.Fatal(err)
				}
				gen, cursor, _, _ := st.attach(-1)
				for {
					evs, _, _ := st.events(gen, cursor, nil)
					if len(evs) > 0 {
						break
					}
					<-st.wake
				}
				b.StopTimer()
				sess.end("benchmark")
				b.StartTimer()
			}
		})
	}
}

// BenchmarkStreamablePost measures a tools/call POST on a Streamable HTTP
// session, through the handler, to testchild and back: the bridge's whole
// hot path but the network. Its allocations include the benchmark's own
// request and recorder (about ten).
func BenchmarkStreamablePost(b *testing.B) {
	exe := mcptest.Build(b, "github.com/mcpbridge/caddy-mcp-bridge/internal/testchild")
	backend := NewBackend(BackendConfig{Process: ProcessConfig{Argv: []string{exe}}}, zap.NewNop())
	backend.Start()
	defer backend.Close()
	srv := NewServer(backend, ServerConfig{}, zap.NewNop())
	do := func(session, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Accept", "application/json, text/event-stream")
		if session != "" {
			r.Header.Set(headerSessionID, session)
			r.Header.Set("MCP-Protocol-Version", version20251125)
		}
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		if w.Code != http.StatusOK && w.Code != http.StatusAccepted {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
		return w
	}
	session := do("", `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}`).Header().Get(headerSessionID)
	do(session, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	for _, size := range []int{0, 64 << 10} {
		b.Run(fmt.Sprintf("text%d", size), func(b *testing.B) {
			body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"` + strings.Repeat("x", size) + `"}}}`
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				do(session, body)
			}
		})
	}
}
