package bridge

import (
	"bytes"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// TestParkedStreams checks idle GET streams that park: on Linux no
// goroutine waits for them, yet each still gets its news, its keepalives,
// its end when the client leaves, and its end when the Server closes its
// streams; and the poller's goroutine is gone with the last of them.
// Elsewhere the same holds with a goroutine per stream.
func TestParkedStreams(t *testing.T) {
	const (
		version = "2025-11-25"
		streams = 20
	)
	exe := mcptest.EverythingServer(t)
	srv, _ := startBridgeWith(t, []string{exe}, BackendConfig{Pool: PoolConfig{MinIdle: new(1), Isolation: IsolationShared}},
		ServerConfig{Keepalive: 300 * time.Millisecond})
	server := srv.Config.Handler.(*Server)
	sessions := make([]string, streams)
	conns := make([]net.Conn, streams)
	events := make([]<-chan sseEvent, streams)
	for i := range sessions {
		sessions[i] = initialize(t, srv.URL, version)
		var resp *http.Response
		conns[i], resp = rawGet(t, srv.URL, "HTTP/1.1", sessions[i], version)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET: %s", resp.Status)
		}
		events[i] = readSSE(resp.Body)
		if ev := nextEvent(t, events[i]); !ev.HasID || ev.Data != "" {
			t.Fatalf("GET stream opened with %+v, want a priming event", ev)
		}
	}
	if parkingSupported {
		mcptest.WaitFor(t, 5*time.Second, "every stream to park", func() bool {
			return pumping() == 0 && watched() == streams
		})
	}

	// News: a tool list change reaches the session's parked stream.
	call(t, srv.URL, sessions[0], version, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"test_trigger_tool_change"}}`)
	if got := decode(t, nextEvent(t, events[0]).Data); got.Method != "notifications/tools/list_changed" {
		t.Errorf("parked GET stream got %+v, want the list_changed notification", got)
	}
	// Keepalives: the timer wakes a parked stream to ping. (The shared
	// child's list change reaches the other sessions too.)
	timeout := time.After(15 * time.Second)
	for pings := 0; pings < 2; {
		select {
		case ev := <-events[1]:
			if len(ev.Comments) == 1 && ev.Comments[0] == "ping" {
				pings++
			} else if got := decode(t, ev.Data); got.Method != "notifications/tools/list_changed" {
				t.Fatalf("parked GET stream got %+v, want pings", ev)
			}
		case <-timeout:
			t.Fatalf("%d keepalives in 15s with a 300ms interval", pings)
		}
	}

	// The client leaving ends its stream: the poller sees the connection
	// close.
	for i := range streams / 2 {
		conns[i].Close()
	}
	mcptest.WaitFor(t, 5*time.Second, "the streams whose clients left to end", func() bool {
		return detachedCount(server) == streams-streams/2
	})
	if parkingSupported && watched() != streams-streams/2 {
		t.Errorf("the poller watches %d streams, want %d", watched(), streams-streams/2)
	}

	// CloseStreams ends the parked rest, and the poller goes with them.
	server.CloseStreams()
	for i := streams / 2; i < streams; i++ {
		waitEnd(t, events[i])
	}
	mcptest.WaitFor(t, 5*time.Second, "every stream and the poller to end", func() bool {
		return detachedCount(server) == 0 && watched() == 0 && !stacksHave("bridge.pollParked(")
	})
}

// pumping counts the goroutines writing a stream.
func pumping() int { return stacksCount("bridge.(*pump).run(") }

func stacksHave(fn string) bool { return stacksCount(fn) > 0 }

func stacksCount(fn string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte(fn))
}

func detachedCount(s *Server) int {
	s.detached.mu.Lock()
	defer s.detached.mu.Unlock()
	return len(s.detached.streams)
}
