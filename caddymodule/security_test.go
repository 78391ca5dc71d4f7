package caddymodule

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/wsclient"
)

// The access-control tests run a real Caddy and talk to it as clients do:
// raw HTTP where the point is a status code or a header, the go-sdk client
// where the point is a session that works.

// secInit is an initialize request.
const secInit = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"security-test","version":"1"}}}`

const (
	secInitialized = `{"jsonrpc":"2.0","method":"notifications/initialized"}`
	secToolsList   = `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`
)

// secSite is one site of a test Caddy: its mcp_bridge options, the stdio
// server it bridges (the everything-server when empty) and extra site
// directives.
type secSite struct {
	block   string
	command string
	site    string
}

// secCaddy runs one Caddy serving each site on a port of its own and
// returns the sites' base URLs in order. Each site gets a pool of its own
// (an env line tells their child configurations apart), so that sessions
// and per-key counts of one site do not show in another. At cleanup, after
// Caddy has stopped, no child may be left.
func secCaddy(t *testing.T, sites ...secSite) (*mcptest.Caddy, []string) {
	t.Helper()
	admin := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "{\n\tadmin %s\n}\n", admin)
	var bases, addrs []string
	exes := map[string]bool{}
	for i, s := range sites {
		command := s.command
		if command == "" {
			command = mcptest.EverythingServer(t)
		}
		exes[strings.Fields(command)[0]] = true
		port := mcptest.FreePort(t)
		fmt.Fprintf(&cfg, `
