package connector

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// fakeRemote is a scripted Streamable HTTP MCP server: enough of the
// protocol to see what the connector sends, and to put it in front of what
// real remotes do: forget a session, drop a stream, refuse a stateless
// request, go away.
type fakeRemote struct {
	mu       sync.Mutex
	sessions map[string]bool
	opened   int
	posts    []fakePost
	deletes  []string
	gets     []string // the Last-Event-ID of each GET, "" for none
	// drop names the requests (by raw id) whose stream is cut after its
	// priming event; the answer waits for a GET with that event's id.
	drop map[string]bool
	held map[string][]byte // answers waiting for a resume, by event id
	push chan []byte       // messages for the GET stream
	// hang names the requests (by raw id) whose stream stays open,
	// unanswered, until the client cancels them; then it ends, as the
	// bridge ends it.
	hang map[string]chan struct{}
	// statelessCancelled counts the stateless calls of the tool "wait"
	// whose stream the client closed.
	statelessCancelled int
}

// fakePost is a POST the remote got.
type fakePost struct {
	method, id string // id is raw
	header     http.Header
	body       []byte
}

func newFakeRemote() *fakeRemote {
	return &fakeRemote{sessions: map[string]bool{}, drop: map[string]bool{}, held: map[string][]byte{}, push: make(chan []byte, 16), hang: map[string]chan struct{}{}}
}

// start serves the remote on a new httptest server, closed at cleanup.
func (f *fakeRemote) start(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv
}

// fakeInitResult answers initialize, with spacing and a member no SDK
// writes, which must reach the client byte for byte.
const fakeInitResult = `{"protocolVersion":"2025-11-25",  "capabilities":{"tools":{}},"serverInfo":{"name":"fake","version":"1"},"x-unknown":[1, 2.50, "é\u00e9"]}`

func (f *fakeRemote) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sid := r.Header.Get("Mcp-Session-Id")
	switch r.Method {
	case http.MethodDelete:
		f.mu.Lock()
		f.deletes = append(f.deletes, sid)
		delete(f.sessions, sid)
		f.mu.Unlock()
		return
	case http.MethodGet:
		f.serveGet(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	env, _ := jsonrpc.ParseEnvelope(body)
	f.mu.Lock()
	f.posts = append(f.posts, fakePost{method: env.MethodName(), id: string(env.ID), header: r.Header.Clone(), body: body})
	known := f.sessions[sid]
	drop := f.drop[string(env.ID)]
	hang := f.hang[string(env.ID)]
	if env.MethodName() == "notifications/cancelled" {
		if ch := f.hang[string(jsonrpc.Member(env.Params, "requestId"))]; ch != nil {
			close(ch)
		}
	}
	f.mu.Unlock()

	if v := r.Header.Get("Mcp-Protocol-Version"); v >= firstStateless {
		f.serveStateless(w, r, &env)
		return
	}
	switch {
	case env.MethodName() == "initialize":
		f.mu.Lock()
		f.opened++
		sid = fmt.Sprintf("s%d", f.opened)
		f.sessions[sid] = true
		f.mu.Unlock()
		w.Header().Set("Mcp-Session-Id", sid)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":%s}`, env.ID, fakeInitResult)
	case !known:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"session not found"}}`)
	case env.ID == nil || env.Method == nil:
		w.WriteHeader(http.StatusAccepted)
	default:
		answer := fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":{"echo":%s,"session":%q}}`, env.ID, orNull(env.Params), sid)
		w.Header().Set("Content-Type", "text/event-stream")
		primingID := "ev-" + strings.Trim(string(env.ID), `"`)
		fmt.Fprintf(w, "id: %s\ndata:\n\n", primingID)
		if hang != nil {
			w.(http.Flusher).Flush()
			select {
			case <-hang:
			case <-r.Context().Done():
			}
			return
		}
		if drop {
			f.mu.Lock()
			f.held[primingID] = []byte(answer)
			f.mu.Unlock()
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // cut the stream
		}
		fmt.Fprintf(w, "id: %s-1\ndata: %s\n\n", primingID, answer)
	}
}

func orNull(raw []byte) []byte {
	if raw == nil {
		return []byte("null")
	}
	return raw
}

