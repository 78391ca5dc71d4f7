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

// benchPost serves one POST to /mcp with the headers a client sends, and
// fails the benchmark on a status other than 200 or 202.
func benchPost(b *testing.B, srv *Server, header map[string]string, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range header {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	srv.ServeHTTP(w, r)
	if w.Code != http.StatusOK && w.Code != http.StatusAccepted {
		b.Fatalf("status %d: %s", w.Code, w.Body)
	}
	return w
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
	session := benchPost(b, srv, nil, `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}`).Header().Get(headerSessionID)
	header := map[string]string{headerSessionID: session, "MCP-Protocol-Version": version20251125}
	benchPost(b, srv, header, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	for _, size := range []int{0, 64 << 10} {
		b.Run(fmt.Sprintf("text%d", size), func(b *testing.B) {
			body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"` + strings.Repeat("x", size) + `"}}}`
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				benchPost(b, srv, header, body)
			}
		})
	}
}

// BenchmarkStatelessPost measures a 2026-07-28 tools/call through the
// handler to a shared go-sdk everything-server and back: the stateless
// hot path but the network (the request's allocations included).
func BenchmarkStatelessPost(b *testing.B) {
	exe := mcptest.EverythingServer(b)
	backend := NewBackend(BackendConfig{Process: ProcessConfig{Argv: []string{exe}}}, zap.NewNop())
	backend.Start()
	defer backend.Close()
	srv := NewServer(backend, ServerConfig{}, zap.NewNop())
	for deadline := time.Now().Add(30 * time.Second); backend.prober.result().Era != "stateless" && backend.prober.result().Era != "dual"; {
		if time.Now().After(deadline) {
			b.Fatalf("the child's era is %q", backend.prober.result().Era)
		}
		time.Sleep(10 * time.Millisecond)
	}
	header := map[string]string{"MCP-Protocol-Version": versionStateless, "Mcp-Method": "tools/call", "Mcp-Name": "test_simple_text"}
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"test_simple_text","arguments":{},` +
		`"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}`
	b.ReportAllocs()
	for b.Loop() {
		benchPost(b, srv, header, body)
	}
}
