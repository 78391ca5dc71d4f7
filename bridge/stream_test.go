package bridge

import (
	"bytes"
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
	st := newStream(1, ReplayBuffer{Events: DefaultReplayEvents, Bytes: DefaultReplayBytes}, nil)
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

// TestUndeliveredBound: what a session's streams hold unwritten is bounded
// in bytes across them (one message always passes); writing, dropping and
// forgetting give the bytes back; a stream whose writer left keeps only
// what the replay bounds allow, written or not.
func TestUndeliveredBound(t *testing.T) {
	budget := &undelivered{limit: 100}
	replay := ReplayBuffer{Events: 8, Bytes: 50}
	a, b := newStream(1, replay, budget), newStream(2, replay, budget)
	msg := func(n int) []byte { return bytes.Repeat([]byte("x"), n) }
	check := func(what string, want int64) {
		t.Helper()
		if got := budget.bytes.Load(); got != want {
			t.Errorf("%s: %d bytes undelivered, want %d", what, got, want)
		}
	}
	if err := a.push(msg(150), false, pushFail); err != nil {
		t.Fatalf("a message larger than the bound, alone: %v", err)
	}
	check("one large message", 150)
	if err := a.push(msg(10), false, pushFail); err != errStreamFull {
		t.Errorf("past the bound with pushFail: %v, want errStreamFull", err)
	}
	if err := b.push(msg(10), false, pushFail); err != nil {
		t.Errorf("another stream with nothing waiting: %v", err)
	}
	check("a second stream's message", 160)
	if err := b.push(msg(10), false, pushDropOldest); err != nil {
		t.Fatal(err)
	}
	check("a dropped oldest message replaced", 160)

	gen, cursor, _, _ := a.attach(-1)
	evs, _, _ := a.events(gen, cursor, nil)
	a.written(evs[len(evs)-1].seq + 1)
	check("a's message written", 10)
	b.release()
	check("b forgotten", 0)

	gen, _, _, _ = a.attach(-1)
	if err := a.push(msg(40), false, pushWait); err != nil {
		t.Fatal(err)
	}
	if err := a.push(msg(40), false, pushWait); err != nil {
		t.Fatal(err)
	}
	check("two messages for a's writer", 80)
	a.detach(gen) // the client is cut off
	check("a cut off: the replay bounds (50 bytes) keep one", 40)
	if err := a.push(msg(60), false, pushWait); err != nil {
		t.Fatal(err)
	}
	check("a message larger than the replay bounds, for nobody", 0)
}
