package connector

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// TestConnectorRelays: messages pass byte for byte both ways, with the
// session's headers; the GET stream carries what the remote sends outside
// requests; closing the input ends the session with DELETE, and Run
// returns nil.
func TestConnectorRelays(t *testing.T) {
	f := newFakeRemote()
	srv := f.start(t)
	tc := runConnector(t, Config{URL: srv.URL + "/mcp", Header: http.Header{"Authorization": {"Bearer k"}}})

	if got, want := string(tc.initialize()), `{"jsonrpc":"2.0","id":0,"result":`+fakeInitResult+`}`; got != want {
		t.Errorf("initialize answer changed on the way:\n got %s\nwant %s", got, want)
	}
	call := `{"jsonrpc":"2.0","id":"a b","method":"tools/call","params":{"name":"x","arguments":{"s":"\u2028 é"}, "extra": [ 1 ]}}`
	tc.send(call)
	if got, want := string(tc.next()), `{"jsonrpc":"2.0","id":"a b","result":{"echo":{"name":"x","arguments":{"s":"\u2028 é"}, "extra": [ 1 ]},"session":"s1"}}`; got != want {
		t.Errorf("call answer:\n got %s\nwant %s", got, want)
	}
	posts := f.postsOf("tools/call")
	if len(posts) != 1 || string(posts[0].body) != call {
		t.Fatalf("the remote got %+v, want the call unchanged", posts)
	}
	h := posts[0].header
	if h.Get("Mcp-Session-Id") != "s1" || h.Get("Mcp-Protocol-Version") != "2025-11-25" || h.Get("Authorization") != "Bearer k" ||
		h.Get("Content-Type") != "application/json" || h.Get("Accept") != "application/json, text/event-stream" {
		t.Errorf("the call's headers: %v", h)
	}
	if init := f.postsOf("initialize"); init[0].header.Get("Mcp-Session-Id") != "" {
		t.Errorf("initialize carried a session id: %v", init[0].header)
	}

	f.push <- []byte(`{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}`)
	if got := string(tc.next()); got != `{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}` {
		t.Errorf("from the GET stream: %s", got)
	}
	tc.send(`{"jsonrpc":"2.0","id":"srv-1","result":{}}`)
	waitFor(t, "the client's response to reach the remote", func() bool { return len(f.postsOf("")) == 1 })

	if err := tc.close(); err != nil {
		t.Fatalf("Run returned %v after the input closed", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.deletes) != 1 || f.deletes[0] != "s1" {
		t.Errorf("DELETEs: %v, want one of session s1", f.deletes)
	}
}

// TestConnectorSessionGone: a request that finds its session gone (404)
// opens a new one with the client's initialize, under an id of the
// connector's, and goes again in it; the client gets its answer, after a
// log message that says what happened.
func TestConnectorSessionGone(t *testing.T) {
	f := newFakeRemote()
	srv := f.start(t)
	tc := runConnector(t, Config{URL: srv.URL + "/mcp"})
	tc.initialize()
	waitFor(t, "the GET stream", func() bool { f.mu.Lock(); defer f.mu.Unlock(); return len(f.gets) > 0 })
	f.forget()

	tc.send(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}`)
	notice := tc.next()
	env, _ := jsonrpc.ParseEnvelope(notice)
	if env.MethodName() != "notifications/message" || !bytes.Contains(notice, []byte(`"level":"warning"`)) || !bytes.Contains(notice, []byte(logLogger)) {
		t.Fatalf("first message %s, want the warning that a new session was opened", notice)
	}
	answer := tc.next()
	if !bytes.HasPrefix(answer, []byte(`{"jsonrpc":"2.0","id":7,"result":`)) || !bytes.Contains(answer, []byte(`"session":"s2"`)) {
		t.Fatalf("answer %s, want id 7 answered in session s2", answer)
	}
	inits := f.postsOf("initialize")
	if len(inits) != 2 || inits[1].id != `"caddy-mcp-bridge-connect:initialize-1"` {
		t.Fatalf("initializes %+v, want the client's, then one with the connector's own id", inits)
	}
	if want := strings.Replace(testInit, `"id":0`, `"id":"caddy-mcp-bridge-connect:initialize-1"`, 1); string(inits[1].body) != want {
		t.Errorf("the new initialize:\n got %s\nwant %s", inits[1].body, want)
	}
	initialized := f.postsOf("notifications/initialized")
	if len(initialized) != 2 || initialized[1].header.Get("Mcp-Session-Id") != "s2" {
		t.Errorf("notifications/initialized: %+v, want one for s2", initialized)
	}
	if err := tc.close(); err != nil {
		t.Fatal(err)
	}
}

// TestConnectorRemoteDown: while the remote refuses connections, a request
// is sent again until the remote is back; past --retry-for, it gets an
// error that says the remote is unreachable and why, and the connector
// keeps serving.
func TestConnectorRemoteDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	tc := runConnector(t, Config{URL: "http://" + addr + "/mcp", RetryFor: time.Minute})
	tc.send(testInit)
	tc.waitLog("unreachable; retrying")

	f := newFakeRemote()
	srv := httptest.NewUnstartedServer(f)
	if srv.Listener, err = net.Listen("tcp", addr); err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer srv.Close()
	if answer := tc.next(); !bytes.Contains(answer, []byte(`"result"`)) {
		t.Fatalf("initialize got %s once the remote was back", answer)
	}
	if err := tc.close(); err != nil {
		t.Fatal(err)
	}

	tc = runConnector(t, Config{URL: "http://" + addr + "/gone/mcp", RetryFor: 300 * time.Millisecond})
	srv.Close()
	tc.send(testInit)
	answer := tc.next()
	if env, _ := jsonrpc.ParseEnvelope(answer); string(env.ID) != "0" || !bytes.Contains(answer, []byte(`"code":-32003`)) ||
		!bytes.Contains(answer, []byte("unreachable (tried for 300ms)")) || !bytes.Contains(answer, []byte("connection refused")) {
		t.Fatalf("answer %s, want error -32003 saying the remote is unreachable and why", answer)
	}
	tc.send(`{"jsonrpc":"2.0","id":1,"method":"ping"}`)
	if answer := tc.next(); !bytes.Contains(answer, []byte(`"id":1,`)) {
		t.Fatalf("after giving up a request, the next got %s", answer)
	}
	if err := tc.close(); err != nil {
		t.Fatal(err)
	}
}

// TestConnectorResetBeforeHeaders: connections that the remote closes
// before answering are retried, the first at once.
func TestConnectorResetBeforeHeaders(t *testing.T) {
	f := newFakeRemote()
	srv := httptest.NewUnstartedServer(f)
	resets := 3
	srv.Config.ConnState = func(conn net.Conn, state http.ConnState) {
		if state == http.StateNew && resets > 0 {
			resets--
			conn.Close()
		}
	}
	srv.Start()
	defer srv.Close()
	tc := runConnector(t, Config{URL: srv.URL + "/mcp"})
	if answer := tc.initialize(); !bytes.Contains(answer, []byte(`"result"`)) {
		t.Fatalf("initialize got %s", answer)
	}
	if err := tc.close(); err != nil {
		t.Fatal(err)
	}
}

// TestConnectorResumesStream: a request's stream that drops after its
// priming event is resumed with GET and Last-Event-ID, and the answer
// arrives.
func TestConnectorResumesStream(t *testing.T) {
	f := newFakeRemote()
	f.drop[`"cut"`] = true
	srv := f.start(t)
	tc := runConnector(t, Config{URL: srv.URL + "/mcp"})
	tc.initialize()
	tc.send(`{"jsonrpc":"2.0","id":"cut","method":"tools/call","params":{"name":"slow"}}`)
	if answer := tc.next(); !bytes.HasPrefix(answer, []byte(`{"jsonrpc":"2.0","id":"cut","result":`)) {
		t.Fatalf("answer %s", answer)
	}
	f.mu.Lock()
	gets := append([]string(nil), f.gets...)
	f.mu.Unlock()
	if !slices.Contains(gets, "ev-cut") {
		t.Errorf("GETs with Last-Event-ID %q, want one resuming ev-cut", gets)
	}
	if err := tc.close(); err != nil {
		t.Fatal(err)
	}
}

// TestConnectorStateless: a request that names the stateless protocol in
// its _meta goes alone, with no session and with the headers that repeat
// its body (the name in base64 when it is not ASCII); a refusal whose
// error has a null id reaches the client with the request's id.
func TestConnectorStateless(t *testing.T) {
	f := newFakeRemote()
	srv := f.start(t)
	tc := runConnector(t, Config{URL: srv.URL + "/mcp"})
	const meta = `"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}`
	tc.send(`{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{` + meta + `}}`)
	if got, want := string(tc.next()), `{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"this endpoint serves MCP sessions"}}`; got != want {
		t.Errorf("discover:\n got %s\nwant %s", got, want)
	}
	tc.send(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"héllo",` + meta + `}}`)
	if got := string(tc.next()); got != `{"jsonrpc":"2.0","id":2,"result":{"stateless":true}}` {
		t.Errorf("call: %s", got)
	}
	h := f.postsOf("tools/call")[0].header
	if h.Get("Mcp-Protocol-Version") != "2026-07-28" || h.Get("Mcp-Method") != "tools/call" ||
		h.Get("Mcp-Name") != "=?base64?aMOpbGxv?=" || h.Get("Mcp-Session-Id") != "" {
		t.Errorf("the stateless call's headers: %v", h)
	}
	if err := tc.close(); err != nil {
		t.Fatal(err)
	}
}

// TestConnectorCancellation: a session request the client cancels has its
// notification sent, and when the remote then ends its stream unanswered,
// the client gets nothing for it; a stateless request the client cancels
// has its stream closed, which cancels it at the remote.
func TestConnectorCancellation(t *testing.T) {
	f := newFakeRemote()
	f.hang[`"slow"`] = make(chan struct{})
	srv := f.start(t)
	tc := runConnector(t, Config{URL: srv.URL + "/mcp"})
	tc.initialize()
	tc.send(`{"jsonrpc":"2.0","id":"slow","method":"tools/call","params":{"name":"slow"}}`)
	tc.send(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"slow","reason":"the user gave up"}}`)
	tc.send(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}`)
	if answer := tc.next(); !bytes.HasPrefix(answer, []byte(`{"jsonrpc":"2.0","id":1,"result":`)) {
		t.Fatalf("after a cancelled request, the client got %s", answer)
	}

	const meta = `"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}`
	tc.send(`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"wait",` + meta + `}}`)
	waitFor(t, "the stateless call to reach the remote", func() bool { return len(f.postsOf("tools/call")) == 3 })
	tc.send(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}`)
	waitFor(t, "the stateless call's stream to close", func() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.statelessCancelled == 1 })
	tc.send(`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"x",` + meta + `}}`)
	if answer := tc.next(); string(answer) != `{"jsonrpc":"2.0","id":4,"result":{"stateless":true}}` {
		t.Fatalf("after a cancelled stateless request, the client got %s", answer)
	}
	if n := len(f.postsOf("notifications/cancelled")); n != 1 {
		t.Errorf("%d cancellations reached the remote, want the session request's only", n)
	}
	if err := tc.close(); err != nil {
		t.Fatal(err)
	}
	for msg := range tc.out {
		t.Errorf("the client got %s for a request it cancelled", msg)
	}
}

// TestConnectorOversize: a line longer than the limit is answered with an
// error when it was a request, and the connector goes on.
func TestConnectorOversize(t *testing.T) {
	f := newFakeRemote()
	srv := f.start(t)
	tc := runConnector(t, Config{URL: srv.URL + "/mcp", MaxMessageSize: 1024})
	tc.send(`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"` + strings.Repeat("x", 2000) + `"}}`)
	if answer := tc.next(); !bytes.Contains(answer, []byte(`"id":5,"error"`)) || !bytes.Contains(answer, []byte("maximum size")) {
		t.Fatalf("answer %s", answer)
	}
	tc.send("not json")
	if answer := tc.next(); !bytes.Contains(answer, []byte(`"id":null,"error":{"code":-32700`)) {
		t.Fatalf("answer to a line that is not JSON: %s", answer)
	}
	if answer := tc.initialize(); !bytes.Contains(answer, []byte(`"result"`)) {
		t.Fatalf("initialize after an oversize line got %s", answer)
	}
	if err := tc.close(); err != nil {
		t.Fatal(err)
	}
}

// TestConnectorContextEnds: Run returns the context's error when it ends,
// with every goroutine of its own ended (TestMain checks), but the one
// reading the input, which ends with the input.
func TestConnectorContextEnds(t *testing.T) {
	f := newFakeRemote()
	srv := f.start(t)
	ctx, cancel := context.WithCancel(t.Context())
	inR, inW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Config{URL: srv.URL + "/mcp"}, inR, &bytes.Buffer{}) }()
	cancel()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return within 15s of its context ending")
	}
	inW.Close()
}

// waitFor polls cond until it holds, for up to 15 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 15s for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