:%d {
	bind 127.0.0.1
	%s
	mcp_bridge {
		command %s
		env MCPBRIDGE_TEST_SITE %d
		%s
	}
}
`, port, s.site, command, i, s.block)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		addrs = append(addrs, addr)
		bases = append(bases, "http://"+addr)
	}
	t.Cleanup(func() {
		for exe := range exes {
			mcptest.WaitNoProcesses(t, exe, 10*time.Second)
		}
	})
	c := mcptest.StartCaddy(t, t.TempDir(), cfg.String(), admin, addrs...)
	return c, bases
}

// secClient keeps no connection alive: some tests reload Caddy, which
// closes idle connections, and a request sent on one as it closes fails
// (see TestHTTP1ReloadsHangNoCall).
var secClient = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// secDo sends a request and reads the whole answer. kv are header pairs;
// a POST gets the Content-Type and Accept MCP wants unless kv sets them.
func secDo(t *testing.T, method, u, body string, kv ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
	}
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	resp, err := secClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, u, err)
	}
	return resp, b
}

// secOpen opens a Streamable HTTP session with raw requests (initialize,
// then notifications/initialized) and ends it at cleanup.
func secOpen(t *testing.T, base string, kv ...string) string {
	t.Helper()
	resp, body := secDo(t, http.MethodPost, base+"/mcp", secInit, kv...)
	sid := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || sid == "" {
		t.Fatalf("initialize with %q: %d, session %q: %s", kv, resp.StatusCode, sid, body)
	}
	t.Cleanup(func() { secDelete(base, sid, kv...) })
	resp, body = secDo(t, http.MethodPost, base+"/mcp", secInitialized, append([]string{"Mcp-Session-Id", sid}, kv...)...)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("notifications/initialized: %d %s", resp.StatusCode, body)
	}
	return sid
}

// secDelete ends a session, ignoring failures (it is cleanup).
func secDelete(base, sid string, kv ...string) int {
	req, _ := http.NewRequest(http.MethodDelete, base+"/mcp", nil)
	req.Header.Set("Mcp-Session-Id", sid)
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	resp, err := secClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// secRPCError decodes a JSON-RPC error response body.
func secRPCError(t *testing.T, body []byte) (int, string) {
	t.Helper()
	var msg struct {
		JSONRPC string `json:"jsonrpc"`
		Error   *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &msg); err != nil || msg.JSONRPC != "2.0" || msg.Error == nil {
		t.Errorf("body is not a JSON-RPC error response: %q", body)
		return 0, ""
	}
	return msg.Error.Code, msg.Error.Message
}

// secSSEData returns the data of each event of an SSE body that carries a
// JSON value.
func secSSEData(body []byte) [][]byte {
	var out [][]byte
	for ev := range mcptest.NewSSEReader(bytes.NewReader(body)).Events() {
		if ev.Data != "" && json.Valid([]byte(ev.Data)) {
			out = append(out, []byte(ev.Data))
		}
	}
	return out
}

func secWSURL(base string) string { return "ws" + strings.TrimPrefix(base, "http") + "/ws" }

// secSSEEndpoint opens a legacy SSE stream and returns the URI its
// endpoint event names, and a reader for the events that follow. The
// stream closes at cleanup.
func secSSEEndpoint(t *testing.T, base, path string, kv ...string) (string, *mcptest.SSEReader) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	r := mcptest.NewSSEReader(resp.Body)
	ev := r.MustNext(t)
	if ev.Event != "endpoint" {
		t.Fatalf("first event %q %q, want endpoint", ev.Event, ev.Data)
	}
	return ev.Data, r
}

// secStreamStatus opens an SSE stream with a GET and answers its status;
// an answer that is a stream is closed at once, otherwise its body is read.
func secStreamStatus(t *testing.T, u string, kv ...string) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

const secResourceMetadata = "https://example.com/.well-known/oauth-protected-resource"

// TestSecurityAPIKey: with keys configured, every bridge request needs one,
// in Authorization: Bearer, X-API-Key, or (only with api_key_query) the
// api_key query parameter; a 401 says how to authenticate.
func TestSecurityAPIKey(t *testing.T) {
	const envKey = "k-env-5b9d2f0a"
	t.Setenv("MCP_TEST_KEY", envKey)
	_, bases := secCaddy(t,
		// 0: inline keys and one from the environment; no query keys.
		secSite{block: "api_key k-one {env.MCP_TEST_KEY}\n\t\tapi_key k-two"},
		// 1: query keys allowed, and an OAuth resource metadata URL.
		secSite{block: "api_key k-one\n\t\tapi_key_query\n\t\tresource_metadata " + secResourceMetadata},
	)

	tests := []struct {
		name      string
		site      int
		method    string
		path      string // default /mcp
		header    []string
		want      int
		challenge string // the WWW-Authenticate of a 401
		reason    string // in the JSON-RPC error message of a 401
		bug       string // a known bug that makes the reason check fail
	}{
		{name: "no key: 401 with a Bearer challenge", want: 401, challenge: "Bearer", reason: "missing API key"},
		{name: "no key, resource_metadata set: the challenge names it", site: 1, want: 401,
			challenge: `Bearer resource_metadata="` + secResourceMetadata + `"`, reason: "missing API key"},
		{name: "wrong Bearer key: 401", header: []string{"Authorization", "Bearer k-wrong"}, want: 401, challenge: "Bearer", reason: "wrong API key"},
		{name: "wrong X-API-Key: 401", header: []string{"X-API-Key", "k-wrong"}, want: 401, challenge: "Bearer", reason: "wrong API key"},
		{name: "a key's prefix: 401", header: []string{"Authorization", "Bearer k-on"}, want: 401, challenge: "Bearer"},
		{name: "empty Bearer: 401", header: []string{"Authorization", "Bearer "}, want: 401, challenge: "Bearer"},
		{name: "Basic auth carrying the key: 401", header: []string{"Authorization", "Basic k-one"}, want: 401, challenge: "Bearer"},
		{name: "the placeholder itself is no key: 401", header: []string{"Authorization", "Bearer {env.MCP_TEST_KEY}"}, want: 401, challenge: "Bearer"},
		{name: "Bearer key: 200", header: []string{"Authorization", "Bearer k-one"}, want: 200},
		{name: "bearer scheme in lower case: 200", header: []string{"Authorization", "bearer k-one"}, want: 200},
		{name: "X-API-Key: 200", header: []string{"X-API-Key", "k-one"}, want: 200},
		{name: "second key of one api_key line: 200", header: []string{"Authorization", "Bearer " + envKey}, want: 200},
		{name: "key of a second api_key line: 200", header: []string{"X-API-Key", "k-two"}, want: 200},
		{name: "query key with api_key_query off: 401", path: "/mcp?api_key=k-one", want: 401, challenge: "Bearer", reason: "missing API key"},
		{name: "query key with api_key_query on: 200", site: 1, path: "/mcp?api_key=k-one", want: 200},
		{name: "wrong query key: 401", site: 1, path: "/mcp?api_key=k-two", want: 401, challenge: `Bearer resource_metadata="` + secResourceMetadata + `"`, reason: "wrong API key",
			bug: "BUG (caddymodule/auth.go, unauthorized): the reason is computed by calling presentedKey again, after authenticate's " +
				"presentedKey already removed api_key from r.URL, so a wrong query key is reported (to the client and in the log) as a missing one"},
		{name: "GET without key: 401", method: http.MethodGet, header: []string{"Accept", "text/event-stream", "Mcp-Session-Id", "x"}, want: 401, challenge: "Bearer"},
		{name: "DELETE without key: 401", method: http.MethodDelete, header: []string{"Mcp-Session-Id", "x"}, want: 401, challenge: "Bearer"},
		{name: "legacy SSE GET without key: 401", method: http.MethodGet, path: "/sse", header: []string{"Accept", "text/event-stream"}, want: 401, challenge: "Bearer"},
		{name: "legacy SSE message POST without key: 401", path: "/message?sessionId=x", want: 401, challenge: "Bearer"},
		{name: "WebSocket upgrade without key: 401", method: http.MethodGet, path: "/ws", want: 401, challenge: "Bearer",
			header: []string{"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}},
		{name: "paths the bridge does not serve need no key", method: http.MethodGet, path: "/elsewhere", want: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method, path := tt.method, tt.path
			if method == "" {
				method = http.MethodPost
			}
			if path == "" {
				path = "/mcp"
			}
			body := ""
			if method == http.MethodPost {
				body = secInit
			}
			base := bases[tt.site]
			resp, got := secDo(t, method, base+path, body, tt.header...)
			if sid := resp.Header.Get("Mcp-Session-Id"); sid != "" {
				defer secDelete(base, sid, tt.header...)
			}
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, got)
			}
			if tt.want != http.StatusUnauthorized {
				if tt.path == "" && resp.Header.Get("Mcp-Session-Id") == "" {
					t.Errorf("initialize answered %d with no Mcp-Session-Id", resp.StatusCode)
				}
				if c := resp.Header.Get("WWW-Authenticate"); c != "" {
					t.Errorf("a %d carries WWW-Authenticate %q", resp.StatusCode, c)
				}
				return
			}
			if c := resp.Header.Values("WWW-Authenticate"); len(c) != 1 || c[0] != tt.challenge {
				t.Errorf("WWW-Authenticate = %q, want %q", c, tt.challenge)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type of the 401 = %q", ct)
			}
			if resp.Header.Get("Mcp-Session-Id") != "" {
				t.Error("a 401 opened a session")
			}
			_, msg := secRPCError(t, got)
			if !strings.Contains(msg, tt.reason) {
				t.Errorf("error message %q does not say %q. %s", msg, tt.reason, tt.bug)
			}
		})
	}

	// Working sessions through the go-sdk client, each transport, each way
	// of presenting the key.
	sessions := []struct {
		name      string
		site      int
		transport func(base string) mcp.Transport
	}{
		{"streamable, Authorization: Bearer", 0, func(base string) mcp.Transport {
			return &mcp.StreamableClientTransport{Endpoint: base + "/mcp", HTTPClient: mcptest.Bearer("k-two").Client(), MaxRetries: -1}
		}},
		{"streamable, X-API-Key from the environment", 0, func(base string) mcp.Transport {
			return &mcp.StreamableClientTransport{Endpoint: base + "/mcp", HTTPClient: mcptest.NewAuthTransport("X-API-Key", envKey).Client(), MaxRetries: -1}
		}},
		{"streamable, api_key in the URL", 1, func(base string) mcp.Transport {
			return &mcp.StreamableClientTransport{Endpoint: base + "/mcp?api_key=k-one", MaxRetries: -1}
		}},
		{"legacy SSE, Authorization: Bearer", 0, func(base string) mcp.Transport {
			return &mcp.SSEClientTransport{Endpoint: base + "/sse", HTTPClient: mcptest.Bearer("k-one").Client()}
		}},
		{"WebSocket, X-API-Key on the upgrade", 0, func(base string) mcp.Transport {
			return &wsclient.Transport{URL: secWSURL(base), Header: http.Header{"X-Api-Key": {"k-one"}}}
		}},
		{"WebSocket, api_key in the URL", 1, func(base string) mcp.Transport {
			return &wsclient.Transport{URL: secWSURL(base) + "?api_key=k-one"}
		}},
	}
	for _, tt := range sessions {
		t.Run("session/"+tt.name, func(t *testing.T) {
			client := mcptest.Connect(t, tt.transport(bases[tt.site]), "")
			defer client.Close()
			if got := client.CallText(t, "test_simple_text", nil); got != "This is a simple text response for testing." {
				t.Errorf("test_simple_text = %q", got)
			}
		})
	}

	// A client that cannot set headers (a browser's EventSource) opens the
	// legacy SSE stream with the key in the URL, then posts to the endpoint
	// the stream names, resolved against the stream's URL as the SDKs do.
	t.Run("legacy SSE with api_key in the URL: the endpoint event works", func(t *testing.T) {
		sseURL, _ := url.Parse(bases[1] + "/sse?api_key=k-one")
		endpoint, events := secSSEEndpoint(t, bases[1], "/sse?api_key=k-one")
		ref, err := url.Parse(endpoint)
		if err != nil {
			t.Fatal(err)
		}
		post := sseURL.ResolveReference(ref).String()
		resp, body := secDo(t, http.MethodPost, post, secInit)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST %s: %d %s, want 202. BUG (bridge/sse.go endpointURI): with api_key_query, the endpoint event "+
				"names /message?sessionId=… without the api_key the stream was opened with, so a legacy SSE client that can "+
				"only put its key in the URL (the case api_key_query is for) gets 401 on every message", post, resp.StatusCode, body)
		}
		if ev := events.MustNext(t); !strings.Contains(ev.Data, `"result"`) {
			t.Errorf("initialize answered %s", ev.Data)
		}
	})

	// The WebSocket upgrade as a WebSocket client sees it.
	upgrades := []struct {
		name   string
		url    string
		header http.Header
		want   int
	}{
		{"no key", secWSURL(bases[0]), nil, 401},
		{"wrong key", secWSURL(bases[0]), http.Header{"Authorization": {"Bearer k-wrong"}}, 401},
		{"query key with api_key_query off", secWSURL(bases[0]) + "?api_key=k-one", nil, 401},
		{"Bearer key", secWSURL(bases[0]), http.Header{"Authorization": {"Bearer k-one"}}, 101},
	}
	for _, tt := range upgrades {
		t.Run("ws upgrade/"+tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, resp, err := websocket.Dial(ctx, tt.url, &websocket.DialOptions{HTTPHeader: tt.header, Subprotocols: []string{"mcp"}})
			if resp == nil {
				t.Fatalf("no HTTP response: %v", err)
			}
			if resp.StatusCode != tt.want {
				t.Fatalf("upgrade answered %d (%v), want %d", resp.StatusCode, err, tt.want)
			}
			if tt.want != http.StatusSwitchingProtocols {
				if err == nil {
					t.Error("Dial succeeded")
				}
				if c := resp.Header.Get("WWW-Authenticate"); c != "Bearer" {
					t.Errorf("WWW-Authenticate = %q", c)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.CloseNow()
			if err := conn.Write(ctx, websocket.MessageText, []byte(secInit)); err != nil {
				t.Fatal(err)
			}
			_, msg, err := conn.Read(ctx)
			if err != nil || !bytes.Contains(msg, []byte(`"result"`)) {
				t.Fatalf("initialize over the WebSocket: %v %s", err, msg)
			}
			conn.Close(websocket.StatusNormalClosure, "")
		})
	}
}

// TestSecuritySessionBoundToKey: a session belongs to the key that opened
// it, with a child of its own or on a shared one. Another valid key naming
// its id is told it does not exist, whatever the method, and cannot end it.
func TestSecuritySessionBoundToKey(t *testing.T) {
	_, bases := secCaddy(t,
		secSite{block: "api_key k-one k-two"},
		secSite{block: "api_key k-one k-two\n\t\tpool {\n\t\t\tisolation shared\n\t\t}"},
	)
	for i, isolation := range []string{"session", "shared"} {
		t.Run("isolation="+isolation, func(t *testing.T) { secSessionBoundToKey(t, bases[i]) })
	}
}

func secSessionBoundToKey(t *testing.T, base string) {
	sid := secOpen(t, base, "Authorization", "Bearer k-one")

	tests := []struct {
		name   string
		method string
		body   string
		header []string
		want   int
	}{
		{"other key, POST", http.MethodPost, secToolsList, []string{"Authorization", "Bearer k-two"}, 404},
		{"other key as X-API-Key, POST", http.MethodPost, secToolsList, []string{"X-API-Key", "k-two"}, 404},
		{"other key, notification", http.MethodPost, secInitialized, []string{"Authorization", "Bearer k-two"}, 404},
		{"other key, GET stream", http.MethodGet, "", []string{"Authorization", "Bearer k-two", "Accept", "text/event-stream"}, 404},
		{"other key, DELETE", http.MethodDelete, "", []string{"Authorization", "Bearer k-two"}, 404},
		{"no key", http.MethodPost, secToolsList, nil, 401},
		// Last: the session survived all of the above.
		{"owner, POST", http.MethodPost, secToolsList, []string{"Authorization", "Bearer k-one"}, 200},
		{"owner as X-API-Key, POST", http.MethodPost, `{"jsonrpc":"2.0","id":3,"method":"ping"}`, []string{"X-API-Key", "k-one"}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := secDo(t, tt.method, base+"/mcp", tt.body, append([]string{"Mcp-Session-Id", sid}, tt.header...)...)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, body)
			}
			switch tt.want {
			case http.StatusNotFound:
				if code, _ := secRPCError(t, body); code != -32001 {
					t.Errorf("JSON-RPC code %d, want -32001 (session not found)", code)
				}
			case http.StatusOK:
				if data := secSSEData(body); len(data) == 0 || !bytes.Contains(data[len(data)-1], []byte(`"result"`)) {
					t.Errorf("no result in %q", body)
				}
			}
		})
	}

	t.Run("legacy SSE message POST with another key", func(t *testing.T) {
		endpoint, events := secSSEEndpoint(t, base, "/sse", "Authorization", "Bearer k-one")
		resp, body := secDo(t, http.MethodPost, base+endpoint, secInit, "Authorization", "Bearer k-two")
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("other key: %d %s, want 404", resp.StatusCode, body)
		}
		resp, body = secDo(t, http.MethodPost, base+endpoint, secInit, "Authorization", "Bearer k-one")
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("owner: %d %s, want 202", resp.StatusCode, body)
		}
		if ev := events.MustNext(t); ev.Event != "message" || !strings.Contains(ev.Data, `"result"`) {
			t.Errorf("owner's initialize answered %q %s", ev.Event, ev.Data)
		}
	})
}

// TestSecurityOriginAndCORS: a disallowed Origin gets 403 before anything
// else; with cors on, preflights from allowed origins are answered without
// a key, and answers carry the CORS headers a browser client needs.
func TestSecurityOriginAndCORS(t *testing.T) {
	const allowed, evil = "http://app.example.com", "http://evil.example.com"
	_, bases := secCaddy(t,
		// 0: CORS with a short max age and an extra header.
		secSite{block: "api_key k-one\n\t\tallowed_origins " + allowed + "\n\t\tcors {\n\t\t\tmax_age 10m\n\t\t\tallow_headers X-Custom\n\t\t}"},
		// 1: CORS with credentials.
		secSite{block: "api_key k-one\n\t\tallowed_origins " + allowed + "\n\t\tcors {\n\t\t\tallow_credentials\n\t\t}"},
		// 2: no allowed_origins: only localhost origins, on loopback.
		secSite{block: "api_key k-one"},
	)
	key := []string{"Authorization", "Bearer k-one"}
	preflight := []string{"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization, content-type, mcp-session-id"}

	hasVaryOrigin := func(h http.Header) bool {
		for _, v := range h.Values("Vary") {
			for f := range strings.SplitSeq(v, ",") {
				if strings.EqualFold(strings.TrimSpace(f), "Origin") {
					return true
				}
			}
		}
		return false
	}
	list := func(v string) []string {
		var out []string
		for f := range strings.SplitSeq(v, ",") {
			out = append(out, strings.ToLower(strings.TrimSpace(f)))
		}
		return out
	}

	tests := []struct {
		name   string
		site   int
		method string
		origin string
		header []string
		want   int
		check  func(t *testing.T, h http.Header)
	}{
		{name: "POST from a disallowed origin, with the key: 403", method: http.MethodPost, origin: evil, header: key, want: 403},
		{name: "preflight from a disallowed origin: 403", method: http.MethodOptions, origin: evil, header: preflight, want: 403,
			check: func(t *testing.T, h http.Header) {
				if v := h.Get("Access-Control-Allow-Origin"); v != "" {
					t.Errorf("a refused preflight allows origin %q", v)
				}
			}},
		{name: "an origin that only ends like an allowed one: 403", method: http.MethodPost, origin: allowed + ".evil.com", header: key, want: 403},
		{name: "allowed host with another scheme: 403", method: http.MethodPost, origin: "https://app.example.com", header: key, want: 403},
		{name: "preflight from the allowed origin, no key: 204", method: http.MethodOptions, origin: allowed, header: preflight, want: 204,
			check: func(t *testing.T, h http.Header) {
				if v := h.Get("Access-Control-Allow-Origin"); v != allowed {
					t.Errorf("Access-Control-Allow-Origin = %q, want %q", v, allowed)
				}
				if v := h.Get("Access-Control-Allow-Methods"); v != "GET, POST, DELETE, OPTIONS" {
					t.Errorf("Access-Control-Allow-Methods = %q", v)
				}
				got := list(h.Get("Access-Control-Allow-Headers"))
				for _, want := range []string{"Authorization", "X-API-Key", "Content-Type", "Mcp-Session-Id", "MCP-Protocol-Version", "Last-Event-ID", "Mcp-Method", "Mcp-Name", "X-Custom"} {
					if !slices.Contains(got, strings.ToLower(want)) {
						t.Errorf("Access-Control-Allow-Headers %q lacks %s", h.Get("Access-Control-Allow-Headers"), want)
					}
				}
				if v := h.Get("Access-Control-Max-Age"); v != "600" {
					t.Errorf("Access-Control-Max-Age = %q, want 600 (10m)", v)
				}
				if !hasVaryOrigin(h) {
					t.Errorf("Vary = %q, want Origin", h.Values("Vary"))
				}
				if v := h.Get("Access-Control-Allow-Credentials"); v != "" {
					t.Errorf("Access-Control-Allow-Credentials = %q without allow_credentials", v)
				}
				if v := h.Get("WWW-Authenticate"); v != "" {
					t.Errorf("the preflight was challenged: %q", v)
				}
			}},
		{name: "preflight with credentials allowed: 204 with the default max age", site: 1, method: http.MethodOptions, origin: allowed, header: preflight, want: 204,
			check: func(t *testing.T, h http.Header) {
				if v := h.Get("Access-Control-Allow-Credentials"); v != "true" {
					t.Errorf("Access-Control-Allow-Credentials = %q", v)
				}
				if v := h.Get("Access-Control-Max-Age"); v != "3600" {
					t.Errorf("Access-Control-Max-Age = %q, want the default 3600", v)
				}
			}},
		{name: "POST from the allowed origin with the key: 200 with CORS headers", method: http.MethodPost, origin: allowed, header: key, want: 200,
			check: func(t *testing.T, h http.Header) {
				if v := h.Get("Access-Control-Allow-Origin"); v != allowed {
					t.Errorf("Access-Control-Allow-Origin = %q, want %q", v, allowed)
				}
				got := list(h.Get("Access-Control-Expose-Headers"))
				for _, want := range []string{"Mcp-Session-Id", "MCP-Protocol-Version", "WWW-Authenticate"} {
					if !slices.Contains(got, strings.ToLower(want)) {
						t.Errorf("Access-Control-Expose-Headers %q lacks %s", h.Get("Access-Control-Expose-Headers"), want)
					}
				}
				if !hasVaryOrigin(h) {
					t.Errorf("Vary = %q, want Origin", h.Values("Vary"))
				}
				if v := h.Get("Access-Control-Allow-Credentials"); v != "" {
					t.Errorf("Access-Control-Allow-Credentials = %q without allow_credentials", v)
				}
			}},
		{name: "POST from the allowed origin, credentials allowed: Allow-Credentials true", site: 1, method: http.MethodPost, origin: allowed, header: key, want: 200,
			check: func(t *testing.T, h http.Header) {
				if v := h.Get("Access-Control-Allow-Origin"); v != allowed {
					t.Errorf("Access-Control-Allow-Origin = %q, want %q", v, allowed)
				}
				if v := h.Get("Access-Control-Allow-Credentials"); v != "true" {
					t.Errorf("Access-Control-Allow-Credentials = %q, want true", v)
				}
				if !hasVaryOrigin(h) {
					t.Errorf("Vary = %q, want Origin", h.Values("Vary"))
				}
			}},
		{name: "POST from the allowed origin without key: a 401 the page can read", method: http.MethodPost, origin: allowed, want: 401,
			check: func(t *testing.T, h http.Header) {
				if v := h.Get("Access-Control-Allow-Origin"); v != allowed {
					t.Errorf("Access-Control-Allow-Origin = %q on the 401", v)
				}
				if !slices.Contains(list(h.Get("Access-Control-Expose-Headers")), "www-authenticate") {
					t.Errorf("Access-Control-Expose-Headers %q lacks WWW-Authenticate", h.Get("Access-Control-Expose-Headers"))
				}
			}},
		{name: "POST without Origin (not a browser): 200, no Allow-Origin", method: http.MethodPost, header: key, want: 200,
			check: func(t *testing.T, h http.Header) {
				if v := h.Get("Access-Control-Allow-Origin"); v != "" {
					t.Errorf("Access-Control-Allow-Origin = %q with no Origin", v)
				}
			}},
		{name: "no allowed_origins: a remote origin gets 403", site: 2, method: http.MethodPost, origin: evil, header: key, want: 403},
		{name: "no allowed_origins: a localhost origin on loopback gets through", site: 2, method: http.MethodPost, origin: "http://localhost:3000", header: key, want: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := bases[tt.site]
			body := ""
			if tt.method == http.MethodPost {
				body = secInit
			}
			header := tt.header
			if tt.origin != "" {
				header = append([]string{"Origin", tt.origin}, header...)
			}
			resp, got := secDo(t, tt.method, base+"/mcp", body, header...)
			if sid := resp.Header.Get("Mcp-Session-Id"); sid != "" {
				defer secDelete(base, sid, key...)
			}
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, got)
			}
			switch tt.want {
			case http.StatusForbidden:
				if _, msg := secRPCError(t, got); !strings.Contains(msg, "origin") {
					t.Errorf("403 message %q", msg)
				}
			case http.StatusNoContent:
				if len(got) != 0 {
					t.Errorf("preflight body %q", got)
				}
			}
			if tt.check != nil {
				tt.check(t, resp.Header)
			}
		})
	}
}

// TestSecurityLimits: request bodies are capped in size and in time, and
// each key in the sessions it may hold.
func TestSecurityLimits(t *testing.T) {
	_, bases := secCaddy(t,
		// 0: small messages, quick body timeout.
		secSite{block: "api_key k-one\n\t\tmax_message_size 1KiB\n\t\tbody_read_timeout 1s"},
		// 1, 2: two sessions per key, in each isolation mode.
		secSite{block: "api_key k-one k-two\n\t\tmax_sessions_per_key 2"},
		secSite{block: "api_key k-one k-two\n\t\tmax_sessions_per_key 2\n\t\tpool {\n\t\t\tisolation shared\n\t\t}"},
	)
	big := strings.Replace(secInit, `"capabilities":{}`, `"capabilities":{},"padding":"`+strings.Repeat("x", 2048)+`"`, 1)

	t.Run("body over max_message_size: 413", func(t *testing.T) {
		resp, body := secDo(t, http.MethodPost, bases[0]+"/mcp", big, "Authorization", "Bearer k-one")
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d, want 413: %s", resp.StatusCode, body)
		}
		if _, msg := secRPCError(t, body); !strings.Contains(msg, "1024") {
			t.Errorf("413 message %q does not name the limit", msg)
		}
	})
	t.Run("oversized body without key: 401, not read", func(t *testing.T) {
		resp, body := secDo(t, http.MethodPost, bases[0]+"/mcp", big)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401: %s", resp.StatusCode, body)
		}
	})
	t.Run("slow body: 408 after body_read_timeout", func(t *testing.T) {
		addr := strings.TrimPrefix(bases[0], "http://")
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		fmt.Fprintf(conn, "POST /mcp HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nAuthorization: Bearer k-one\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"", addr)
		// Then nothing more: a slowloris client.
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		elapsed := time.Since(start)
		var netErr net.Error
		switch {
		case errors.As(err, &netErr) && netErr.Timeout():
			t.Fatalf("no answer to a stalled body within %v", elapsed)
		case err != nil:
			t.Logf("the connection closed without an answer after %v: %v", elapsed, err)
		default:
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestTimeout {
				t.Errorf("status %d after %v, want 408: %s", resp.StatusCode, elapsed, body)
			}
		}
		if elapsed < 900*time.Millisecond {
			t.Errorf("answered after %v, before body_read_timeout 1s", elapsed)
		}
		if elapsed > 5*time.Second {
			t.Errorf("answered after %v with body_read_timeout 1s", elapsed)
		}
	})

	for i, isolation := range []string{"session", "shared"} {
		t.Run("per key/isolation="+isolation, func(t *testing.T) { secSessionsPerKey(t, bases[1+i]) })
	}
}

// secSessionsPerKey runs steps in order against a site with
// max_sessions_per_key 2.
func secSessionsPerKey(parent *testing.T, base string) {
	sessions := map[string]string{}
	steps := []struct {
		name  string
		key   string
		open  string // the name to give the session opened
		close string // the session to DELETE instead of opening one
		sse   bool   // open a legacy SSE session instead
		want  int
	}{
		{name: "first session of k-one", key: "k-one", open: "a1", want: 200},
		{name: "second session of k-one", key: "k-one", open: "a2", want: 200},
		{name: "third session of k-one: 429", key: "k-one", want: 429},
		{name: "legacy SSE session of k-one at the cap: 429", key: "k-one", sse: true, want: 429},
		{name: "k-two still gets its sessions", key: "k-two", open: "b1", want: 200},
		{name: "second session of k-two", key: "k-two", open: "b2", want: 200},
		{name: "third session of k-two: 429", key: "k-two", want: 429},
		{name: "k-one ends a session", key: "k-one", close: "a1", want: 200},
		{name: "then k-one may open one again", key: "k-one", open: "a3", want: 200},
		{name: "but only one: 429 again", key: "k-one", want: 429},
	}
	for _, st := range steps {
		parent.Run(st.name, func(t *testing.T) {
			auth := []string{"Authorization", "Bearer " + st.key}
			var resp *http.Response
			var body []byte
			switch {
			case st.close != "":
				resp, body = secDo(t, http.MethodDelete, base+"/mcp", "", append([]string{"Mcp-Session-Id", sessions[st.close]}, auth...)...)
			case st.sse:
				resp, body = secStreamStatus(t, base+"/sse", auth...)
			default:
				resp, body = secDo(t, http.MethodPost, base+"/mcp", secInit, auth...)
			}
			if sid := resp.Header.Get("Mcp-Session-Id"); sid != "" && st.open != "" {
				sessions[st.open] = sid
				parent.Cleanup(func() { secDelete(base, sid, auth...) })
			}
			if resp.StatusCode != st.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, st.want, body)
			}
			if st.want == http.StatusTooManyRequests {
				if resp.Header.Get("Retry-After") == "" {
					t.Error("429 without Retry-After")
				}
				if code, _ := secRPCError(t, body); code == 0 {
					t.Error("429 without a JSON-RPC error code")
				}
			}
		})
	}
}

// TestSecurityNoCredentialPassthrough: whatever credentials a client sends
// (Authorization, X-API-Key, a cookie, the api_key query parameter), on any
// transport, none reaches the child: not in its environment, not in the
// bytes it reads. It also checks what Caddy's access log shows of each.
func TestSecurityNoCredentialPassthrough(t *testing.T) {
	// Three valid keys of one site, one per way of presenting a key, so
	// that what leaks shows where it came from.
	const (
		bearerKey = "k-bearer-4c1e8a"
		headerKey = "k-header-7d20b3"
		queryKey  = "k-query-e91f54"
		envKey    = "k-env-93b7d2"
		cookieVal = "cookie-secret-70f6e1"
	)
	t.Setenv("MCPBRIDGE_TEST_PASSTHROUGH_KEY", envKey)
	envchild := mcptest.Build(t, "github.com/mcpbridge/caddy-mcp-bridge/caddymodule/testdata/envchild")
	c, bases := secCaddy(t,
		secSite{command: envchild, block: "api_key " + bearerKey + " " + headerKey + " " + queryKey + "\n\t\tapi_key_query", site: "log"},
		secSite{command: envchild, block: "api_key {env.MCPBRIDGE_TEST_PASSTHROUGH_KEY}\n\t\tapi_key_query"},
		secSite{command: envchild, block: "api_key " + bearerKey + " " + headerKey + " " + queryKey + "\n\t\tapi_key_query\n\t\tpool {\n\t\t\tisolation shared\n\t\t}"},
	)
	const envRequest = `{"jsonrpc":"2.0","id":7,"method":"env","params":{}}`

	// Each transport presents every credential of cr on every request, and
	// returns the child's report: its answer to "env".
	transports := []struct {
		name   string
		report func(t *testing.T, base string, cr secCreds) []byte
	}{
		{"streamable", func(t *testing.T, base string, cr secCreds) []byte {
			u := base + "/mcp?" + cr.query()
			resp, body := secDo(t, http.MethodPost, u, secInit, cr.header()...)
			sid := resp.Header.Get("Mcp-Session-Id")
			if resp.StatusCode != http.StatusOK || sid == "" {
				t.Fatalf("initialize: %d %s", resp.StatusCode, body)
			}
			defer secDelete(base, sid, cr.header()...)
			session := append([]string{"Mcp-Session-Id", sid}, cr.header()...)
			if resp, body := secDo(t, http.MethodPost, u, secInitialized, session...); resp.StatusCode != http.StatusAccepted {
				t.Fatalf("initialized: %d %s", resp.StatusCode, body)
			}
			resp, body = secDo(t, http.MethodPost, u, envRequest, session...)
			data := secSSEData(body)
			if resp.StatusCode != http.StatusOK || len(data) == 0 {
				t.Fatalf("env: %d %s", resp.StatusCode, body)
			}
			return data[len(data)-1]
		}},
		{"legacy SSE", func(t *testing.T, base string, cr secCreds) []byte {
			endpoint, events := secSSEEndpoint(t, base, "/sse?"+cr.query(), cr.header()...)
			for _, msg := range []string{secInit, secInitialized, envRequest} {
				resp, body := secDo(t, http.MethodPost, base+endpoint+"&"+cr.query(), msg, cr.header()...)
				if resp.StatusCode != http.StatusAccepted {
					t.Fatalf("POST %s: %d %s", endpoint, resp.StatusCode, body)
				}
			}
			for {
				if ev := events.MustNext(t); strings.Contains(ev.Data, `"id":7`) {
					return []byte(ev.Data)
				}
			}
		}},
		{"WebSocket", func(t *testing.T, base string, cr secCreds) []byte {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			h := http.Header{}
			kv := cr.header()
			for i := 0; i < len(kv); i += 2 {
				h.Set(kv[i], kv[i+1])
			}
			conn, _, err := websocket.Dial(ctx, secWSURL(base)+"?"+cr.query(), &websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{"mcp"}})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.CloseNow()
			for _, msg := range []string{secInit, secInitialized, envRequest} {
				if err := conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
					t.Fatal(err)
				}
			}
			for {
				_, data, err := conn.Read(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Contains(data, []byte(`"id":7`)) {
					conn.Close(websocket.StatusNormalClosure, "")
					return data
				}
			}
		}},
	}
	keys := []struct {
		name  string
		site  int
		creds secCreds
		// bug explains a known leak of the key into the child's environment.
		bug string
	}{
		{name: "inline keys", site: 0, creds: secCreds{bearerKey, headerKey, queryKey, cookieVal}},
		{name: "inline keys, shared child", site: 2, creds: secCreds{bearerKey, headerKey, queryKey, cookieVal}},
		{name: "key from {env.*}", site: 1, creds: secCreds{envKey, envKey, envKey, cookieVal},
			bug: "BUG: the child's environment holds the API key. The child inherits Caddy's whole environment " +
				"(bridge/process.go: cmd.Env = append(os.Environ(), cfg.Env...)), so a key configured as " +
				"api_key {env.VAR}, the documented way, reaches every child"},
	}
	for _, kk := range keys {
		for _, tr := range transports {
			t.Run(kk.name+"/"+tr.name, func(t *testing.T) {
				report := tr.report(t, bases[kk.site], kk.creds)
				var msg struct {
					Result struct {
						Env      []string `json:"env"`
						Received []string `json:"received"`
					} `json:"result"`
				}
				if err := json.Unmarshal(report, &msg); err != nil || len(msg.Result.Env) == 0 {
					t.Fatalf("the child's report: %v %s", err, report)
				}
				// A child of its own reads exactly this session's messages,
				// after the ping that made it a warm spare; a shared one,
				// those of every session so far.
				if len(msg.Result.Received) > 0 && strings.Contains(msg.Result.Received[0], `"mcpbridge-ping-`) {
					msg.Result.Received = msg.Result.Received[1:]
				}
				if kk.site != 2 && (len(msg.Result.Received) != 3 || !strings.Contains(msg.Result.Received[0], `"initialize"`)) {
					t.Errorf("the child received %q, want initialize, initialized and env", msg.Result.Received)
				}
				if n := len(msg.Result.Received); n == 0 || !strings.Contains(msg.Result.Received[n-1], `"env"`) {
					t.Errorf("the child received %q, last the env request", msg.Result.Received)
				}
				for _, secret := range kk.creds.secrets() {
					for _, kv := range msg.Result.Env {
						if strings.Contains(kv, secret) {
							t.Errorf("the child's environment holds a credential: %q. %s", kv, kk.bug)
						}
					}
					for _, m := range msg.Result.Received {
						if strings.Contains(m, secret) {
							t.Errorf("the child read a credential: %q", m)
						}
					}
				}
			})
		}
	}

	// The site with inline keys has an access log; what of each credential
	// does it show?
	logRows := []struct {
		name, secret string
		// leaks: a known leak. documented: the README/handler docs warn of
		// it, so it is only logged.
		leaks, documented string
	}{
		{name: "Authorization", secret: bearerKey},
		{name: "Cookie", secret: cookieVal},
		{name: "X-API-Key", secret: headerKey,
			documented: "README Security: Caddy's access log redacts Authorization but not X-API-Key; prefer Bearer or filter it"},
		{name: "api_key query parameter", secret: queryKey,
			documented: "handler.go APIKeyQuery: \"Keys in URLs end up in logs\""},
	}
	out := c.Output()
	if !strings.Contains(out, `"logger":"http.log.access"`) {
		t.Fatalf("no access log in Caddy's output:\n%s", out)
	}
	for _, row := range logRows {
		t.Run("access log/"+row.name, func(t *testing.T) {
			i := strings.Index(out, row.secret)
			switch {
			case i < 0:
			case row.documented != "":
				t.Logf("the access log shows the %s, as documented (%s)", row.name, row.documented)
			default:
				t.Errorf("the access log shows the %s: …%s…\n%s", row.name, out[max(0, i-200):min(len(out), i+50)], row.leaks)
			}
		})
	}
}

