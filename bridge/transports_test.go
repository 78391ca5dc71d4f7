package bridge

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap/zaptest"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// openLegacySSE opens a legacy SSE stream and returns the POST endpoint its
// first event names, and a reader for the rest.
func openLegacySSE(t *testing.T, url string) (string, *bufio.Reader, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Accel-Buffering") != "no" || resp.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("GET /sse: %d %v", resp.StatusCode, resp.Header)
	}
	br := bufio.NewReader(resp.Body)
	var endpoint string
	for endpoint == "" {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			endpoint = strings.TrimSpace(data)
		}
	}
	return endpoint, br, func() { cancel(); resp.Body.Close() }
}

// TestLegacySSEBadInput says what each bad request to the legacy SSE
// transport gets.
func TestLegacySSEBadInput(t *testing.T) {
	srv, backend := startBridge(t, PoolConfig{MinIdle: new(1)})
	endpoint, _, closeStream := openLegacySSE(t, srv.URL+"/sse")
	defer closeStream()
	if !strings.HasPrefix(endpoint, "/message?sessionId=") {
		t.Fatalf("endpoint event = %q", endpoint)
	}
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		bodyHas                  string
	}{
		{"no session id", "POST", "/message", `{"jsonrpc":"2.0","method":"x"}`, 400, "sessionId"},
		{"unknown session", "POST", "/message?sessionId=nope", `{"jsonrpc":"2.0","method":"x"}`, 404, "-32001"},
		{"bad JSON", "POST", endpoint, `{"jsonrpc":`, 400, "-32700"},
		{"not JSON-RPC", "POST", endpoint, `{"hello":1}`, 400, "-32600"},
		{"GET on the message path", "GET", endpoint, "", 405, ""},
		{"POST on the SSE path", "POST", "/sse", "{}", 405, ""},
		{"notification accepted", "POST", endpoint, `{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`, 202, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.bodyHas) {
				t.Errorf("got %d %s, want %d with %q", resp.StatusCode, body, tc.status, tc.bodyHas)
			}
		})
	}
	if n := backend.sessionCount(); n != 1 {
		t.Errorf("%d sessions after bad input, want the 1 still open", n)
	}
}

// TestLegacySSEEndpointBehindPrefix: the endpoint event names the path the
// client used, when a proxy in front stripped a prefix.
func TestLegacySSEEndpointBehindPrefix(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	backend := NewBackend(BackendConfig{Process: ProcessConfig{Argv: []string{exe}}}, zaptest.NewLogger(t))
	defer func() { backend.Close(); mcptest.WaitNoProcesses(t, exe, 5*time.Second) }()
	for _, tc := range []struct {
		cfg  ServerConfig
		want string
	}{
		{ServerConfig{MountPrefix: func(*http.Request) string { return "/tools" }}, "/tools/message?sessionId="},
		{ServerConfig{PublicBaseURL: "https://mcp.example.com/base/", MessagePath: "/msg"}, "https://mcp.example.com/base/msg?sessionId="},
	} {
		s := NewServer(backend, tc.cfg, zaptest.NewLogger(t))
		req, _ := http.NewRequest(http.MethodGet, "/sse", nil)
		sess := &session{ID: "abc"}
		if got := s.endpointURI(req, sess); got != tc.want+"abc" {
			t.Errorf("endpoint = %q, want %q", got, tc.want+"abc")
		}
	}
}