// serveGet answers a resumption with the answer held for it, and holds
// the session's stream open otherwise, sending what push gets.
func (f *fakeRemote) serveGet(w http.ResponseWriter, r *http.Request) {
	last := r.Header.Get("Last-Event-ID")
	f.mu.Lock()
	f.gets = append(f.gets, last)
	held, resumed := f.held[last]
	delete(f.held, last)
	known := f.sessions[r.Header.Get("Mcp-Session-Id")]
	f.mu.Unlock()
	if !known {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	if resumed {
		fmt.Fprintf(w, "id: %s-1\ndata: %s\n\n", last, held)
		return
	}
	io.WriteString(w, ": the GET stream\n\n")
	w.(http.Flusher).Flush()
	for {
		select {
		case msg := <-f.push:
			fmt.Fprintf(w, "data: %s\n\n", msg)
			w.(http.Flusher).Flush()
		case <-r.Context().Done():
			return
		}
	}
}

// serveStateless answers a stateless request as a bridge whose child
// speaks the stateless protocol, but refuses server/discover the way an
// endpoint that serves sessions only does: 400, and an error whose id is
// null.
func (f *fakeRemote) serveStateless(w http.ResponseWriter, r *http.Request, env *jsonrpc.Envelope) {
	if jsonrpc.StringValue(jsonrpc.Member(env.Params, "name")) == "wait" {
		w.Header().Set("Content-Type", "text/event-stream")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		f.mu.Lock()
		f.statelessCancelled++
		f.mu.Unlock()
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if env.MethodName() == "server/discover" {
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"this endpoint serves MCP sessions"}}`)
		return
	}
	fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{"stateless":true}}`, env.ID)
}

// postsOf returns the POSTs of method the remote got.
func (f *fakeRemote) postsOf(method string) []fakePost {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakePost
	for _, p := range f.posts {
		if p.method == method {
			out = append(out, p)
		}
	}
	return out
}

// forget makes the remote forget every session, as a restart does.
func (f *fakeRemote) forget() {
	f.mu.Lock()
	clear(f.sessions)
	f.mu.Unlock()
}

// testClient is a stdio client of a connector run by the test: it writes
// lines to the connector's input and reads its output.
type testClient struct {
	t    *testing.T
	in   *io.PipeWriter
	out  chan []byte
	done chan error
	logs *observer.ObservedLogs
}

// runConnector runs a connector with cfg, its logs observed. Cleanup
// closes its input and waits for it to end.
func runConnector(t *testing.T, cfg Config) *testClient {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	cfg.Logger = zap.New(core)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	tc := &testClient{t: t, in: inW, out: make(chan []byte, 64), done: make(chan error, 1), logs: logs}
	go func() {
		tc.done <- Run(t.Context(), cfg, inR, outW)
		outW.Close()
	}()
	go func() {
		defer close(tc.out)
		sc := bufio.NewScanner(outR)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			tc.out <- bytes.Clone(sc.Bytes())
		}
	}()
	t.Cleanup(func() {
		inW.Close()
		for range tc.out {
		}
	})
	return tc
}

// send writes one line to the connector.
func (tc *testClient) send(msg string) {
	tc.t.Helper()
	if _, err := io.WriteString(tc.in, msg+"\n"); err != nil {
		tc.t.Fatalf("writing to the connector: %v", err)
	}
}

// next returns the next message the connector wrote.
func (tc *testClient) next() []byte {
	tc.t.Helper()
	select {
	case msg, ok := <-tc.out:
		if !ok {
			tc.t.Fatal("the connector's output ended")
		}
		return msg
	case <-time.After(15 * time.Second):
		tc.t.Fatal("no message from the connector within 15s")
		return nil
	}
}

// close ends the connector's input and returns what Run returned.
func (tc *testClient) close() error {
	tc.t.Helper()
	tc.in.Close()
	select {
	case err := <-tc.done:
		return err
	case <-time.After(15 * time.Second):
		tc.t.Fatal("the connector did not stop within 15s of its input closing")
		return nil
	}
}

// waitLog waits until the connector logged a message containing text.
func (tc *testClient) waitLog(text string) {
	tc.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for tc.logs.FilterMessageSnippet(text).Len() == 0 {
		if time.Now().After(deadline) {
			tc.t.Fatalf("the connector did not log %q within 15s; it logged %v", text, tc.logs.All())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// initialize opens the client's session.
func (tc *testClient) initialize() []byte {
	tc.t.Helper()
	tc.send(testInit)
	answer := tc.next()
	tc.send(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	return answer
}

const testInit = `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"test","version":"1"}}}`