// secCreds are the credentials a client presents at once: a Bearer token,
// an X-API-Key header, the api_key query parameter and a cookie.
type secCreds struct{ bearer, headerKey, queryKey, cookie string }

func (c secCreds) header() []string {
	return []string{"Authorization", "Bearer " + c.bearer, "X-API-Key", c.headerKey, "Cookie", "session=" + c.cookie + "; other=1"}
}

func (c secCreds) query() string { return "api_key=" + url.QueryEscape(c.queryKey) }

// secrets are the distinct secret values of c.
func (c secCreds) secrets() []string {
	s := []string{c.bearer, c.headerKey, c.queryKey, c.cookie}
	slices.Sort(s)
	return slices.Compact(s)
}

// secKeyFileKey returns the current key of a key file.
func secKeyFileKey(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			return strings.Fields(line)[0]
		}
	}
	t.Fatalf("no key in %s:\n%s", path, data)
	return ""
}

var secURLSafeKey = regexp.MustCompile(`^[A-Za-z0-9_-]{43,}$`)

// TestSecurityKeyFile: api_key_file names a file that does not exist yet:
// Caddy writes a strong key to it, readable only by its owner, logs where
// it is but not what it is, and requires it.
func TestSecurityKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "secrets", "mcp")
	path := filepath.Join(dir, "api.key")
	c, base, _ := bridgeCaddy(t, "api_key_file "+path, "")
	key := secKeyFileKey(t, path)

	checks := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"file mode 0600", func(t *testing.T) {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if m := fi.Mode(); m != 0o600 {
				t.Errorf("key file mode %v, want -rw-------", m)
			}
		}},
		{"directories mode 0700", func(t *testing.T) {
			for _, d := range []string{dir, filepath.Dir(dir)} {
				fi, err := os.Stat(d)
				if err != nil {
					t.Fatal(err)
				}
				if m := fi.Mode().Perm(); m != 0o700 {
					t.Errorf("%s mode %v, want drwx------", d, m)
				}
			}
		}},
		{"a key of 256 bits, URL-safe", func(t *testing.T) {
			if !secURLSafeKey.MatchString(key) {
				t.Errorf("key %q is not >= 43 URL-safe characters", key)
			}
		}},
		{"no temporary file left", func(t *testing.T) {
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Errorf("%s holds %d entries, want only api.key", dir, len(entries))
			}
		}},
		{"the key works", func(t *testing.T) {
			resp, body := secDo(t, http.MethodPost, base+"/mcp", secInit, "Authorization", "Bearer "+key)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			secDelete(base, resp.Header.Get("Mcp-Session-Id"), "Authorization", "Bearer "+key)
		}},
		{"no key: 401", func(t *testing.T) {
			if resp, body := secDo(t, http.MethodPost, base+"/mcp", secInit); resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
		}},
		{"a wrong key: 401", func(t *testing.T) {
			if resp, body := secDo(t, http.MethodPost, base+"/mcp", secInit, "X-API-Key", key[:len(key)-1]); resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
		}},
		{"the log names the file, never the key", func(t *testing.T) {
			out := c.Output()
			if !strings.Contains(out, path) {
				t.Errorf("Caddy's log does not name %s:\n%s", path, out)
			}
			if strings.Contains(out, key) {
				t.Errorf("Caddy's log holds the key:\n%s", out)
			}
		}},
	}
	for _, tt := range checks {
		t.Run(tt.name, tt.check)
	}
}

