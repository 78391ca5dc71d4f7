package bridge

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// These tests speak raw HTTP to the Streamable HTTP endpoint, since what
// they check is the status codes, headers and SSE framing themselves.

// startBridgeWith serves a bridge in front of argv with the given configs,
// and checks at cleanup that no child is left.
func startBridgeWith(t *testing.T, argv []string, bcfg BackendConfig, scfg ServerConfig) (*httptest.Server, *Backend) {
	t.Helper()
	bcfg.Process.Argv = argv
	backend := NewBackend(bcfg, mcptest.Logger(t))
	backend.Start()
	srv := httptest.NewServer(NewServer(backend, scfg, mcptest.Logger(t)))
	t.Cleanup(func() {
		srv.CloseClientConnections() // ends the streams the test left open
		srv.Close()
		backend.Close()
		mcptest.WaitNoProcesses(t, argv[0], 5*time.Second)
	})
	return srv, backend
}

// mcpRequest sends one raw request to the endpoint. POSTs get the headers a
// conforming client sends unless header overrides them; an empty value
// removes a header. The response body is closed at cleanup.
func mcpRequest(t *testing.T, url, method, session string, header map[string]string, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url+"/mcp", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	switch method {
	case http.MethodPost:
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
	case http.MethodGet:
		req.Header.Set("Accept", "text/event-stream")
	}
	if session != "" {
		req.Header.Set(headerSessionID, session)
	}
	for k, v := range header {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// post sends a JSON-RPC message on a session (none when session is empty)
// with the session's protocol version header.
func post(t *testing.T, url, session, version, body string) *http.Response {
	t.Helper()
	var header map[string]string
	if version != "" {
		header = map[string]string{"MCP-Protocol-Version": version}
	}
	return mcpRequest(t, url, http.MethodPost, session, header, body)
}

// sseEvent is one Server-Sent Event, or a run of comment lines.
type sseEvent struct {
	ID       string
	HasID    bool
	Name     string
	Data     string
	HasData  bool
	Retry    string
	Comments []string
}

// readSSE parses an event stream in the background; the channel closes when
// the stream ends.
func readSSE(body io.Reader) <-chan sseEvent {
	ch := make(chan sseEvent, 100)
	go func() {
		defer close(ch)
		r := bufio.NewReader(body)
		var ev sseEvent
		var data []string
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch {
			case line == "":
				if ev.HasData || ev.HasID || ev.Retry != "" || len(ev.Comments) > 0 {
					ev.Data = strings.Join(data, "\n")
					ch <- ev
				}
				ev, data = sseEvent{}, nil
			case field == "":
				ev.Comments = append(ev.Comments, value)
			case field == "id":
				ev.ID, ev.HasID = value, true
			case field == "event":
				ev.Name = value
			case field == "retry":
				ev.Retry = value
			case field == "data":
				data = append(data, value)
				ev.HasData = true
			}
		}
	}()
	return ch
}

// nextEvent returns the next event that is not a comment.
func nextEvent(t *testing.T, events <-chan sseEvent) sseEvent {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("the event stream ended")
			}
			if ev.HasData || ev.HasID {
				return ev
			}
		case <-timeout:
			t.Fatal("no event within 15s")
		}
	}
}

// waitEnd waits for an event stream to end, and returns the events it still
// carried.
func waitEnd(t *testing.T, events <-chan sseEvent) []sseEvent {
	t.Helper()
	var rest []sseEvent
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return rest
			}
			rest = append(rest, ev)
		case <-timeout:
			t.Fatal("the event stream did not end")
		}
	}
}

// rpcMessage is the part of a JSON-RPC message the tests look at.
type rpcMessage struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func decode(t *testing.T, data string) rpcMessage {
	t.Helper()
	var m rpcMessage
	if err := json.Unmarshal([]byte(data), &m); err != nil {
		t.Fatalf("not a JSON-RPC message: %q: %v", data, err)
	}
	return m
}

func initializeBody(version string) string {
	return `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"` + version +
		`","capabilities":{},"clientInfo":{"name":"raw-test","version":"1.0.0"}}}`
}

