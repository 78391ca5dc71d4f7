package bridge

import (
	"context"
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