// TestSecurityKeyRotation: `caddy mcp-bridge key rotate` and a reload
// switch keys without ending sessions: an open session carries on with the
// new key. Without --overlap the old key stops working; with it, it keeps
// working.
func TestSecurityKeyRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "api.key")
	c, base, _ := bridgeCaddy(t, "api_key_file "+path, "")
	cfgPath := filepath.Join(c.Dir, "Caddyfile")
	caddyfile, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	status := func(t *testing.T, key string) int {
		resp, _ := secDo(t, http.MethodPost, base+"/mcp", secInit, "Authorization", "Bearer "+key)
		if sid := resp.Header.Get("Mcp-Session-Id"); sid != "" {
			secDelete(base, sid, "Authorization", "Bearer "+key)
		}
		return resp.StatusCode
	}
	// rotate runs `caddy mcp-bridge key rotate` and returns the new key and
	// what the command printed.
	rotate := func(t *testing.T, args ...string) (string, string) {
		t.Helper()
		out, err := c.Run(append([]string{"mcp-bridge", "key", "rotate", "--file", path}, args...)...)
		if err != nil {
			t.Fatalf("key rotate: %v\n%s", err, out)
		}
		key := secKeyFileKey(t, path)
		if !strings.Contains(out, key) || !strings.Contains(out, "caddy reload") {
			t.Errorf("key rotate printed %q", out)
		}
		return key, out
	}
	forceReload := func(t *testing.T) {
		t.Helper()
		if out, err := c.Run("reload", "--config", cfgPath, "--adapter", "caddyfile", "--address", c.AdminAddr, "--force"); err != nil {
			t.Fatalf("caddy reload --force: %v\n%s", err, out)
		}
	}
	// reload reloads the unchanged Caddyfile the way the rotate command's
	// output says to: `caddy reload`, or `caddy reload --force` if that is
	// what it prints. If newKey is still refused then, it reports the bug
	// and forces the reload, so that the rest still runs.
	reload := func(t *testing.T, newKey, printed string) {
		t.Helper()
		if strings.Contains(printed, "--force") {
			forceReload(t)
		} else {
			c.Reload(t, string(caddyfile))
		}
		got := status(t, newKey)
		if got == http.StatusOK {
			return
		}
		t.Errorf("BUG: after `caddy mcp-bridge key rotate` and the reload its output asks for, the new key gets %d, want 200: "+
			"`caddy reload` with an unchanged config is a no-op (Caddy logs \"config is unchanged\"), so the handler never "+
			"re-reads api_key_file; caddymodule/command.go tells operators to run `caddy reload`, which is not enough", got)
		forceReload(t)
		if got := status(t, newKey); got != http.StatusOK {
			t.Fatalf("even after caddy reload --force, the new key gets %d", got)
		}
	}

	key1 := secKeyFileKey(t, path)
	auth := mcptest.Bearer(key1)
	client := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: base + "/mcp", HTTPClient: auth.Client()}, "2025-11-25")
	defer client.Close()
	id := client.ID()
	client.CallText(t, "test_simple_text", nil)

	var key2, key3 string
	t.Run("rotate without overlap", func(t *testing.T) {
		var printed string
		key2, printed = rotate(t)
		if key2 == key1 || !secURLSafeKey.MatchString(key2) {
			t.Fatalf("rotated key %q (old %q)", key2, key1)
		}
		auth.Set("Authorization", "Bearer "+key2)
		reload(t, key2, printed)
		if got := client.CallText(t, "test_simple_text", nil); got == "" {
			t.Error("empty result")
		}
		if client.ID() != id {
			t.Errorf("session %s became %s", id, client.ID())
		}
		if got := status(t, key1); got != http.StatusUnauthorized {
			t.Errorf("the old key gets %d after the reload, want 401", got)
		}
		resp, body := secDo(t, http.MethodPost, base+"/mcp", secToolsList, "Mcp-Session-Id", id, "Authorization", "Bearer "+key1)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("the open session with the old key: %d %s, want 401", resp.StatusCode, body)
		}
	})
	t.Run("rotate with --overlap 1h", func(t *testing.T) {
		var printed string
		key3, printed = rotate(t, "--overlap", "1h")
		if key3 == key2 {
			t.Fatal("rotation kept the key")
		}
		reload(t, key3, printed)
		if got := status(t, key2); got != http.StatusOK {
			t.Errorf("the previous key gets %d within its overlap, want 200", got)
		}
		if got := status(t, key1); got != http.StatusUnauthorized {
			t.Errorf("the key of two rotations ago gets %d, want 401", got)
		}
		// The session goes on with the old key, then with the new one.
		if got := client.CallText(t, "test_simple_text", nil); got == "" {
			t.Error("empty result")
		}
		auth.Set("X-API-Key", key3)
		if got := client.CallText(t, "test_simple_text", nil); got == "" {
			t.Error("empty result")
		}
		if client.ID() != id {
			t.Errorf("session %s became %s", id, client.ID())
		}
	})
	t.Run("the log never holds a key", func(t *testing.T) {
		out := c.Output()
		for _, k := range []string{key1, key2, key3} {
			if k != "" && strings.Contains(out, k) {
				t.Errorf("Caddy's log holds key %q", k)
			}
		}
	})
}

