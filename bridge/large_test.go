package bridge

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

const tenMiB = 10 << 20

// bigEcho is an echo request whose params hold a string of n bytes.
func bigEcho(id string, n int) (body, payload string) {
	payload = strings.Repeat("0123456789abcdef", n/16)
	return `{"jsonrpc":"2.0","id":` + id + `,"method":"echo","params":{"blob":"` + payload + `"}}`, payload
}

// TestLargeMessages passes a 10 MiB request and its 10 MiB answer through
// every transport, byte for byte.
func TestLargeMessages(t *testing.T) {
	srv := startResumeBridge(t, ServerConfig{ResumeGrace: -1})
	body, payload := bigEcho("7", tenMiB)
	check := func(t *testing.T, data string) {
		t.Helper()
		blob := jsonrpc.StringValue(jsonrpc.Member(jsonrpc.Member(jsonrpc.Member([]byte(data), "result"), "params"), "blob"))
		if blob != payload {
			t.Errorf("the 10 MiB answer came back with %d bytes, not the %d sent", len(blob), len(payload))
		}
	}
	t.Run("streamable", func(t *testing.T) {
		s, _, err := muxOpen(t.Context(), srv.URL+"/mcp", "0", "2025-11-25")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := muxPost(t.Context(), srv.URL+"/mcp", s.id, s.version, body)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		events := newSSEReader(resp.Body)
		for {
			ev, ok := events.next()
			if !ok {
				t.Fatal("no answer")
			}
			if strings.Contains(ev.Data, `"result"`) {
				check(t, ev.Data)
				return
			}
		}
	})
	t.Run("sse", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/sse", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		events := newSSEReader(resp.Body)
		endpoint, _ := events.next()
		post, err := http.Post(srv.URL+endpoint.Data, "application/json", strings.NewReader(body))
		if err != nil || post.StatusCode != http.StatusAccepted {
			t.Fatalf("post: %v %v", post, err)
		}
		post.Body.Close()
		ev, _ := events.next()
		check(t, ev.Data)
	})
	t.Run("ws", func(t *testing.T) {
		conn, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseNow()
		conn.SetReadLimit(-1)
		if err := conn.Write(t.Context(), websocket.MessageText, []byte(body)); err != nil {
			t.Fatal(err)
		}
		_, data, err := conn.Read(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		check(t, string(data))
	})
}

// TestOversizeMessages: over max_message_size (16 MiB), a request gets 413
// (or 1009 on a WebSocket) and a response a JSON-RPC error, and the bridge
// keeps serving.
func TestOversizeMessages(t *testing.T) {
	exe := mcptest.Build(t, "github.com/mcpbridge/caddy-mcp-bridge/internal/testchild")
	srv, _ := startBridgeWith(t, []string{exe, "-huge", "17000000"}, BackendConfig{}, ServerConfig{})
	body, _ := bigEcho("1", 17<<20)

	s, _, err := muxOpen(t.Context(), srv.URL+"/mcp", "0", "2025-11-25")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := muxPost(t.Context(), srv.URL+"/mcp", s.id, s.version, body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("17 MiB request: %s, want 413", resp.Status)
	}

	msgs, err := s.call(t.Context(), `{"jsonrpc":"2.0","id":2,"method":"huge"}`)
	if err != nil || len(msgs) == 0 || msgs[len(msgs)-1].Error == nil {
		t.Fatalf("17 MiB response: %v %v, want a JSON-RPC error", msgs, err)
	}
	if got := msgs[len(msgs)-1].Error.Message; !strings.Contains(got, "max_message_size") {
		t.Errorf("error %q does not name max_message_size", got)
	}
	if msgs, err := s.call(t.Context(), `{"jsonrpc":"2.0","id":3,"method":"ping"}`); err != nil || msgs[len(msgs)-1].Error != nil {
		t.Errorf("after the oversize answer, the session does not serve: %v %v", msgs, err)
	}

	conn, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(t.Context(), websocket.MessageText, []byte(body))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, _, err := conn.Read(ctx); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Errorf("17 MiB frame: %v, want close 1009", err)
	}
}