// TestWebSocketBadInput says what each bad frame gets, and that a clean
// close ends the session and its child.
func TestWebSocketBadInput(t *testing.T) {
	srv, backend := startBridge(t, PoolConfig{MinIdle: new(1)})
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
	dial := func(t *testing.T) *websocket.Conn {
		conn, resp, err := websocket.Dial(t.Context(), url, &websocket.DialOptions{Subprotocols: []string{"mcp"}})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Header.Get("Sec-WebSocket-Protocol") != "mcp" {
			t.Errorf("subprotocol %q, want mcp echoed", resp.Header.Get("Sec-WebSocket-Protocol"))
		}
		return conn
	}
	readStatus := func(conn *websocket.Conn) websocket.StatusCode {
		for {
			if _, _, err := conn.Read(context.Background()); err != nil {
				return websocket.CloseStatus(err)
			}
		}
	}

	t.Run("binary frame closes with 1003", func(t *testing.T) {
		conn := dial(t)
		conn.Write(t.Context(), websocket.MessageBinary, []byte(`{}`))
		if got := readStatus(conn); got != websocket.StatusUnsupportedData {
			t.Errorf("close status %v, want 1003", got)
		}
	})
	t.Run("oversize frame closes with 1009", func(t *testing.T) {
		conn := dial(t)
		conn.Write(t.Context(), websocket.MessageText, []byte(`"`+strings.Repeat("x", backend.maxMessageSize())+`"`))
		if got := readStatus(conn); got != websocket.StatusMessageTooBig {
			t.Errorf("close status %v, want 1009", got)
		}
	})
	t.Run("bad JSON gets a parse error and the connection stays", func(t *testing.T) {
		conn := dial(t)
		defer conn.CloseNow()
		conn.Write(t.Context(), websocket.MessageText, []byte(`{"jsonrpc":`))
		_, data, err := conn.Read(t.Context())
		if err != nil || !strings.Contains(string(data), "-32700") {
			t.Fatalf("got %s, %v; want a -32700 error", data, err)
		}
		conn.Write(t.Context(), websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":7,"method":"ping"}`))
		if _, data, err = conn.Read(t.Context()); err != nil || !strings.Contains(string(data), `"id":7`) {
			t.Errorf("after the bad frame: %s, %v", data, err)
		}
	})
	t.Run("no subprotocol offered is accepted", func(t *testing.T) {
		conn, _, err := websocket.Dial(t.Context(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close(websocket.StatusNormalClosure, "")
	})
	t.Run("clean close ends the session", func(t *testing.T) {
		conn := dial(t)
		conn.Close(websocket.StatusNormalClosure, "bye")
		waitSessions(t, backend, 0)
	})
	waitSessions(t, backend, 0)
}

// TestTransportsLeaveNoGoroutines opens and closes sessions on every
// transport and checks that the goroutine count returns to where it was.
func TestTransportsLeaveNoGoroutines(t *testing.T) {
	srv, backend := startBridge(t, PoolConfig{MinIdle: new(1)})
	waitSessions(t, backend, 0)
	time.Sleep(100 * time.Millisecond)
	before := runtime.NumGoroutine()
	for range 3 {
		_, _, closeStream := openLegacySSE(t, srv.URL+"/sse")
		closeStream()
		conn, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close(websocket.StatusNormalClosure, "")
	}
	waitSessions(t, backend, 0)
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for {
		// The pool's watcher goroutines follow the children, which are stopped
		// in the background; give them a moment.
		after := runtime.NumGoroutine()
		if after <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d before, %d after\n%s", before, after, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitSessions(t *testing.T, b *Backend, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for b.sessionCount() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions, want %d", b.sessionCount(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestKeepalive: with a short keepalive, a legacy SSE stream gets ": ping"
// comments and a WebSocket client gets ping frames.
func TestKeepalive(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	backend := NewBackend(BackendConfig{Process: ProcessConfig{Argv: []string{exe}}}, zaptest.NewLogger(t))
	srv := httptest.NewServer(NewServer(backend, ServerConfig{Keepalive: 20 * time.Millisecond}, zaptest.NewLogger(t)))
	defer func() { srv.Close(); backend.Close(); mcptest.WaitNoProcesses(t, exe, 5*time.Second) }()

	_, stream, closeStream := openLegacySSE(t, srv.URL+"/sse")
	pings := 0
	for pings < 3 {
		line, err := stream.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == ": ping\n" {
			pings++
		}
	}
	closeStream()

	pinged := make(chan struct{}, 10)
	conn, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", &websocket.DialOptions{
		OnPingReceived: func(context.Context, []byte) bool {
			select {
			case pinged <- struct{}{}:
			default:
			}
			return true
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	go conn.Read(t.Context()) // control frames are handled while reading
	for range 3 {
		select {
		case <-pinged:
		case <-time.After(5 * time.Second):
			t.Fatal("no WebSocket ping arrived")
		}
	}
}

// TestQueryValue checks queryValue against url.Values.Get.
func TestQueryValue(t *testing.T) {
	for _, q := range []string{
		"", "sessionId=abc", "a=1&sessionId=abc&sessionId=def", "sessionId", "sessionId=",
		"session%49d=x%20y", "sessionId=%zz&sessionId=ok", "sessionId=a;b&sessionId=c", "x=1&&sessionId=a+b",
	} {
		want := ""
		if v, _ := url.ParseQuery(q); v != nil {
			want = v.Get("sessionId")
		}
		if got := queryValue(q, "sessionId"); got != want {
			t.Errorf("queryValue(%q) = %q, want %q", q, got, want)
		}
	}
}

func BenchmarkQueryValue(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = queryValue("sessionId=0123456789abcdef0123456789abcdef", "sessionId")
	}
}