// TestSecurityChildEnvironment: a child inherits only the safe list of
// Caddy's environment (here: not a cloud token) unless env_inherit names
// more, and never a variable that holds one of the bridge's API keys,
// however the Caddyfile read it ({$X} is replaced before the bridge sees
// the config), not even with env_inherit *.
func TestSecurityChildEnvironment(t *testing.T) {
	const key = "k-environment-5e0c7a"
	t.Setenv("MCPBRIDGE_TEST_SEC_KEY", key)
	t.Setenv("MCPBRIDGE_TEST_CLOUD_TOKEN", "cloud-secret-31d9")
	envchild := mcptest.Build(t, "github.com/mcpbridge/caddy-mcp-bridge/caddymodule/testdata/envchild")
	_, bases := secCaddy(t,
		secSite{command: envchild, block: "api_key {$MCPBRIDGE_TEST_SEC_KEY}"},
		secSite{command: envchild, block: "api_key {$MCPBRIDGE_TEST_SEC_KEY}\n\t\tenv_inherit *"},
		secSite{command: envchild, block: "api_key {env.MCPBRIDGE_TEST_SEC_KEY}\n\t\tenv_inherit MCPBRIDGE_TEST_CLOUD_TOKEN"},
	)
	for i, want := range []struct{ cloud bool }{{false}, {true}, {true}} {
		auth := []string{"Authorization", "Bearer " + key}
		resp, body := secDo(t, http.MethodPost, bases[i]+"/mcp", secInit, auth...)
		sid := resp.Header.Get("Mcp-Session-Id")
		if resp.StatusCode != http.StatusOK || sid == "" {
			t.Fatalf("site %d: initialize: %d %s", i, resp.StatusCode, body)
		}
		session := append([]string{"Mcp-Session-Id", sid}, auth...)
		secDo(t, http.MethodPost, bases[i]+"/mcp", secInitialized, session...)
		resp, body = secDo(t, http.MethodPost, bases[i]+"/mcp", `{"jsonrpc":"2.0","id":7,"method":"env","params":{}}`, session...)
		data := secSSEData(body)
		if resp.StatusCode != http.StatusOK || len(data) == 0 {
			t.Fatalf("site %d: env: %d %s", i, resp.StatusCode, body)
		}
		var report struct {
			Result struct {
				Env []string `json:"env"`
			} `json:"result"`
		}
		if err := json.Unmarshal(data[len(data)-1], &report); err != nil {
			t.Fatal(err)
		}
		env := strings.Join(report.Result.Env, "\n")
		if strings.Contains(env, key) {
			t.Errorf("site %d: the child's environment holds the API key", i)
		}
		if got := strings.Contains(env, "MCPBRIDGE_TEST_CLOUD_TOKEN=cloud-secret-31d9"); got != want.cloud {
			t.Errorf("site %d: the child inherits the cloud token: %v, want %v", i, got, want.cloud)
		}
		if !strings.Contains(env, "PATH="+os.Getenv("PATH")) {
			t.Errorf("site %d: the child does not inherit PATH", i)
		}
	}
}

