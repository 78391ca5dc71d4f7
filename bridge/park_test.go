package bridge

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
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

// TestParkedStreamTLSReadAhead: a client sends its GET and a close_notify
// (a TLS half-close: the TCP connection stays open) in one segment, so
// crypto/tls reads the close_notify ahead, with the request, and the
// socket has nothing more to tell the poller. The stream ends anyway, and
// its connection closes.
func TestParkedStreamTLSReadAhead(t *testing.T) {
	const version = "2025-11-25"
	exe := mcptest.EverythingServer(t)
	srv, _ := startBridgeWith(t, []string{exe}, BackendConfig{Pool: PoolConfig{MinIdle: new(1)}}, ServerConfig{})
	tlsSrv := httptest.NewUnstartedServer(srv.Config.Handler)
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	session := initialize(t, srv.URL, version)

	raw, err := net.Dial("tcp", strings.TrimPrefix(tlsSrv.URL, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	held := &heldWrites{Conn: raw}
	conn := tls.Client(held, &tls.Config{InsecureSkipVerify: true})
	if err := conn.Handshake(); err != nil {
		t.Fatal(err)
	}
	held.hold = true
	fmt.Fprintf(conn, "GET /mcp HTTP/1.1\r\nHost: bridge\r\nAccept: text/event-stream\r\n%s: %s\r\nMCP-Protocol-Version: %s\r\n\r\n", headerSessionID, session, version)
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = raw.SetWriteDeadline(time.Time{})                  // CloseWrite leaves one in the past
	if _, err := raw.Write(held.buf.Bytes()); err != nil { // one segment
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %v, %v", resp, err)
	}
	waitEnd(t, readSSE(resp.Body))
}

// heldWrites keeps what is written while hold is set, for the test to
// send in one write.
type heldWrites struct {
	net.Conn
	hold bool
	buf  bytes.Buffer
}

func (h *heldWrites) Write(p []byte) (int, error) {
	if h.hold {
		return h.buf.Write(p)
	}
	return h.Conn.Write(p)
}