// initialize opens a session at protocol version and completes the
// handshake; it returns the session id.
func initialize(t *testing.T, url, version string) string {
	t.Helper()
	resp := post(t, url, "", "", initializeBody(version))
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("initialize: %s %s", resp.Status, body)
	}
	session := resp.Header.Get(headerSessionID)
	m := decode(t, nextEvent(t, readSSE(resp.Body)).Data)
	var result struct{ ProtocolVersion string }
	if m.Error != nil || json.Unmarshal(m.Result, &result) != nil || result.ProtocolVersion != version {
		t.Fatalf("initialize answered %+v %s, want protocol %s", m.Error, m.Result, version)
	}
	if resp := post(t, url, session, version, `{"jsonrpc":"2.0","method":"notifications/initialized"}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("notifications/initialized: %s", resp.Status)
	}
	return session
}

// call posts a request and returns its response, read from the SSE stream
// of the POST, together with every event of that stream.
func call(t *testing.T, url, session, version, body string) (rpcMessage, []sseEvent) {
	t.Helper()
	resp := post(t, url, session, version, body)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST %s: %s %s", body, resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q, want text/event-stream", ct)
	}
	events := waitEnd(t, readSSE(resp.Body)) // a POST stream ends after its response
	for i := len(events) - 1; i >= 0; i-- {
		if m := decode(t, orNull(events[i].Data)); m.ID != nil && m.Method == "" {
			return m, events
		}
	}
	t.Fatalf("no response in the stream: %+v", events)
	return rpcMessage{}, nil
}

func orNull(data string) string {
	if data == "" {
		return "null"
	}
	return data
}

// checkErrorBody checks that an HTTP error carries a JSON-RPC error
// response, and returns its code.
func checkErrorBody(t *testing.T, resp *http.Response) int {
	t.Helper()
	body, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type %q, want application/json", ct)
	}
	env, err := jsonrpc.ParseEnvelope(body)
	if !json.Valid(body) || err != nil || env.Kind() != jsonrpc.KindResponse || env.Error == nil {
		t.Fatalf("error body is not a JSON-RPC error response: %q", body)
	}
	m := decode(t, string(body))
	return m.Error.Code
}

// TestStreamableStatus checks the answer to each kind of bad (or merely
// unusual) request: its HTTP status and, for errors, the JSON-RPC error
// code in the body.
func TestStreamableStatus(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	const maxSize = 64 << 10
	srv, _ := startBridgeWith(t, []string{exe}, BackendConfig{Process: ProcessConfig{MaxMessageSize: maxSize}, Pool: PoolConfig{MinIdle: new(1)}}, ServerConfig{})
	const toolsList = `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`
	for _, tc := range []struct {
		name       string
		method     string            // default POST
		session    string            // "": none; "live", "unknown" or "deleted"
		header     map[string]string // overrides; "" removes
		body       string
		wantStatus int
		wantCode   int // JSON-RPC error code in the body; 0 for a success
		check      func(t *testing.T, resp *http.Response)
	}{
		// Content negotiation.
		{name: "POST without Content-Type: 415", header: map[string]string{"Content-Type": ""}, body: toolsList, session: "live",
			wantStatus: 415, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "POST with Content-Type text/plain: 415", header: map[string]string{"Content-Type": "text/plain"}, body: toolsList, session: "live",
			wantStatus: 415, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "POST with Content-Type parameters: accepted", header: map[string]string{"Content-Type": "application/json; charset=utf-8"}, body: initializeBody("2025-11-25"),
			wantStatus: 200},
		{name: "POST with Accept missing text/event-stream: 406", header: map[string]string{"Accept": "application/json"}, body: toolsList, session: "live",
			wantStatus: 406, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "POST with Accept missing application/json: 406", header: map[string]string{"Accept": "text/event-stream"}, body: toolsList, session: "live",
			wantStatus: 406, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "POST without Accept: 406", header: map[string]string{"Accept": ""}, body: toolsList, session: "live",
			wantStatus: 406, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "POST with Accept */*: accepted", header: map[string]string{"Accept": "*/*"}, body: initializeBody("2025-11-25"),
			wantStatus: 200},
		{name: "GET with Accept not allowing text/event-stream: 406", method: "GET", session: "live", header: map[string]string{"Accept": "application/json"},
			wantStatus: 406, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "GET without Accept: 406", method: "GET", session: "live", header: map[string]string{"Accept": ""},
			wantStatus: 406, wantCode: jsonrpc.CodeInvalidRequest},

		// Sessions.
		{name: "request without Mcp-Session-Id: 400", body: toolsList,
			wantStatus: 400, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "request with an unknown session: 404", session: "unknown", body: toolsList,
			wantStatus: 404, wantCode: jsonrpc.CodeSessionNotFound},
		{name: "request on a deleted session: 404", session: "deleted", body: toolsList,
			wantStatus: 404, wantCode: jsonrpc.CodeSessionNotFound},
		{name: "GET on a deleted session: 404", method: "GET", session: "deleted",
			wantStatus: 404, wantCode: jsonrpc.CodeSessionNotFound},
		{name: "DELETE on a deleted session: 404", method: "DELETE", session: "deleted",
			wantStatus: 404, wantCode: jsonrpc.CodeSessionNotFound},
		{name: "GET without Mcp-Session-Id: 400", method: "GET",
			wantStatus: 400, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "DELETE without Mcp-Session-Id: 400", method: "DELETE",
			wantStatus: 400, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "DELETE of a live session: 200", method: "DELETE", session: "live",
			wantStatus: 200},

		// Bodies.
		{name: "invalid JSON: 400 parse error", session: "live", body: `{"jsonrpc":"2.0",`,
			wantStatus: 400, wantCode: jsonrpc.CodeParseError},
		{name: "empty body: 400 parse error", session: "live", body: ``,
			wantStatus: 400, wantCode: jsonrpc.CodeParseError},
		{name: "valid JSON that is not JSON-RPC: 400", session: "live", body: `{"hello":"world"}`,
			wantStatus: 400, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "JSON that is not an object: 400", session: "live", body: `"tools/list"`,
			wantStatus: 400, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "batch after a 2025-11-25 initialize: 400", session: "live", body: `[` + toolsList + `,{"jsonrpc":"2.0","id":2,"method":"ping"}]`,
			wantStatus: 400, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "empty batch: 400", session: "live", body: `[]`,
			wantStatus: 400, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "initialize in a batch: 400", body: `[` + initializeBody("2025-03-26") + `]`,
			wantStatus: 400, wantCode: jsonrpc.CodeInvalidRequest},
		// "\u0069d" is "id" to the child, so this is a request the child
		// answers, not a notification to accept with 202.
		{name: "request with an escaped member name: answered on a stream", session: "live",
			body: `{"jsonrpc":"2.0","\u0069d":1,"method":"ping"}`, wantStatus: 200, check: func(t *testing.T, resp *http.Response) {
				events := waitEnd(t, readSSE(resp.Body))
				if len(events) == 0 {
					t.Fatal("empty stream")
				}
				if m := decode(t, events[len(events)-1].Data); string(m.ID) != "1" || m.Error != nil {
					t.Errorf("ping answered with id %s, error %+v", m.ID, m.Error)
				}
			}},
		{name: "body over the max message size: 413", session: "live",
			body:       `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"pad":"` + strings.Repeat("x", maxSize) + `"}}`,
			wantStatus: 413, wantCode: jsonrpc.CodeInvalidRequest},

		// Protocol versions.
		{name: "MCP-Protocol-Version 1999-01-01: 400", session: "live", header: map[string]string{"MCP-Protocol-Version": "1999-01-01"}, body: toolsList,
			wantStatus: 400, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "MCP-Protocol-Version with invalid UTF-8: 400 with a valid JSON body", session: "live", header: map[string]string{"MCP-Protocol-Version": "2025-\xff"}, body: toolsList,
			wantStatus: 400, wantCode: jsonrpc.CodeInvalidRequest},
		// A stateless (sessionless) request must get a plain JSON-RPC error, not
		// one of the codes that would tell a dual-era client the server is
		// stateless but refused it: the client then falls back to initialize.
		{name: "MCP-Protocol-Version 2026-07-28 without the stateless headers: 400 header mismatch",
			header: map[string]string{"MCP-Protocol-Version": "2026-07-28"}, body: toolsList,
			wantStatus: 400, wantCode: codeHeaderMismatch},
		{name: "MCP-Protocol-Version 2025-06-18 on a 2025-11-25 session: accepted", session: "live", header: map[string]string{"MCP-Protocol-Version": "2025-06-18"}, body: toolsList,
			wantStatus: 200},

		// Messages that get no response.
		{name: "notification: 202 with an empty body", session: "live", body: `{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`,
			wantStatus: 202, check: emptyBody},
		{name: "response from the client: 202 with an empty body", session: "live", body: `{"jsonrpc":"2.0","id":"from-client","result":{}}`,
			wantStatus: 202, check: emptyBody},

		// HTTP methods.
		{name: "PUT: 405 with Allow", method: "PUT", session: "live", body: toolsList,
			wantStatus: 405, wantCode: jsonrpc.CodeInvalidRequest, check: func(t *testing.T, resp *http.Response) {
				allow := resp.Header.Get("Allow")
				for _, m := range []string{"GET", "POST", "DELETE"} {
					if !strings.Contains(allow, m) {
						t.Errorf("Allow %q lacks %s", allow, m)
					}
				}
			}},

		// Origins (DNS rebinding).
		{name: "Origin of another site: 403", header: map[string]string{"Origin": "http://evil.example.com"}, body: initializeBody("2025-11-25"),
			wantStatus: 403, wantCode: jsonrpc.CodeInvalidRequest},
		{name: "Origin of a localhost site on a loopback connection: allowed", header: map[string]string{"Origin": "http://localhost:1234"}, body: initializeBody("2025-11-25"),
			wantStatus: 200},
		{name: "Origin 127.0.0.1 on a loopback connection: allowed", header: map[string]string{"Origin": "http://127.0.0.1:8080"}, body: initializeBody("2025-11-25"),
			wantStatus: 200},
		{name: "Origin null (a sandboxed page): 403", header: map[string]string{"Origin": "null"}, body: initializeBody("2025-11-25"),
			wantStatus: 403, wantCode: jsonrpc.CodeInvalidRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			session := ""
			switch tc.session {
			case "live":
				session = initialize(t, srv.URL, "2025-11-25")
			case "unknown":
				session = strings.Repeat("0", 32)
			case "deleted":
				session = initialize(t, srv.URL, "2025-11-25")
				if resp := mcpRequest(t, srv.URL, "DELETE", session, nil, ""); resp.StatusCode != http.StatusOK {
					t.Fatalf("DELETE: %s", resp.Status)
				}
			}
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			resp := mcpRequest(t, srv.URL, method, session, tc.header, tc.body)
			if resp.StatusCode != tc.wantStatus {
				body, _ := io.ReadAll(resp.Body)
				t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tc.wantStatus, body)
			}
			if tc.wantCode != 0 {
				if code := checkErrorBody(t, resp); code != tc.wantCode {
					t.Errorf("JSON-RPC error code %d, want %d", code, tc.wantCode)
				}
			}
			if tc.check != nil {
				tc.check(t, resp)
			}
			if session := resp.Header.Get(headerSessionID); session != "" && tc.session == "" {
				// A session this row opened: end it.
				mcpRequest(t, srv.URL, "DELETE", session, nil, "")
			}
		})
	}
}

// sessionByID returns the open session with this id, or nil.
func sessionByID(b *Backend, id string) *session {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.sessions[id]
}

func emptyBody(t *testing.T, resp *http.Response) {
	t.Helper()
	if body, _ := io.ReadAll(resp.Body); len(body) != 0 {
		t.Errorf("body %q, want none", body)
	}
}

// TestStreamableInitialize checks the answer to initialize: a fresh session
// id of 32 hex digits, an SSE stream that proxies will not buffer, and the
// child's result with the requested version.
func TestStreamableInitialize(t *testing.T) {
	srv, _ := startBridge(t, PoolConfig{MinIdle: new(1)})
	hex32 := regexp.MustCompile(`^[0-9a-f]{32}$`)
	seen := map[string]bool{}
	for _, version := range []string{"2025-11-25", "2025-06-18", "2025-03-26"} {
		t.Run(version, func(t *testing.T) {
			resp := post(t, srv.URL, "", "", initializeBody(version))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %s", resp.Status)
			}
			session := resp.Header.Get(headerSessionID)
			if !hex32.MatchString(session) {
				t.Errorf("Mcp-Session-Id %q, want 32 hex digits", session)
			}
			if seen[session] {
				t.Errorf("session id %s handed out twice", session)
			}
			seen[session] = true
			for header, want := range map[string]string{
				"Content-Type":      "text/event-stream",
				"X-Accel-Buffering": "no",
				"Cache-Control":     "no-cache",
			} {
				if got := resp.Header.Get(header); got != want {
					t.Errorf("%s: %q, want %q", header, got, want)
				}
			}
			events := waitEnd(t, readSSE(resp.Body))
			if len(events) != 1 || !events[0].HasID {
				t.Fatalf("initialize stream %+v, want one event with an id", events)
			}
			m := decode(t, events[0].Data)
			var result struct{ ProtocolVersion string }
			if string(m.ID) != "0" || json.Unmarshal(m.Result, &result) != nil || result.ProtocolVersion != version {
				t.Errorf("response %s %s, want id 0 and protocol %s", m.ID, m.Result, version)
			}
		})
	}
}

// TestStreamableEventIDs checks the SSE framing of a POST's response stream
// at each protocol version: every event carries an id, unique in the
// session, and from 2025-11-25 on the stream opens with a priming event (an
// id and empty data) that a client may resume from.
func TestStreamableEventIDs(t *testing.T) {
	srv, _ := startBridge(t, PoolConfig{MinIdle: new(1)})
	for _, tc := range []struct {
		version     string
		wantPriming bool
	}{
		{"2025-11-25", true},
		{"2025-06-18", false},
		{"2025-03-26", false},
	} {
		t.Run(tc.version, func(t *testing.T) {
			session := initialize(t, srv.URL, tc.version)
			ids := map[string]bool{}
			for i := range 2 {
				m, events := call(t, srv.URL, session, tc.version,
					`{"jsonrpc":"2.0","id":"p","method":"tools/call","params":{"name":"test_tool_with_progress","_meta":{"progressToken":"tok"}}}`)
				if m.Error != nil {
					t.Fatalf("tools/call: %+v", m.Error)
				}
				messages := events
				if tc.wantPriming {
					if len(events) == 0 || !events[0].HasID || events[0].Data != "" {
						t.Fatalf("POST %d: first event %+v, want a priming event (id, empty data)", i, events)
					}
					messages = events[1:]
				}
				if n := len(messages); n != 4 {
					t.Errorf("POST %d: %d messages, want 3 progress notifications and the response", i, n)
				}
				for _, ev := range events {
					if !ev.HasID || ev.ID == "" {
						t.Errorf("event without an id: %+v", ev)
					}
					if ids[ev.ID] {
						t.Errorf("event id %q repeated", ev.ID)
					}
					ids[ev.ID] = true
				}
				for _, ev := range messages {
					if ev.Data == "" {
						t.Errorf("empty event after the priming one: %+v", ev)
					}
				}
			}
		})
	}
}

// TestStreamableGetStream checks that the session's messages that belong to
// no request (here notifications/tools/list_changed) reach the GET stream,
// whether it was open when they were sent or opened later.
func TestStreamableGetStream(t *testing.T) {
	srv, _ := startBridge(t, PoolConfig{MinIdle: new(1)})
	const version = "2025-11-25"
	const trigger = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"test_trigger_tool_change"}}`
	for _, tc := range []struct {
		name         string
		openGetFirst bool
	}{
		{"GET stream open before the notification", true},
		{"GET stream opened after the notification: it was kept", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			session := initialize(t, srv.URL, version)
			var events <-chan sseEvent
			openGet := func() {
				resp := mcpRequest(t, srv.URL, http.MethodGet, session, map[string]string{"MCP-Protocol-Version": version}, "")
				if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
					t.Fatalf("GET: %s %s", resp.Status, resp.Header.Get("Content-Type"))
				}
				events = readSSE(resp.Body)
				if ev := nextEvent(t, events); !ev.HasID || ev.Data != "" {
					t.Fatalf("GET stream opened with %+v, want a priming event", ev)
				}
			}
			if tc.openGetFirst {
				openGet()
			}
			m, postEvents := call(t, srv.URL, session, version, trigger)
			if m.Error != nil {
				t.Fatalf("tools/call: %+v", m.Error)
			}
			for _, ev := range postEvents {
				if decode(t, orNull(ev.Data)).Method == "notifications/tools/list_changed" {
					t.Errorf("the notification went to the POST stream: %s", ev.Data)
				}
			}
			if !tc.openGetFirst {
				time.Sleep(200 * time.Millisecond) // the SDK sends it 10ms after the change
				openGet()
			}
			ev := nextEvent(t, events)
			if got := decode(t, ev.Data); got.Method != "notifications/tools/list_changed" {
				t.Errorf("GET stream got %s, want notifications/tools/list_changed", ev.Data)
			}
			if !ev.HasID {
				t.Errorf("GET stream event without an id: %+v", ev)
			}
		})
	}
}

