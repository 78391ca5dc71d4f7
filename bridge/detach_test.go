package bridge

import (
	"bufio"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// TestDetachedGetStream checks the GET stream that leaves the request's
// goroutine: over HTTP/1.1 it is a chunked response that closes its
// connection at the end, carries the stream's events, and leaves no
// goroutine behind when the client goes; over HTTP/1.0, which has no
// chunked bodies, it is served as any response (net/http does not watch
// an HTTP/1.0 connection for the client leaving: the next keepalive write
// finds it gone).
func TestDetachedGetStream(t *testing.T) {
	srv, _ := startBridge(t, PoolConfig{MinIdle: new(1)})
	const version = "2025-11-25"
	for _, tc := range []struct {
		proto    string
		detached bool
	}{
		{"HTTP/1.1", true},
		{"HTTP/1.0", false},
	} {
		t.Run(tc.proto, func(t *testing.T) {
			session := initialize(t, srv.URL, version)
			before := runtime.NumGoroutine()
			conn, resp := rawGet(t, srv.URL, tc.proto, session, version)
			chunked := len(resp.TransferEncoding) == 1 && resp.TransferEncoding[0] == "chunked"
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" || chunked != (tc.proto == "HTTP/1.1") {
				t.Fatalf("GET: %s, Content-Type %q, Transfer-Encoding %v", resp.Status, resp.Header.Get("Content-Type"), resp.TransferEncoding)
			}
			if tc.detached && !resp.Close {
				t.Error("a detached stream's response does not say Connection: close")
			}
			if ev := nextEvent(t, readSSE(resp.Body)); !ev.HasID || ev.Data != "" {
				t.Fatalf("GET stream opened with %+v, want a priming event", ev)
			}
			conn.Close()
			if !tc.detached {
				return
			}
			deadline := time.Now().Add(5 * time.Second)
			for runtime.NumGoroutine() > before {
				if time.Now().After(deadline) {
					t.Fatalf("%d goroutines after the client left, %d before it came", runtime.NumGoroutine(), before)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// rawGet opens a session's GET stream on a connection of its own, over
// proto; the connection closes at cleanup.
func rawGet(t *testing.T, url, proto, session, version string) (net.Conn, *http.Response) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET /mcp %s\r\nHost: bridge\r\nAccept: text/event-stream\r\n%s: %s\r\nMCP-Protocol-Version: %s\r\n\r\n",
		proto, headerSessionID, session, version)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	return conn, resp
}

// TestDetachedStreamLeavesHeader: once the handler of a detached GET
// stream returns, the stream's goroutine no longer touches the response's
// header map, which Caddy's access log reads then.
func TestDetachedStreamLeavesHeader(t *testing.T) {
	const version = "2025-11-25"
	exe := mcptest.EverythingServer(t)
	srv, _ := startBridgeWith(t, []string{exe}, BackendConfig{Pool: PoolConfig{MinIdle: new(1)}}, ServerConfig{})
	returned := make(chan [2]http.Header, 1)
	logging := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		srv.Config.Handler.ServeHTTP(w, r)
		if r.Method == http.MethodGet {
			header := w.Header()
			before := header.Clone()
			for range 1000 { // as an access log reads it, while the stream starts
				for k := range header {
					_ = k
				}
			}
			returned <- [2]http.Header{header, before}
		}
	}))
	t.Cleanup(logging.Close)
	session := initialize(t, srv.URL, version)
	_, resp := rawGet(t, logging.URL, "HTTP/1.1", session, version)
	got := <-returned
	header, before := got[0], got[1]
	if ev := nextEvent(t, readSSE(resp.Body)); !ev.HasID {
		t.Fatalf("GET stream opened with %+v, want a priming event", ev)
	}
	if !maps.EqualFunc(header, before, slices.Equal) {
		t.Errorf("the header map changed after the handler returned: %v, then %v", before, header)
	}
}
