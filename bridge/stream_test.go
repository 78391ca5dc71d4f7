package bridge

import (
	"net/http"
	"testing"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// discardResponseWriter is an http.ResponseWriter and http.Flusher that
// throws away what is written, so that a benchmark sees only the cost of
// producing it.
type discardResponseWriter struct{ header http.Header }

func (w *discardResponseWriter) Header() http.Header         { return w.header }
func (w *discardResponseWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardResponseWriter) WriteHeader(int)             {}
func (w *discardResponseWriter) Flush()                      {}

// BenchmarkSSEEvent measures writing and flushing a message as an SSE event with its id, as writeStream does.
func BenchmarkSSEEvent(b *testing.B) {
	for _, bc := range []struct {
		name string
		data []byte
	}{
		{"result", []byte(mcptest.ToolsCallResult)},
		{"result_64KiB", mcptest.LargeToolsCallResult(64 << 10)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			sw := startSSE(&discardResponseWriter{header: make(http.Header)})
			b.SetBytes(int64(len(bc.data)))
			b.ReportAllocs()
			seq := 0
			var id []byte
			for b.Loop() {
				seq++
				id = appendEventID(id[:0], "3fa85f64", 1, seq)
				if err := sw.event(id, "", bc.data); err != nil {
					b.Fatal(err)
				}
				if err := sw.flush(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStreamQueue measures one message through a stream's log: pushed, read back, written.
func BenchmarkStreamQueue(b *testing.B) {
	st := newStream(1, ReplayBuffer{Events: DefaultReplayEvents, Bytes: DefaultReplayBytes})
	gen, cursor, _, err := st.attach(-1)
	if err != nil {
		b.Fatal(err)
	}
	msg := []byte(mcptest.ToolsCallResult)
	var evs []event
	b.ReportAllocs()
	for b.Loop() {
		if err := st.push(msg, false, pushWait); err != nil {
			b.Fatal(err)
		}
		evs, _, _ = st.events(gen, cursor, evs)
		if len(evs) != 1 {
			b.Fatalf("events = %d, want 1", len(evs))
		}
		cursor = evs[0].seq + 1
		st.written(cursor)
	}
}