// TestSecurityHostCheck: DNS rebinding. A page of evil.example whose name
// resolves to this machine sends "Host: evil.example" (and, for a GET, no
// Origin): a site addressed as ":port" refuses it with 403, the health
// report and a legacy SSE stream included, and starts no child for it;
// IP addresses, localhost and allowed_hosts names pass, and so does a name
// the server has a site for.
func TestSecurityHostCheck(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	c := opStart(t, []string{exe}, opBridge(exe, "pool {\n\t\t\tmin_idle 0\n\t\t}"), opBridge(exe, "allowed_hosts *.trusted.example"))
	get := func(base, path, host string) int {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		req.Host = host
		req.Header.Set("Accept", "text/event-stream")
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		resp, err := opRaw.Do(req.WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close() // a stream that opened ends here
		return resp.StatusCode
	}
	port := strings.TrimPrefix(c.base(0), "http://127.0.0.1")
	for _, tc := range []struct {
		site       int
		host, path string
		want       int
	}{
		{0, "evil.example", "/health", http.StatusForbidden},
		{0, "evil.example" + port, "/sse", http.StatusForbidden},
		{0, "evil.example", "/mcp", http.StatusForbidden},
		{0, "127.0.0.1" + port, "/health", http.StatusOK},
		{0, "localhost" + port, "/health", http.StatusOK},
		{0, "[::1]" + port, "/health", http.StatusOK},
		{1, "mcp.trusted.example", "/health", http.StatusOK},
		{1, "evil.example", "/health", http.StatusForbidden},
	} {
		if got := get(c.base(tc.site), tc.path, tc.host); got != tc.want {
			t.Errorf("GET %s on site %d with Host %s: %d, want %d", tc.path, tc.site, tc.host, got, tc.want)
		}
	}
	if n := len(opPoolOf(t, c, exe).Sessions); n != 0 {
		t.Errorf("%d sessions opened for a host the site does not serve", n)
	}

	// A site addressed by name serves that name without allowed_hosts.
	named := mcptest.FreePort(t)
	c.Reload(t, c.caddyfile(opBridge(exe))+fmt.Sprintf("\nhttp://mcp.named.example:%d {\n\tbind 127.0.0.1\n\t%s\n}\n", named, opBridge(exe)))
	base := fmt.Sprintf("http://127.0.0.1:%d", named)
	mcptest.WaitFor(t, 10*time.Second, "the named site", func() bool {
		_, err := opRaw.Get(base)
		return err == nil
	})
	if got := get(base, "/health", "mcp.named.example"); got != http.StatusOK {
		t.Errorf("GET /health of a site addressed by name, with its name: %d, want 200", got)
	}
}

// TestSecurityLegacyResumption: a closed legacy SSE session is resumed by
// its Last-Event-ID alone, so the id carries 128 random bits, and works
// only with the key that opened the session: a guess of the old 32-bit
// form, or the right id with another key, gets 404.
func TestSecurityLegacyResumption(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	c := opStart(t, []string{exe}, opBridge(exe, "api_key k-one-8c1d k-two-52af"))
	base := c.base(0)
	open := func(key, lastID string) (*http.Response, context.CancelFunc) {
		ctx, cancel := context.WithCancel(t.Context())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/sse", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		return resp, cancel
	}
	resp, cancel := open("k-one-8c1d", "")
	events := mcptest.NewSSEReader(resp.Body)
	endpoint := events.MustNext(t).Data
	if r, body := secDo(t, http.MethodPost, base+endpoint, secInit, "Authorization", "Bearer k-one-8c1d"); r.StatusCode != http.StatusAccepted {
		t.Fatalf("initialize: %d %s", r.StatusCode, body)
	}
	lastID := events.MustNext(t).ID
	cancel() // the stream breaks; the session waits resume_grace
	tag, _, _ := strings.Cut(lastID, "_")
	if len(tag) < 32 {
		t.Errorf("event id %q: its session tag has %d hex digits, want 32 (128 bits)", lastID, len(tag))
	}
	for _, tc := range []struct {
		name, key, id string
		want          int
	}{
		{"a guess of the old 32-bit form", "k-one-8c1d", tag[:8] + "_1_0", http.StatusNotFound},
		{"the right id with another key", "k-two-52af", lastID, http.StatusNotFound},
		{"the right id with the session's key", "k-one-8c1d", lastID, http.StatusOK},
	} {
		resp, cancel := open(tc.key, tc.id)
		resp.Body.Close()
		cancel()
		if resp.StatusCode != tc.want {
			t.Errorf("resuming with %s: %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}
}

// TestSecurityRequestIDs: a client's request ids reach it back byte for
// byte, even those a child cannot echo (the go-sdk's everything-server
// turns a huge integer or a lone surrogate into something else, and the
// client would wait forever); ids that are not JSON-RPC request ids get
// -32600. In either isolation.
func TestSecurityRequestIDs(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	for _, isolation := range []string{"session", "shared"} {
		t.Run(isolation, func(t *testing.T) {
			c := opStart(t, []string{exe}, opBridge(exe, "pool {\n\t\t\tisolation "+isolation+"\n\t\t}"))
			endpoint := c.base(0) + "/mcp"
			sid := rlRawSession(t, endpoint)
			for _, id := range []string{`123456789012345678901234567890`, `"\ud800"`, `1e400`, `"mcpbridge-id-1"`, `7`, `"plain"`} {
				resp, body := opPost(t, endpoint, sid, "", `{"jsonrpc":"2.0","id":`+id+`,"method":"tools/list"}`)
				if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"id":`+id+`,"result"`) {
					t.Errorf("tools/list with id %s: %d %.300s; want its answer with the id byte for byte", id, resp.StatusCode, body)
				}
			}
			for _, id := range []string{`1.5`, `null`} {
				resp, body := opPost(t, endpoint, sid, "", `{"jsonrpc":"2.0","id":`+id+`,"method":"tools/list"}`)
				if resp.StatusCode != http.StatusBadRequest || opErrorCode(body) != -32600 {
					t.Errorf("tools/list with id %s: %d %s; want 400 with -32600", id, resp.StatusCode, body)
				}
			}
		})
	}
}

// TestSecurityExposure: what a site tells strangers, and what Caddy's log
// tells the operator. On an address that is not loopback, a request
// without a key sees only the health report's status; one with the key,
// or one from this machine, sees the details; health_details off hides
// them from everyone. A site without a key that listens beyond loopback,
// and a key file others can read, are errors in the log at start.
func TestSecurityExposure(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	ip := nonLoopbackIP(t)
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte("k-exposure-31aa\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	admin := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	keyed, open, quiet := mcptest.FreePort(t), mcptest.FreePort(t), mcptest.FreePort(t)
	cfg := fmt.Sprintf("{\n\tadmin %s\n}\n", admin) +
		fmt.Sprintf("http://:%d {\n\tbind %s 127.0.0.1\n\t%s\n}\n", keyed, ip, opBridge(exe, "api_key_file "+keyFile)) +
		fmt.Sprintf("http://:%d {\n\tbind %s\n\t%s\n}\n", open, ip, opBridge(exe)) +
		fmt.Sprintf("http://:%d {\n\tbind 127.0.0.1\n\t%s\n}\n", quiet, opBridge(exe, "health_details off"))
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) }) // after Caddy stops
	c := mcptest.StartCaddy(t, t.TempDir(), cfg, admin, fmt.Sprintf("%s:%d", ip, keyed), fmt.Sprintf("%s:%d", ip, open), fmt.Sprintf("127.0.0.1:%d", quiet))

	health := func(base, key string) map[string]any {
		req, _ := http.NewRequest(http.MethodGet, base+"/health", nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := opRaw.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var h map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	for _, tc := range []struct {
		name, base, key string
		details         bool
	}{
		{"a stranger, no key", fmt.Sprintf("http://%s:%d", ip, keyed), "", false},
		{"a stranger with the key", fmt.Sprintf("http://%s:%d", ip, keyed), "k-exposure-31aa", true},
		{"this machine, no key", fmt.Sprintf("http://127.0.0.1:%d", keyed), "", true},
		{"a stranger on a site without keys", fmt.Sprintf("http://%s:%d", ip, open), "", false},
		{"this machine, health_details off", fmt.Sprintf("http://127.0.0.1:%d", quiet), "", false},
	} {
		h := health(tc.base, tc.key)
		_, hasSessions := h["sessions"]
		if hasSessions != tc.details || h["status"] != "ok" {
			t.Errorf("%s: health report %v, want details %v", tc.name, h, tc.details)
		}
	}
	mcptest.WaitFor(t, 10*time.Second, "the warnings in Caddy's log", func() bool {
		out := c.Output()
		return strings.Contains(out, "no API key and listens beyond loopback") && strings.Contains(out, "can be read by other users")
	})
	if n := strings.Count(c.Output(), "no API key and listens beyond loopback"); n != 1 {
		t.Errorf("the warning about an open site came %d times, want once (for the one site)", n)
	}
}

// nonLoopbackIP is an IPv4 address of this machine that is not loopback.
func nonLoopbackIP(t *testing.T) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	t.Fatal("this machine has no IPv4 address but loopback: the test needs one")
	return ""
}

// TestSecuritySitesKeepTheirSessions: two sites with the same child
// configuration (and so one pool), on two ports as an HTTPS site and its
// plain HTTP twin would be: a session opened on one is unknown on the
// other (404), with the same key, and each site counts its own sessions
// for max_sessions_per_key.
func TestSecuritySitesKeepTheirSessions(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	site := opBridge(exe, "api_key k-sites-77b0", "max_sessions_per_key 1")
	c := opStart(t, []string{exe}, site, site)
	a, b := c.base(0)+"/mcp", c.base(1)+"/mcp"
	auth := []string{"Authorization", "Bearer k-sites-77b0"}
	resp, body := secDo(t, http.MethodPost, a, secInit, auth...)
	sid := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || sid == "" {
		t.Fatalf("initialize on site a: %d %s", resp.StatusCode, body)
	}
	defer secDelete(c.base(0), sid, auth...)
	if r, _ := opAdmin(t, c); len(r.Pools) != 1 {
		t.Fatalf("%d pools for two sites with one child configuration, want 1 (shared, as a reload needs)", len(r.Pools))
	}
	session := append([]string{"Mcp-Session-Id", sid, "MCP-Protocol-Version", opVersion}, auth...)
	if resp, body := secDo(t, http.MethodPost, b, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, session...); resp.StatusCode != http.StatusNotFound {
		t.Errorf("site a's session on site b: %d %.200s, want 404", resp.StatusCode, body)
	}
	resp, body = secDo(t, http.MethodPost, b, secInit, auth...)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a first session on site b, with one on site a: %d %.200s; want 200 (each site counts its own)", resp.StatusCode, body)
	} else {
		defer secDelete(c.base(1), resp.Header.Get("Mcp-Session-Id"), auth...)
	}
	if resp, body := secDo(t, http.MethodPost, a, secInit, auth...); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("a second session on site a: %d %.200s, want 429", resp.StatusCode, body)
	}
}

// TestSecuritySharedChildPerKey: in shared isolation, sessions of two keys
// never share a child (a child's log messages, list changes and state
// would cross between them), while sessions of one key do; with
// share_across_keys they all do.
func TestSecuritySharedChildPerKey(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	c := opStart(t, []string{exe},
		opBridge(exe, "api_key k-shared-a1 k-shared-b2", "pool {\n\t\t\tisolation shared\n\t\t}"),
		opBridge(exe, "api_key k-shared-a1 k-shared-b2", "env SITE 2", "pool {\n\t\t\tisolation shared\n\t\t\tshare_across_keys\n\t\t}"))
	for site, want := range []string{"a key's own", "one for all"} {
		endpoint := c.base(site) + "/mcp"
		a1, a2, b := opConnect(t, endpoint, "k-shared-a1"), opConnect(t, endpoint, "k-shared-a1"), opConnect(t, endpoint, "k-shared-b2")
		pa1, pa2, pb := opSessionPID(t, c, a1.ID()), opSessionPID(t, c, a2.ID()), opSessionPID(t, c, b.ID())
		if pa1 != pa2 {
			t.Errorf("site %d: two sessions of one key on children %d and %d, want one shared child", site, pa1, pa2)
		}
		if shared := pa1 == pb; shared != (site == 1) {
			t.Errorf("site %d: sessions of two keys on children %d and %d, want %s", site, pa1, pb, want)
		}
		b.CallText(t, "test_simple_text", nil)
	}
}

// TestSecurityRevocation: once a key is no longer accepted, what was
// opened with it ends within about a second: a WebSocket closes with 1008
// and says why, a legacy SSE stream ends, and a Streamable HTTP session
// gets 404; sessions of other keys go on. Both ways a key goes: a reload
// that removes it, and the end of its overlap after a key file rotation.
func TestSecurityRevocation(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	keyFile := filepath.Join(t.TempDir(), "keys")
	until := time.Now().Add(6 * time.Second).UTC().Format(time.RFC3339)
	if err := os.WriteFile(keyFile, []byte("k-file-new-4d21\nk-file-old-0b93 until="+until+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inline := opBridge(exe, "api_key k-stay-6f10 k-gone-93ce")
	fromFile := opBridge(exe, "api_key_file "+keyFile, "env SITE file")
	c := opStart(t, []string{exe}, inline, fromFile)

	type opened struct {
		ws       *websocket.Conn
		sse      *mcptest.SSEReader
		endpoint string
		sid      string
	}
	open := func(base, key string) opened {
		auth := []string{"Authorization", "Bearer " + key}
		ctx, cancel := context.WithCancel(t.Context())
		t.Cleanup(cancel)
		ws, _, err := websocket.Dial(ctx, secWSURL(base), &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}, Subprotocols: []string{"mcp"}})
		if err != nil {
			t.Fatalf("WebSocket with %s: %v", key, err)
		}
		if err := ws.Write(ctx, websocket.MessageText, []byte(secInit)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ws.Read(ctx); err != nil {
			t.Fatal(err)
		}
		endpoint, sse := secSSEEndpoint(t, base, "/sse", auth...)
		resp, body := secDo(t, http.MethodPost, base+"/mcp", secInit, auth...)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("initialize with %s: %d %s", key, resp.StatusCode, body)
		}
		return opened{ws: ws, sse: sse, endpoint: endpoint, sid: resp.Header.Get("Mcp-Session-Id")}
	}
	// ended checks that all of o ended, and how.
	ended := func(what, base, key string, o opened) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		for {
			_, _, err := o.ws.Read(ctx)
			if err == nil {
				continue
			}
			if status := websocket.CloseStatus(err); status != websocket.StatusPolicyViolation {
				t.Errorf("%s: the WebSocket ended with %v, want 1008 saying the key was revoked", what, err)
			} else if !strings.Contains(err.Error(), "revoked") {
				t.Errorf("%s: close reason %v does not say the key was revoked", what, err)
			}
			break
		}
		for {
			if _, err := o.sse.Next(); err != nil {
				break // the stream ended
			}
		}
		session := []string{"Mcp-Session-Id", o.sid, "MCP-Protocol-Version", opVersion, "Authorization", "Bearer " + key}
		if resp, body := secDo(t, http.MethodPost, base+"/mcp", `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, session...); resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: the Streamable HTTP session answered %d %.200s, want it gone", what, resp.StatusCode, body)
		}
	}
	alive := func(what, base, key string, o opened) {
		session := []string{"Mcp-Session-Id", o.sid, "MCP-Protocol-Version", opVersion, "Authorization", "Bearer " + key}
		if resp, body := secDo(t, http.MethodPost, base+"/mcp", secInitialized, session...); resp.StatusCode != http.StatusAccepted {
			t.Errorf("%s: a session of a key still accepted answered %d %.200s", what, resp.StatusCode, body)
		}
	}

	fileOld, fileNew := open(c.base(1), "k-file-old-0b93"), open(c.base(1), "k-file-new-4d21")
	stay, gone := open(c.base(0), "k-stay-6f10"), open(c.base(0), "k-gone-93ce")

	c.Reload(t, c.caddyfile(opBridge(exe, "api_key k-stay-6f10"), fromFile))
	ended("a key removed by a reload", c.base(0), "k-gone-93ce", gone)
	alive("after a reload that removed another key", c.base(0), "k-stay-6f10", stay)

	ended("a key whose overlap ended", c.base(1), "k-file-old-0b93", fileOld) // within 6s and a bit
	alive("after another key's overlap ended", c.base(1), "k-file-new-4d21", fileNew)
}

// TestSecurityWebSocketKeyInSubprotocol: a WebSocket client that cannot
// set headers (a browser, the TypeScript SDK's transport) offers its key as
// a subprotocol, base64url.bearer.authorization.k8s.io.<key in base64url>,
// as Kubernetes clients do; the bridge accepts it, never selects it (the
// connection speaks "mcp"), and refuses a wrong one.
func TestSecurityWebSocketKeyInSubprotocol(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	c := opStart(t, []string{exe}, opBridge(exe, "api_key k-ws-sub-41d7"))
	dial := func(key string) (*websocket.Conn, *http.Response, error) {
		protocols := []string{"mcp"}
		if key != "" {
			protocols = append(protocols, "base64url.bearer.authorization.k8s.io."+base64.RawURLEncoding.EncodeToString([]byte(key)))
		}
		return websocket.Dial(t.Context(), secWSURL(c.base(0)), &websocket.DialOptions{Subprotocols: protocols})
	}
	conn, _, err := dial("k-ws-sub-41d7")
	if err != nil {
		t.Fatalf("the key as a subprotocol: %v", err)
	}
	defer conn.CloseNow()
	if p := conn.Subprotocol(); p != "mcp" {
		t.Errorf("negotiated subprotocol %q, want mcp", p)
	}
	if err := conn.Write(t.Context(), websocket.MessageText, []byte(secInit)); err != nil {
		t.Fatal(err)
	}
	if _, data, err := conn.Read(t.Context()); err != nil || !strings.Contains(string(data), `"result"`) {
		t.Errorf("initialize over a WebSocket keyed by subprotocol: %v %s", err, data)
	}
	for _, key := range []string{"", "k-wrong"} {
		if _, resp, err := dial(key); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("a WebSocket with key %q: %v, want 401", key, err)
		}
	}
}