// TestStreamableSecondGetReplacesFirst checks that a session has one GET
// stream: opening another ends the first.
func TestStreamableSecondGetReplacesFirst(t *testing.T) {
	srv, _ := startBridge(t, PoolConfig{MinIdle: new(1)})
	session := initialize(t, srv.URL, "2025-06-18")
	first := mcpRequest(t, srv.URL, http.MethodGet, session, nil, "")
	if first.StatusCode != http.StatusOK {
		t.Fatalf("first GET: %s", first.Status)
	}
	firstEvents := readSSE(first.Body)
	second := mcpRequest(t, srv.URL, http.MethodGet, session, nil, "")
	if second.StatusCode != http.StatusOK {
		t.Fatalf("second GET: %s", second.Status)
	}
	waitEnd(t, firstEvents)

	// The second stream is the live one: it still gets the session's
	// messages.
	secondEvents := readSSE(second.Body)
	call(t, srv.URL, session, "2025-06-18", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"test_trigger_tool_change"}}`)
	if got := decode(t, nextEvent(t, secondEvents).Data); got.Method != "notifications/tools/list_changed" {
		t.Errorf("second GET stream got %+v, want the list_changed notification", got)
	}
}

// TestStreamableKeepalive checks that an idle GET stream carries keepalive
// comments.
func TestStreamableKeepalive(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	srv, _ := startBridgeWith(t, []string{exe}, BackendConfig{Pool: PoolConfig{MinIdle: new(1)}}, ServerConfig{Keepalive: 50 * time.Millisecond})
	session := initialize(t, srv.URL, "2025-06-18")
	resp := mcpRequest(t, srv.URL, http.MethodGet, session, nil, "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %s", resp.Status)
	}
	events := readSSE(resp.Body)
	pings := 0
	timeout := time.After(10 * time.Second)
	for pings < 2 {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("the GET stream ended")
			}
			for _, c := range ev.Comments {
				if c == "ping" {
					pings++
				}
			}
		case <-timeout:
			t.Fatalf("%d keepalive comments in 10s with a 50ms interval", pings)
		}
	}
}

// TestStreamablePoolExhausted checks that an initialize that finds every
// process busy gets 503 with Retry-After once AcquireTimeout has passed,
// and that ending a session makes room again.
func TestStreamablePoolExhausted(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	srv, backend := startBridgeWith(t, []string{exe},
		BackendConfig{Pool: PoolConfig{MinIdle: new(1), MaxProcesses: 1, AcquireTimeout: 100 * time.Millisecond}}, ServerConfig{})
	// The spare holds the only room until it is ready: wait for it, or a
	// loaded machine makes the first initialize wait out AcquireTimeout.
	mcptest.WaitFor(t, 10*time.Second, "the warm spare", func() bool { return backend.placement.Ready() == 1 })
	first := initialize(t, srv.URL, "2025-11-25")

	resp := post(t, srv.URL, "", "", initializeBody("2025-11-25"))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second initialize: %s, want 503", resp.Status)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if code := checkErrorBody(t, resp); code != jsonrpc.CodeServerBusy {
		t.Errorf("JSON-RPC error code %d, want %d", code, jsonrpc.CodeServerBusy)
	}

	if resp := mcpRequest(t, srv.URL, http.MethodDelete, first, nil, ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE: %s", resp.Status)
	}
	// The freed place goes to a new spare; a new session waits for it
	// rather than failing, given the time to start it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp := post(t, srv.URL, "", "", initializeBody("2025-11-25"))
		if resp.StatusCode == http.StatusOK {
			break
		}
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("initialize after the DELETE: %s", resp.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStreamableIdleReaping checks that a session with no stream open and
// no traffic ends after SessionIdleTimeout, its child with it, while a
// session holding a GET stream open stays.
func TestStreamableIdleReaping(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	srv, backend := startBridgeWith(t, []string{exe},
		BackendConfig{Pool: PoolConfig{MinIdle: new(1)}, SessionIdleTimeout: 200 * time.Millisecond}, ServerConfig{})
	openGet := func(session string) *http.Response {
		t.Helper()
		resp := mcpRequest(t, srv.URL, http.MethodGet, session, nil, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET: %s", resp.Status)
		}
		return resp
	}
	kept := initialize(t, srv.URL, "2025-11-25")
	openGet(kept)

	// While its GET stream is open the session cannot be reaped, which
	// leaves time to find its child; closing the stream starts the clock.
	idle := initialize(t, srv.URL, "2025-11-25")
	get := openGet(idle)
	sess := sessionByID(backend, idle)
	if sess == nil {
		t.Fatal("session with a GET stream open not found")
	}
	pid := sess.up.Pid()
	get.Body.Close()

	start := time.Now()
	select {
	case <-sess.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the idle session was not reaped")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("reaped after %v with a 200ms idle timeout", took)
	}
	if resp := post(t, srv.URL, idle, "2025-11-25", `{"jsonrpc":"2.0","id":1,"method":"ping"}`); resp.StatusCode != http.StatusNotFound {
		t.Errorf("request on the reaped session: %s, want 404", resp.Status)
	}
	mcptest.WaitFor(t, 5*time.Second, "the child to exit", func() bool { return !mcptest.Running(exe, pid) })

	time.Sleep(500 * time.Millisecond)
	if sessionByID(backend, kept) == nil {
		t.Error("the session with a GET stream open was reaped")
	}
	if m, _ := call(t, srv.URL, kept, "2025-11-25", `{"jsonrpc":"2.0","id":1,"method":"ping"}`); m.Error != nil {
		t.Errorf("ping on the kept session: %+v", m.Error)
	}
}

// TestStreamableChildExits checks what a client sees when its child dies:
// the request in flight gets a JSON-RPC error on its stream, and the
// session then answers 404 so that the client starts a new one.
func TestStreamableChildExits(t *testing.T) {
	exe := mcptest.Build(t, mcptest.TestChildPackage)
	srv, backend := startBridgeWith(t, []string{exe, "-die-on", "tools/call"}, BackendConfig{Pool: PoolConfig{MinIdle: new(1)}}, ServerConfig{})
	for _, version := range []string{"2025-11-25", "2025-03-26"} {
		t.Run(version, func(t *testing.T) {
			session := initialize(t, srv.URL, version)
			pid := sessionByID(backend, session).up.Pid()
			m, _ := call(t, srv.URL, session, version, `{"jsonrpc":"2.0","id":"doomed","method":"tools/call","params":{"name":"x"}}`)
			if string(m.ID) != `"doomed"` || m.Error == nil || m.Error.Code != jsonrpc.CodeServerExited {
				t.Errorf("pending request got id %s error %+v, want id \"doomed\" and code %d", m.ID, m.Error, jsonrpc.CodeServerExited)
			}
			if resp := post(t, srv.URL, session, version, `{"jsonrpc":"2.0","id":2,"method":"ping"}`); resp.StatusCode != http.StatusNotFound {
				t.Errorf("request after the child exited: %s, want 404", resp.Status)
			}
			mcptest.WaitFor(t, 5*time.Second, "the child to exit", func() bool { return !mcptest.Running(exe, pid) })
		})
	}
}

// TestStreamableOversizeResponse checks that a child's response over
// MaxMessageSize reaches the client as a JSON-RPC error for its request,
// and the session goes on.
func TestStreamableOversizeResponse(t *testing.T) {
	exe := mcptest.Build(t, mcptest.TestChildPackage)
	srv, _ := startBridgeWith(t, []string{exe, "-huge", "200000"},
		BackendConfig{Process: ProcessConfig{MaxMessageSize: 100000}, Pool: PoolConfig{MinIdle: new(1)}}, ServerConfig{})
	session := initialize(t, srv.URL, "2025-11-25")
	m, _ := call(t, srv.URL, session, "2025-11-25", `{"jsonrpc":"2.0","id":7,"method":"huge"}`)
	if string(m.ID) != "7" || m.Error == nil || m.Error.Code != jsonrpc.CodeInternalError {
		t.Errorf("oversize response became id %s error %+v, want id 7 and code %d", m.ID, m.Error, jsonrpc.CodeInternalError)
	}
	m, _ = call(t, srv.URL, session, "2025-11-25", `{"jsonrpc":"2.0","id":8,"method":"ping","params":{"ok":true}}`)
	if m.Error != nil || string(m.Result) != `{"echo":{"ok":true}}` {
		t.Errorf("next request got %s %+v", m.Result, m.Error)
	}
}
