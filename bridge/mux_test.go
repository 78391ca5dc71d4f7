package bridge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/placement"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// These tests put the multiplexer (isolation "shared") between real
// clients and muxchild, a stdio MCP server that reports what it received:
// raw HTTP where the bytes matter, the go-sdk client where a real client's
// behaviour does.

const muxChildPackage = "github.com/mcpbridge/caddy-mcp-bridge/bridge/testdata/muxchild"

// startMuxBridge serves a bridge whose sessions share muxchild children,
// and checks at cleanup that no child is left.
func startMuxBridge(t *testing.T, cfg PoolConfig, logger *zap.Logger) (*httptest.Server, *Backend, string) {
	t.Helper()
	return startMuxBackend(t, BackendConfig{Pool: cfg}, logger)
}

// startMuxBackend serves a bridge in front of muxchild with any backend
// configuration.
func startMuxBackend(t *testing.T, bcfg BackendConfig, logger *zap.Logger) (*httptest.Server, *Backend, string) {
	t.Helper()
	exe := mcptest.Build(t, muxChildPackage)
	if logger == nil {
		logger = zaptest.NewLogger(t)
	}
	bcfg.Process.Argv = []string{exe}
	backend := NewBackend(bcfg, logger)
	backend.Start()
	srv := httptest.NewServer(NewServer(backend, ServerConfig{}, logger))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		// The backend first: a handler still waiting on a child is
		// released when the child goes, and only then can srv.Close return.
		backend.Close()
		srv.Close()
		mcptest.WaitNoProcesses(t, exe, 5*time.Second)
	})
	return srv, backend, exe
}

// muxWaitProcesses waits until the children of exe satisfy ok.
func muxWaitProcesses(t *testing.T, exe, what string, timeout time.Duration, ok func([]int) bool) []int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pids := mcptest.Processes(exe)
		if ok(pids) {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: children are %v", what, pids)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// muxMsg is a JSON-RPC message as a client received it; raw is its exact
// bytes, and ID and the other raw members alias nothing decoded.
type muxMsg struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	raw []byte
	at  time.Time // when the client got it
}

func (m muxMsg) isResponse() bool { return m.Method == "" && (m.Result != nil || m.Error != nil) }

func parseMuxMsg(data []byte) (muxMsg, error) {
	var m muxMsg
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("%v: %s", err, data)
	}
	m.raw = data
	m.at = time.Now()
	return m, nil
}

// muxStats is what muxchild's stats method answers.
type muxStats struct {
	Methods  map[string]int    `json:"methods"`
	IDs      []json.RawMessage `json:"ids"`
	Requests []struct {
		Method string          `json:"method"`
		ID     json.RawMessage `json:"id"`
	} `json:"requests"`
	Subscribe   map[string]int    `json:"subscribe"`
	Unsubscribe map[string]int    `json:"unsubscribe"`
	SetLevel    []string          `json:"setLevel"`
	Cancelled   []json.RawMessage `json:"cancelled"`
	Pid         int               `json:"pid"`
}

// seenIDs returns the raw ids the child saw for method.
func (st muxStats) seenIDs(method string) []string {
	var ids []string
	for _, r := range st.Requests {
		if r.Method == method {
			ids = append(ids, string(r.ID))
		}
	}
	return ids
}

func (st muxStats) cancelled() []string {
	var ids []string
	for _, id := range st.Cancelled {
		ids = append(ids, string(id))
	}
	return ids
}

// muxSession is a raw Streamable HTTP client session.
type muxSession struct {
	url     string // the endpoint
	id      string // Mcp-Session-Id
	version string
	nextID  int
}

// muxPost sends a POST as a conforming client does.
func muxPost(ctx context.Context, url, session, version, body string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if session != "" {
		req.Header.Set(headerSessionID, session)
	}
	if version != "" {
		req.Header.Set("MCP-Protocol-Version", version)
	}
	return http.DefaultClient.Do(req)
}

// muxEvents reads the data of SSE events from body until it ends; the
// empty data of a priming event is skipped.
func muxEvents(body io.ReadCloser) <-chan []byte {
	ch := make(chan []byte, 64)
	go func() {
		defer close(ch)
		defer body.Close()
		sc := bufio.NewScanner(body)
		sc.Buffer(make([]byte, 0, 64<<10), 64<<20)
		var data [][]byte
		for sc.Scan() {
			line := sc.Bytes()
			switch {
			case len(line) == 0:
				if joined := bytes.Join(data, []byte("\n")); len(joined) > 0 {
					ch <- joined
				}
				data = nil
			case bytes.HasPrefix(line, []byte("data:")):
				d := bytes.TrimPrefix(line[len("data:"):], []byte(" "))
				data = append(data, bytes.Clone(d))
			}
		}
	}()
	return ch
}

// muxOpen opens a session: initialize with the raw id initID and
// protocol version, then notifications/initialized. It returns the
// initialize response.
func muxOpen(ctx context.Context, url, initID, version string) (*muxSession, muxMsg, error) {
	return muxOpenParams(ctx, url, initID, `{"protocolVersion":"`+version+`","capabilities":{"sampling":{}},"clientInfo":{"name":"raw","version":"1"}}`)
}

func muxOpenParams(ctx context.Context, url, initID, params string) (*muxSession, muxMsg, error) {
	version := jsonrpc.StringValue(jsonrpc.Member([]byte(params), "protocolVersion"))
	resp, err := muxPost(ctx, url, "", "", `{"jsonrpc":"2.0","id":`+initID+`,"method":"initialize","params":`+params+`}`)
	if err != nil {
		return nil, muxMsg{}, err
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, muxMsg{}, fmt.Errorf("initialize: %s: %s", resp.Status, body)
	}
	s := &muxSession{url: url, id: resp.Header.Get(headerSessionID), version: version}
	var init muxMsg
	for data := range muxEvents(resp.Body) {
		if init, err = parseMuxMsg(data); err != nil {
			return nil, init, err
		}
	}
	if !init.isResponse() {
		return nil, init, fmt.Errorf("initialize got no response")
	}
	if init.Error != nil {
		return s, init, fmt.Errorf("initialize failed: %s", init.raw)
	}
	if code, err := s.notify(ctx, `{"jsonrpc":"2.0","method":"notifications/initialized"}`); err != nil || code != http.StatusAccepted {
		return nil, init, fmt.Errorf("notifications/initialized: %d %v", code, err)
	}
	return s, init, nil
}

// notify POSTs a message that needs no answer (a notification or a
// response) and returns the status.
func (s *muxSession) notify(ctx context.Context, body string) (int, error) {
	resp, err := muxPost(ctx, s.url, s.id, s.version, body)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// start POSTs a request and returns the messages of its stream as they
// come; the channel is closed when the stream ends.
func (s *muxSession) start(ctx context.Context, body string) (<-chan muxMsg, error) {
	resp, err := muxPost(ctx, s.url, s.id, s.version, body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, &muxStatusError{code: resp.StatusCode, header: resp.Header, body: b}
	}
	return muxMessages(resp.Body), nil
}

type muxStatusError struct {
	code   int
	header http.Header
	body   []byte
}

func (e *muxStatusError) Error() string { return fmt.Sprintf("status %d: %s", e.code, e.body) }

// call POSTs a request and returns everything its stream carried, the
// response last.
func (s *muxSession) call(ctx context.Context, body string) ([]muxMsg, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	ch, err := s.start(ctx, body)
	if err != nil {
		return nil, err
	}
	var msgs []muxMsg
	for m := range ch {
		msgs = append(msgs, m)
	}
	if len(msgs) == 0 || !msgs[len(msgs)-1].isResponse() {
		return msgs, fmt.Errorf("the stream of %s ended without a response (got %d messages)", body, len(msgs))
	}
	return msgs, nil
}

// rpc calls method with a fresh numeric id and returns the response.
func (s *muxSession) rpc(ctx context.Context, method, params string) (muxMsg, error) {
	s.nextID++
	msgs, err := s.call(ctx, `{"jsonrpc":"2.0","id":"rpc-`+strconv.Itoa(s.nextID)+`","method":"`+method+`","params":`+params+`}`)
	if err != nil {
		return muxMsg{}, err
	}
	return msgs[len(msgs)-1], nil
}

func (s *muxSession) stats(t *testing.T) muxStats {
	t.Helper()
	resp, err := s.rpc(t.Context(), "stats", `{}`)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	var st muxStats
	if err := json.Unmarshal(resp.Result, &st); err != nil {
		t.Fatalf("stats: %v: %s", err, resp.raw)
	}
	return st
}

// waitStats polls the child's stats until ok.
func (s *muxSession) waitStats(t *testing.T, what string, ok func(muxStats) bool) muxStats {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		st := s.stats(t)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for the child to see %s: %+v", what, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mustMuxOpen opens a 2025-11-25 session at url, or fails the test.
func mustMuxOpen(t *testing.T, url string) *muxSession {
	t.Helper()
	s, _, err := muxOpen(t.Context(), url, `1`, "2025-11-25")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// muxMessages returns the messages of an event stream as they come; the
// channel is closed when the stream ends.
func muxMessages(body io.ReadCloser) <-chan muxMsg {
	out := make(chan muxMsg, 64)
	go func() {
		defer close(out)
		for data := range muxEvents(body) {
			m, err := parseMuxMsg(data)
			if err != nil {
				m = muxMsg{Method: "<invalid>", raw: data}
			}
			out <- m
		}
	}()
	return out
}

// get opens the session's GET stream; it is closed with ctx.
func (s *muxSession) get(ctx context.Context) (<-chan muxMsg, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set(headerSessionID, s.id)
	req.Header.Set("MCP-Protocol-Version", s.version)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET: %s", resp.Status)
	}
	return muxMessages(resp.Body), nil
}

func (s *muxSession) del(t *testing.T) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodDelete, s.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(headerSessionID, s.id)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("DELETE: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE: %s", resp.Status)
	}
}

// pidOf is the pid of the child the session is on.
func pidOf(t *testing.T, b *Backend, s *muxSession) int {
	t.Helper()
	sess := b.findSession(s.id, principal{})
	if sess == nil {
		t.Fatalf("no session %s", s.id)
	}
	return sess.up.Pid()
}

// expectNothing fails if ch yields a message within d.
func expectNothing(t *testing.T, who string, ch <-chan muxMsg, d time.Duration) {
	t.Helper()
	select {
	case m, ok := <-ch:
		if ok {
			t.Errorf("%s got %s, want nothing", who, m.raw)
		}
	case <-time.After(d):
	}
}

// expectMsg waits for the next message on ch.
func expectMsg(t *testing.T, who string, ch <-chan muxMsg) muxMsg {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatalf("%s: stream ended", who)
		}
		return m
	case <-time.After(3 * time.Second):
		t.Fatalf("%s: nothing within 3s", who)
	}
	return muxMsg{}
}

// TestMuxCrossTalk runs 50 sessions on two children, all using the same
// request ids and progress tokens at once: each gets its own responses and
// progress, ids and tokens restored byte for byte, and the children see
// only unique ids.
func TestMuxCrossTalk(t *testing.T) {
	srv, backend, exe := startMuxBridge(t, PoolConfig{Isolation: IsolationShared, SessionsPerProcess: 25, MinProcesses: 2, MaxProcesses: 2}, nil)
	url := srv.URL + "/mcp"
	muxWaitProcesses(t, exe, "2 children", 5*time.Second, func(p []int) bool { return len(p) == 2 })

	// The same ids and tokens in every session: numbers of any size,
	// negative, 0, strings with escapes, and a string and a number that
	// differ only in their quotes.
	ids := []string{`0`, `9007199254740993`, `-7`, `"1"`, `"s\u00e9ss\"ion\\id"`, `1`, `123456789012345678901234567890`}
	tokens := []string{`"tok"`, `7`, `"tok-2"`, `0`, `"t\u006fk"`, `"tok\n"`, `-1`}

	const sessions = 50
	type seen struct {
		session int
		id      string // the child's id for the request
		tok     string // the child's progress token
	}
	var mu sync.Mutex
	seenByPid := map[int][]seen{}
	all := make([]*muxSession, sessions)
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, init, err := muxOpen(t.Context(), url, `1`, "2025-11-25")
			if err != nil {
				t.Errorf("session %d: %v", i, err)
				return
			}
			if string(init.ID) != `1` {
				t.Errorf("session %d: initialize answered with id %s", i, init.ID)
			}
			all[i] = s
			sess := backend.findSession(s.id, principal{})
			if sess == nil {
				t.Errorf("session %d: not in the backend", i)
				return
			}
			pid := sess.up.Pid()
			var calls sync.WaitGroup
			for k, id := range ids {
				calls.Add(1)
				go func() {
					defer calls.Done()
					params := fmt.Sprintf(`{"who":"session-%d","call":%d, "steps":3,"delayMs":5,"_meta":{"progressToken":%s},"pad":"  \u00e9\t%d "}`, i, k, tokens[k], i)
					msgs, err := s.call(t.Context(), `{"jsonrpc":"2.0","id":`+id+`,"method":"progress","params":`+params+`}`)
					if err != nil {
						t.Errorf("session %d call %s: %v", i, id, err)
						return
					}
					var progress []muxMsg
					for _, m := range msgs[:len(msgs)-1] {
						if m.Method != "notifications/progress" {
							t.Errorf("session %d call %s: got %s on its stream", i, id, m.raw)
							continue
						}
						progress = append(progress, m)
					}
					for n, p := range progress {
						want := fmt.Sprintf(`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":%s,"progress":%d,"total":3}}`, tokens[k], n+1)
						if string(p.raw) != want {
							t.Errorf("session %d call %s: progress\n %s\nwant\n %s", i, id, p.raw, want)
						}
					}
					if len(progress) != 3 {
						t.Errorf("session %d call %s: %d progress notifications, want 3", i, id, len(progress))
					}
					resp := msgs[len(msgs)-1]
					if string(resp.ID) != id {
						t.Errorf("session %d: sent id %s, got the response for %s", i, id, resp.ID)
					}
					var result struct {
						SeenID json.RawMessage `json:"seenId"`
						Params json.RawMessage `json:"params"`
					}
					if err := json.Unmarshal(resp.Result, &result); err != nil {
						t.Errorf("session %d call %s: %v: %s", i, id, err, resp.raw)
						return
					}
					// The child saw our params with only the token changed.
					childTok := jsonrpc.ProgressToken(result.Params)
					if _, ok := jsonrpc.ParseBridgeID(childTok); !ok {
						t.Errorf("session %d call %s: the child saw progress token %s, want a bridge token", i, id, childTok)
						return
					}
					restored := jsonrpc.ApplySplices(result.Params, jsonrpc.Splice{Old: childTok, New: []byte(tokens[k])})
					if string(restored) != params {
						t.Errorf("session %d call %s: the child saw params\n %s\nwant (token aside)\n %s", i, id, result.Params, params)
					}
					if want := `{"jsonrpc":"2.0","id":` + id + `,"result":{"seenId":` + string(result.SeenID) + `,"params":` + string(result.Params) + `}}`; string(resp.raw) != want {
						t.Errorf("session %d: response\n %s\nwant\n %s", i, resp.raw, want)
					}
					mu.Lock()
					seenByPid[pid] = append(seenByPid[pid], seen{session: i, id: string(result.SeenID), tok: string(childTok)})
					mu.Unlock()
				}()
			}
			calls.Wait()
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// Nothing strayed onto a session's GET stream (nor its backlog).
	ctx, cancel := context.WithCancel(t.Context())
	for i, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch, err := s.get(ctx)
			if err != nil {
				t.Errorf("session %d GET: %v", i, err)
				return
			}
			expectNothing(t, fmt.Sprintf("session %d's GET stream", i), ch, 200*time.Millisecond)
		}()
	}
	wg.Wait()
	cancel()

	if pids := mcptest.Processes(exe); len(pids) != 2 {
		t.Errorf("%d children, want 2: %v", len(pids), pids)
	}
	if len(seenByPid) != 2 {
		t.Fatalf("the sessions are on %d children, want 2", len(seenByPid))
	}
	statsOf := map[int]muxStats{}
	for i, s := range all {
		pid := pidOf(t, backend, s)
		if _, ok := statsOf[pid]; !ok {
			statsOf[pid] = s.stats(t)
			if statsOf[pid].Pid != pid {
				t.Errorf("session %d: the bridge says it is on %d, the child is %d", i, pid, statsOf[pid].Pid)
			}
		}
	}
	for pid, st := range statsOf {
		if n := len(seenByPid[pid]); n != 25*len(ids) {
			t.Errorf("child %d answered %d calls, want %d", pid, n, 25*len(ids))
		}
		unique := map[string]bool{}
		for _, id := range st.IDs {
			if unique[string(id)] {
				t.Errorf("child %d saw id %s twice", pid, id)
			}
			unique[string(id)] = true
		}
		tokens := map[string]bool{}
		for _, s := range seenByPid[pid] {
			if !unique[s.id] {
				t.Errorf("child %d: session %d's seenId %s is not among the ids it saw", pid, s.session, s.id)
			}
			if tokens[s.tok] {
				t.Errorf("child %d saw progress token %s twice", pid, s.tok)
			}
			tokens[s.tok] = true
		}
		if st.Methods["initialize"] != 1 || st.Methods["notifications/initialized"] != 1 {
			t.Errorf("child %d saw initialize %d times and notifications/initialized %d times, want 1 and 1",
				pid, st.Methods["initialize"], st.Methods["notifications/initialized"])
		}
		if st.Methods["progress"] != 25*len(ids) {
			t.Errorf("child %d saw %d progress calls, want %d", pid, st.Methods["progress"], 25*len(ids))
		}
	}
}

// TestMuxInitialize checks that only the first session's initialize
// reaches a shared child, and that every later one (concurrent or not,
// raw or the go-sdk client) gets the child's result under its own id.
func TestMuxInitialize(t *testing.T) {
	srv, _, _ := startMuxBridge(t, PoolConfig{Isolation: IsolationShared, MinProcesses: 1, MaxProcesses: 1}, nil)
	url := srv.URL + "/mcp"

	// Concurrent first sessions, while the child takes its time to answer.
	ids := []string{`1`, `"init-2"`, `0`, `9007199254740993`, `"\u0069nit"`, `-3`, `"x\"y"`, `42`}
	type opened struct {
		s    *muxSession
		init muxMsg
	}
	results := make([]opened, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, init, err := muxOpenParams(t.Context(), url, id,
				`{"protocolVersion":"2025-06-18","delayMs":300,"capabilities":{},"clientInfo":{"name":"raw","version":"1"}}`)
			if err != nil {
				t.Errorf("session with initialize id %s: %v", id, err)
				return
			}
			results[i] = opened{s, init}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	first := results[0].init.Result
	for i, r := range results {
		if string(r.init.ID) != ids[i] {
			t.Errorf("initialize %s answered with id %s", ids[i], r.init.ID)
		}
		if want := `{"jsonrpc":"2.0","id":` + ids[i] + `,"result":` + string(first) + `}`; string(r.init.raw) != want {
			t.Errorf("initialize %s: got\n %s\nwant\n %s", ids[i], r.init.raw, want)
		}
	}
	var res struct {
		ProtocolVersion string `json:"protocolVersion"`
		ServerInfo      struct{ Name string }
	}
	if err := json.Unmarshal(first, &res); err != nil || res.ProtocolVersion != "2025-06-18" || res.ServerInfo.Name != "muxchild" {
		t.Errorf("initialize result %s (%v)", first, err)
	}

	// A later session asking another version gets the child's.
	later, init, err := muxOpen(t.Context(), url, `"later"`, "2025-11-25")
	if err != nil {
		t.Fatal(err)
	}
	if string(init.ID) != `"later"` || string(init.Result) != string(first) {
		t.Errorf("later initialize: %s", init.raw)
	}
	if _, err := later.rpc(t.Context(), "ping", `{}`); err != nil {
		t.Errorf("ping: %v", err)
	}

	// Real clients.
	for range 2 {
		c := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: url}, "")
		if got := c.InitializeResult(); got.ProtocolVersion != "2025-06-18" || got.ServerInfo.Name != "muxchild" {
			t.Errorf("go-sdk client: initialize result %+v", got)
		}
		if err := c.Ping(t.Context(), nil); err != nil {
			t.Errorf("go-sdk ping: %v", err)
		}
		tools, err := c.ListTools(t.Context(), nil)
		if err != nil || len(tools.Tools) != 6 {
			t.Errorf("go-sdk tools/list: %v", err)
		}
		c.Close()
	}

	st := results[0].s.stats(t)
	if st.Methods["initialize"] != 1 || st.Methods["notifications/initialized"] != 1 {
		t.Errorf("the child saw initialize %d times and notifications/initialized %d times, want 1 and 1",
			st.Methods["initialize"], st.Methods["notifications/initialized"])
	}
	if st.Methods["ping"] != 3 {
		t.Errorf("the child saw %d pings, want 3", st.Methods["ping"])
	}
	if init := st.seenIDs("initialize"); len(init) != 1 {
		t.Errorf("the child's initialize had ids %v, want one", init)
	} else if _, ok := jsonrpc.ParseBridgeID([]byte(init[0])); !ok {
		t.Errorf("the child's initialize had id %s, want a bridge id", init[0])
	}
}

// TestMuxSubscriptions checks that subscriptions are counted across
// sessions: the child sees the first subscribe and the last unsubscribe,
// and updates reach the subscribed sessions only, on their GET streams.
func TestMuxSubscriptions(t *testing.T) {
	srv, _, _ := startMuxBridge(t, PoolConfig{Isolation: IsolationShared, MinProcesses: 1, MaxProcesses: 1}, nil)
	url := srv.URL + "/mcp"
	ctx := t.Context()
	a, b, c := mustMuxOpen(t, url), mustMuxOpen(t, url), mustMuxOpen(t, url)
	getA, err := a.get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	getB, err := b.get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const uri = "file:///shared.txt"
	for _, s := range []*muxSession{a, b} {
		msgs, err := s.call(ctx, `{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"`+uri+`"}}`)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(msgs[len(msgs)-1].raw); got != `{"jsonrpc":"2.0","id":1,"result":{}}` {
			t.Errorf("subscribe answered %s", got)
		}
	}
	msgs, err := a.call(ctx, `{"jsonrpc":"2.0","id":2,"method":"resources/unsubscribe","params":{"uri":"`+uri+`"}}`)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(msgs[len(msgs)-1].raw); got != `{"jsonrpc":"2.0","id":2,"result":{}}` {
		t.Errorf("unsubscribe answered %s", got)
	}
	st := c.stats(t)
	if st.Subscribe[uri] != 1 || st.Unsubscribe[uri] != 0 {
		t.Errorf("the child saw %d subscribes and %d unsubscribes, want 1 and 0", st.Subscribe[uri], st.Unsubscribe[uri])
	}

	// An update reaches B, still subscribed, and neither A nor C.
	msgs, err = c.call(ctx, `{"jsonrpc":"2.0","id":1,"method":"update","params":{"uri":"`+uri+`"}}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 {
		t.Errorf("C's update call carried %d messages, want only its response", len(msgs))
	}
	m := expectMsg(t, "B's GET stream", getB)
	if want := `{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"` + uri + `"}}`; string(m.raw) != want {
		t.Errorf("B got %s, want %s", m.raw, want)
	}
	expectNothing(t, "A's GET stream", getA, 300*time.Millisecond)

	// The last unsubscribe reaches the child.
	if _, err := b.call(ctx, `{"jsonrpc":"2.0","id":2,"method":"resources/unsubscribe","params":{"uri":"`+uri+`"}}`); err != nil {
		t.Fatal(err)
	}
	st = c.stats(t)
	if st.Subscribe[uri] != 1 || st.Unsubscribe[uri] != 1 {
		t.Errorf("the child saw %d subscribes and %d unsubscribes, want 1 and 1", st.Subscribe[uri], st.Unsubscribe[uri])
	}
	if _, err := c.call(ctx, `{"jsonrpc":"2.0","id":2,"method":"update","params":{"uri":"`+uri+`"}}`); err != nil {
		t.Fatal(err)
	}
	expectNothing(t, "B's GET stream after unsubscribing", getB, 300*time.Millisecond)

	// Sessions that end let go of their subscriptions: the child hears of
	// it when the last subscriber is gone.
	const uri2 = "file:///second.txt"
	for _, s := range []*muxSession{a, b} {
		if _, err := s.call(ctx, `{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"`+uri2+`"}}`); err != nil {
			t.Fatal(err)
		}
	}
	b.del(t)
	time.Sleep(100 * time.Millisecond) // the session lets go of the child asynchronously
	st = c.stats(t)
	if st.Subscribe[uri2] != 1 || st.Unsubscribe[uri2] != 0 {
		t.Errorf("after B ended, the child saw %d subscribes and %d unsubscribes of %s, want 1 and 0", st.Subscribe[uri2], st.Unsubscribe[uri2], uri2)
	}
	a.del(t)
	st = c.waitStats(t, "the unsubscribe of "+uri2, func(st muxStats) bool { return st.Unsubscribe[uri2] > 0 })
	if st.Unsubscribe[uri2] != 1 {
		t.Errorf("the child saw %d unsubscribes of %s, want 1", st.Unsubscribe[uri2], uri2)
	}
}

// muxSDKClient is a go-sdk client that records the log messages it gets.
type muxSDKClient struct {
	*mcp.ClientSession
	logs chan *mcp.LoggingMessageParams
}

func connectMuxSDK(t *testing.T, url string) *muxSDKClient {
	t.Helper()
	c := &muxSDKClient{logs: make(chan *mcp.LoggingMessageParams, 16)}
	client := mcp.NewClient(&mcp.Implementation{Name: "mux-test", Version: "1.0.0"}, &mcp.ClientOptions{
		LoggingMessageHandler: func(_ context.Context, req *mcp.LoggingMessageRequest) { c.logs <- req.Params },
	})
	cs, err := client.Connect(t.Context(), &mcp.StreamableClientTransport{Endpoint: url}, nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	c.ClientSession = cs
	return c
}

// TestMuxLogging checks that the child logs at the most verbose level a
// session asked for, that each session gets only the messages at its own
// level, and that the child's level follows sessions leaving.
func TestMuxLogging(t *testing.T) {
	srv, _, _ := startMuxBridge(t, PoolConfig{Isolation: IsolationShared, MinProcesses: 1, MaxProcesses: 1}, nil)
	url := srv.URL + "/mcp"
	ctx := t.Context()
	a, b := connectMuxSDK(t, url), connectMuxSDK(t, url)
	defer a.Close()
	c := mustMuxOpen(t, url)
	if err := a.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "error"}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "debug"}); err != nil {
		t.Fatal(err)
	}
	st := c.waitStats(t, "two log levels", func(st muxStats) bool { return len(st.SetLevel) >= 2 })
	if !slices.Equal(st.SetLevel, []string{"error", "debug"}) {
		t.Errorf("the child's levels were set to %v, want [error debug]", st.SetLevel)
	}

	if _, err := c.rpc(ctx, "update", `{"uri":"file:///log","level":"info"}`); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-b.logs:
		if got.Level != "info" || got.Data != "update of file:///log" {
			t.Errorf("B got log %+v", got)
		}
	case <-time.After(3 * time.Second):
		t.Error("B (level debug) did not get the info message")
	}
	select {
	case got := <-a.logs:
		t.Errorf("A (level error) got an info message: %+v", got)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := c.rpc(ctx, "update", `{"uri":"file:///log","level":"critical"}`); err != nil {
		t.Fatal(err)
	}
	for name, cl := range map[string]*muxSDKClient{"A": a, "B": b} {
		select {
		case got := <-cl.logs:
			if got.Level != "critical" {
				t.Errorf("%s got log %+v", name, got)
			}
		case <-time.After(3 * time.Second):
			t.Errorf("%s did not get the critical message", name)
		}
	}

	b.Close() // DELETE
	st = c.waitStats(t, "the level set back", func(st muxStats) bool { return len(st.SetLevel) >= 3 })
	if !slices.Equal(st.SetLevel, []string{"error", "debug", "error"}) {
		t.Errorf("the child's levels were set to %v, want [error debug error]", st.SetLevel)
	}
}

// TestMuxServerRequests checks that a request of the child goes to the
// one session with a request in flight, which answers it; with two, the
// child gets an error instead.
func TestMuxServerRequests(t *testing.T) {
	srv, _, _ := startMuxBridge(t, PoolConfig{Isolation: IsolationShared, MinProcesses: 1, MaxProcesses: 1}, nil)
	url := srv.URL + "/mcp"
	ctx := t.Context()
	a, b, c := mustMuxOpen(t, url), mustMuxOpen(t, url), mustMuxOpen(t, url)

	// One session in flight: its client gets the sampling request on the
	// stream of its call, and answers it with a POST.
	ch, err := a.start(ctx, `{"jsonrpc":"2.0","id":"ask-1","method":"ask","params":{"prompt":"hello"}}`)
	if err != nil {
		t.Fatal(err)
	}
	req := expectMsg(t, "A's ask stream", ch)
	if req.Method != "sampling/createMessage" || req.ID == nil || !strings.Contains(string(req.Params), `"text":"hello"`) {
		t.Fatalf("A got %s, want the sampling request", req.raw)
	}
	answer := `{"jsonrpc":"2.0","id":` + string(req.ID) + `,"result":{"role":"assistant","model":"m","content":{"type":"text","text":"echo: hello"}}}`
	if code, err := a.notify(ctx, answer); err != nil || code != http.StatusAccepted {
		t.Fatalf("posting the answer: %d %v", code, err)
	}
	resp := expectMsg(t, "A's ask stream", ch)
	if want := `{"jsonrpc":"2.0","id":"ask-1","result":{"answer":{"result":{"role":"assistant","model":"m","content":{"type":"text","text":"echo: hello"}}}}}`; string(resp.raw) != want {
		t.Errorf("ask answered\n %s\nwant\n %s", resp.raw, want)
	}
	// B and C saw nothing of it.
	for name, s := range map[string]*muxSession{"B": b, "C": c} {
		get, err := s.get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		expectNothing(t, name+"'s GET stream", get, 200*time.Millisecond)
	}

	// Two sessions in flight: the child cannot be answered by either.
	slow, err := b.start(ctx, `{"jsonrpc":"2.0","id":"slow-1","method":"slow","params":{"ms":1500}}`)
	if err != nil {
		t.Fatal(err)
	}
	c.waitStats(t, "the slow call", func(st muxStats) bool { return st.Methods["slow"] == 1 })
	msgs, err := a.call(ctx, `{"jsonrpc":"2.0","id":"ask-2","method":"ask","params":{"prompt":"again"}}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 {
		t.Errorf("A's second ask carried %d messages, want only the response: %s", len(msgs), msgs[0].raw)
	}
	var result struct {
		Answer struct {
			Error *struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		} `json:"answer"`
	}
	if err := json.Unmarshal(msgs[len(msgs)-1].Result, &result); err != nil || result.Answer.Error == nil ||
		!strings.Contains(result.Answer.Error.Message, "cannot tell which") {
		t.Errorf("with two sessions in flight, the child got %s, want an error", msgs[len(msgs)-1].raw)
	}
	select {
	case m := <-slow:
		if string(m.ID) != `"slow-1"` || m.Result == nil {
			t.Errorf("the slow call got %s", m.raw)
		}
	case <-time.After(5 * time.Second):
		t.Error("the slow call got no answer")
	}
}

// TestMuxSessionEndCancels checks that a session that ends with a request
// in flight has the child told, with the id the child knows it by.
func TestMuxSessionEndCancels(t *testing.T) {
	srv, _, _ := startMuxBridge(t, PoolConfig{Isolation: IsolationShared, MinProcesses: 1, MaxProcesses: 1}, nil)
	url := srv.URL + "/mcp"
	ctx := t.Context()
	a := mustMuxOpen(t, url)
	c := mustMuxOpen(t, url)
	ch, err := a.start(ctx, `{"jsonrpc":"2.0","id":"slow-1","method":"slow","params":{"ms":10000}}`)
	if err != nil {
		t.Fatal(err)
	}
	st := c.waitStats(t, "the slow call", func(st muxStats) bool { return st.Methods["slow"] == 1 })
	seenID := st.seenIDs("slow")[0]
	if seenID == `"slow-1"` {
		t.Errorf("the child saw the session's own id")
	}
	a.del(t)
	st = c.waitStats(t, "the cancellation", func(st muxStats) bool { return len(st.Cancelled) > 0 })
	if !slices.Equal(st.cancelled(), []string{seenID}) {
		t.Errorf("the child got cancellations for %v, want [%s]", st.cancelled(), seenID)
	}
	select {
	case m, ok := <-ch:
		if ok {
			t.Errorf("the ended session's stream carried %s", m.raw)
		}
	case <-time.After(3 * time.Second):
		t.Error("the ended session's stream stayed open")
	}
	if _, err := a.start(ctx, `{"jsonrpc":"2.0","id":2,"method":"echo","params":{}}`); !isStatus(err, http.StatusNotFound) {
		t.Errorf("a request on the ended session: %v, want 404", err)
	}
}

// TestMuxClientCancel checks that a client's cancellation reaches the
// child under the child's id for the request, and that a cancelled
// request (which the child, as the spec asks, does not answer) no longer
// counts as in flight for routing the child's own requests.
func TestMuxClientCancel(t *testing.T) {
	srv, _, _ := startMuxBridge(t, PoolConfig{Isolation: IsolationShared, MinProcesses: 1, MaxProcesses: 1}, nil)
	url := srv.URL + "/mcp"
	ctx := t.Context()
	a := mustMuxOpen(t, url)
	b := mustMuxOpen(t, url)
	c := mustMuxOpen(t, url)
	callCtx, cancelCall := context.WithCancel(ctx)
	if _, err := a.start(callCtx, `{"jsonrpc":"2.0","id":5,"method":"slow","params":{"ms":10000}}`); err != nil {
		t.Fatal(err)
	}
	seenID := c.waitStats(t, "the slow call", func(st muxStats) bool { return st.Methods["slow"] == 1 }).seenIDs("slow")[0]
	if code, err := a.notify(ctx, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5,"reason":"user"}}`); err != nil || code != http.StatusAccepted {
		t.Fatalf("cancel: %d %v", code, err)
	}
	st := c.waitStats(t, "the cancellation", func(st muxStats) bool { return len(st.Cancelled) > 0 })
	if !slices.Equal(st.cancelled(), []string{seenID}) {
		t.Errorf("the child got cancellations for %v, want [%s]", st.cancelled(), seenID)
	}
	cancelCall() // the client stops waiting, as clients do after cancelling

	// B alone has a request in flight now: the child's request is its.
	ch, err := b.start(ctx, `{"jsonrpc":"2.0","id":1,"method":"ask","params":{"prompt":"only B"}}`)
	if err != nil {
		t.Fatal(err)
	}
	m := expectMsg(t, "B's ask stream", ch)
	if m.Method != "sampling/createMessage" {
		// Mux.cancel forwards the cancellation but leaves the request in
		// m.requests and its member's inflight count up, so A still counts
		// as busy, forever, since the child never answers.
		t.Errorf("BUG: after A cancelled its only request, B's ask got %s instead of the sampling request (A still counts as in flight)", m.raw)
		return
	}
	if code, err := b.notify(ctx, `{"jsonrpc":"2.0","id":`+string(m.ID)+`,"result":{"role":"assistant","model":"m","content":{"type":"text","text":"ok"}}}`); err != nil || code != http.StatusAccepted {
		t.Fatalf("posting the answer: %d %v", code, err)
	}
	m = expectMsg(t, "B's ask stream", ch)
	if !strings.Contains(string(m.Result), `"text":"ok"`) {
		t.Errorf("B's ask answered %s", m.raw)
	}
}

func isStatus(err error, code int) bool {
	var se *muxStatusError
	return errors.As(err, &se) && se.code == code
}

// TestMuxChildCrash kills a shared child with requests in flight: they
// fail at once, their sessions end, the other child's sessions are
// unaffected, and a new child takes the dead one's place.
func TestMuxChildCrash(t *testing.T) {
	srv, backend, exe := startMuxBridge(t, PoolConfig{Isolation: IsolationShared, SessionsPerProcess: 10, MinProcesses: 2, MaxProcesses: 2}, nil)
	url := srv.URL + "/mcp"
	ctx := t.Context()
	muxWaitProcesses(t, exe, "2 children", 5*time.Second, func(p []int) bool { return len(p) == 2 })
	deadline := time.Now().Add(5 * time.Second)
	for st := sharedStats(backend); st.Idle != 2; st = sharedStats(backend) {
		if time.Now().After(deadline) {
			t.Fatalf("pool stats %+v, want 2 idle children", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	byPid := map[int][]*muxSession{}
	for range 6 {
		s := mustMuxOpen(t, url)
		pid := pidOf(t, backend, s)
		byPid[pid] = append(byPid[pid], s)
	}
	if len(byPid) != 2 {
		t.Fatalf("6 sessions on %d children, want 2", len(byPid))
	}
	var victim, survivor int
	for pid, ss := range byPid {
		if len(ss) != 3 {
			t.Errorf("child %d has %d sessions, want 3", pid, len(ss))
		}
		if victim == 0 {
			victim = pid
		} else {
			survivor = pid
		}
	}

	type inflight struct {
		id string
		ch <-chan muxMsg
	}
	var doomed, spared []inflight
	for i, s := range byPid[victim] {
		for k := range 2 {
			id := fmt.Sprintf(`"v%d-%d"`, i, k)
			ch, err := s.start(ctx, `{"jsonrpc":"2.0","id":`+id+`,"method":"slow","params":{"ms":30000}}`)
			if err != nil {
				t.Fatal(err)
			}
			doomed = append(doomed, inflight{id, ch})
		}
	}
	for i, s := range byPid[survivor] {
		id := fmt.Sprintf(`"s%d"`, i)
		ch, err := s.start(ctx, `{"jsonrpc":"2.0","id":`+id+`,"method":"slow","params":{"ms":800}}`)
		if err != nil {
			t.Fatal(err)
		}
		spared = append(spared, inflight{id, ch})
	}
	byPid[victim][0].waitStats(t, "the slow calls", func(st muxStats) bool { return st.Methods["slow"] == 6 })

	killed := time.Now()
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var slowest time.Duration
	for _, r := range doomed {
		select {
		case m, ok := <-r.ch:
			if !ok {
				t.Errorf("request %s: the stream ended without a response", r.id)
				continue
			}
			if string(m.ID) != r.id || m.Error == nil || m.Error.Code != jsonrpc.CodeServerExited {
				t.Errorf("request %s got %s, want a server-exited error", r.id, m.raw)
			}
			d := m.at.Sub(killed)
			if d > time.Second {
				t.Errorf("request %s failed %v after the kill, want within 1s", r.id, d)
			}
			slowest = max(slowest, d)
		case <-time.After(time.Until(killed.Add(2 * time.Second))):
			t.Errorf("request %s got no response within 2s of the kill", r.id)
		}
	}
	t.Logf("the %d requests on the killed child failed within %v", len(doomed), slowest)
	for i, s := range byPid[victim] {
		deadline := time.Now().Add(2 * time.Second)
		for {
			_, err := s.start(ctx, `{"jsonrpc":"2.0","id":9,"method":"echo","params":{}}`)
			if isStatus(err, http.StatusNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("session %d on the dead child: %v, want 404", i, err)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	for _, r := range spared {
		select {
		case m := <-r.ch:
			if string(m.ID) != r.id || m.Result == nil {
				t.Errorf("request %s on the other child got %s", r.id, m.raw)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("request %s on the other child got no answer", r.id)
		}
	}
	for i, s := range byPid[survivor] {
		msgs, err := s.call(ctx, `{"jsonrpc":"2.0","id":10,"method":"echo","params":{"after":"crash"}}`)
		if err != nil || msgs[len(msgs)-1].Result == nil {
			t.Errorf("session %d on the other child: %v", i, err)
		}
	}

	pids := muxWaitProcesses(t, exe, "a replacement child", 5*time.Second, func(p []int) bool {
		return len(p) == 2 && !slices.Contains(p, victim) && slices.Contains(p, survivor)
	})
	fresh := pids[0]
	if fresh == survivor {
		fresh = pids[1]
	}
	deadline = time.Now().Add(5 * time.Second)
	for st := sharedStats(backend); st.Idle+st.Busy != 2; st = sharedStats(backend) {
		if time.Now().After(deadline) {
			t.Fatalf("pool stats %+v, want 2 children", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	s := mustMuxOpen(t, url)
	if pid := pidOf(t, backend, s); pid != fresh {
		t.Errorf("a new session went to child %d, want the fresh one %d", pid, fresh)
	}
	if resp, err := s.rpc(ctx, "echo", `{}`); err != nil || resp.Result == nil {
		t.Errorf("echo on the fresh child: %v", err)
	}
}

// TestMuxPlacement checks where sessions go: spread over the children up
// to SessionsPerProcess each, 503 when all are full, room again when one
// ends, and a child beyond MinProcesses stopped once idle.
func TestMuxPlacement(t *testing.T) {
	srv, backend, exe := startMuxBridge(t, PoolConfig{Isolation: IsolationShared,
		SessionsPerProcess: 2, MinProcesses: 1, MaxProcesses: 2,
		AcquireTimeout: 300 * time.Millisecond, ProcessIdleTimeout: 200 * time.Millisecond,
	}, nil)
	url := srv.URL + "/mcp"
	ctx := t.Context()
	byPid := map[int][]*muxSession{}
	for range 4 {
		s := mustMuxOpen(t, url)
		pid := pidOf(t, backend, s)
		byPid[pid] = append(byPid[pid], s)
	}
	if len(byPid) != 2 {
		t.Fatalf("4 sessions on %d children, want 2", len(byPid))
	}
	var pids []int
	for pid, ss := range byPid {
		pids = append(pids, pid)
		if len(ss) != 2 {
			t.Errorf("child %d has %d sessions, want 2", pid, len(ss))
		}
	}

	start := time.Now()
	resp, err := muxPost(ctx, url, "", "", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a 5th session: %s, Retry-After %q; want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
		t.Errorf("the 5th session was refused after %v, want about the AcquireTimeout (300ms)", d)
	}

	byPid[pids[0]][0].del(t)
	s, _, err := muxOpen(ctx, url, `1`, "2025-11-25")
	if err != nil {
		t.Fatalf("a session after one ended: %v", err)
	}
	if pid := pidOf(t, backend, s); pid != pids[0] {
		t.Errorf("the new session went to child %d, want %d, which had room", pid, pids[0])
	}
	byPid[pids[0]][0] = s

	// The children are both needed; once one has no session it is stopped
	// after IdleTimeout, and the other keeps serving.
	time.Sleep(400 * time.Millisecond)
	if got := mcptest.Processes(exe); len(got) != 2 {
		t.Errorf("children with sessions: %v, want 2", got)
	}
	for _, s := range byPid[pids[1]] {
		s.del(t)
	}
	muxWaitProcesses(t, exe, "the idle child stopped", 3*time.Second, func(p []int) bool {
		return len(p) == 1 && p[0] == pids[0]
	})
	if st := sharedStats(backend); st.Busy != 1 || st.Idle != 0 {
		t.Errorf("pool stats %+v, want 1 busy child", st)
	}
	for _, s := range byPid[pids[0]] {
		if resp, err := s.rpc(ctx, "echo", `{}`); err != nil || resp.Result == nil {
			t.Errorf("echo on the remaining child: %v", err)
		}
	}
}

// TestMuxLineBreaksInRequest sends a request pretty-printed over several
// lines, which is valid JSON: the child, which reads one message a line,
// must still get it whole. Shared and isolated sessions alike.
func TestMuxLineBreaksInRequest(t *testing.T) {
	for name, bcfg := range map[string]BackendConfig{
		"shared":   {Pool: PoolConfig{Isolation: IsolationShared, MinProcesses: 1, MaxProcesses: 1}},
		"isolated": {Pool: PoolConfig{MinIdle: new(1)}},
	} {
		t.Run(name, func(t *testing.T) {
			srv, _, _ := startMuxBackend(t, bcfg, nil)
			s, _, err := muxOpen(t.Context(), srv.URL+"/mcp", `1`, "2025-11-25")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			msgs, err := s.call(ctx, "{\n  \"jsonrpc\": \"2.0\",\r\n  \"id\": 7,\n  \"method\": \"echo\",\n  \"params\": {\"a\": 1}\n}\n")
			if err != nil {
				// The bridge writes the message to the child's stdin as it
				// came, line breaks and all: the child gets five lines of
				// broken JSON and never answers.
				t.Errorf("BUG: a pretty-printed request got no answer: %v", err)
				return
			}
			if m := msgs[len(msgs)-1]; string(m.ID) != "7" || m.Result == nil {
				t.Errorf("got %s", m.raw)
			}
		})
	}
}

// TestMuxInitializeAfterFirstSessionLeft ends the first session while the
// child is still initializing: a later session must still be initialized,
// and the child must not be told to cancel initialize, which the spec
// forbids.
func TestMuxInitializeAfterFirstSessionLeft(t *testing.T) {
	t.Run("http", func(t *testing.T) {
		srv, _, _ := startMuxBridge(t, PoolConfig{Isolation: IsolationShared, MinProcesses: 1, MaxProcesses: 1}, nil)
		url := srv.URL + "/mcp"
		// The first client starts initializing, and gives up before the
		// slow child answers.
		resp, err := muxPost(t.Context(), url, "", "", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","delayMs":500,"capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
		if err != nil {
			t.Fatal(err)
		}
		first := &muxSession{url: url, id: resp.Header.Get(headerSessionID), version: "2025-11-25"}
		first.del(t)
		resp.Body.Close()
		time.Sleep(700 * time.Millisecond) // the child answers meanwhile

		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		s, init, err := muxOpen(ctx, url, `2`, "2025-11-25")
		if err != nil {
			t.Errorf("BUG: a session after the first one left during initialize: %v", err)
			return
		}
		if string(init.ID) != "2" || init.Result == nil {
			t.Errorf("initialize answered %s", init.raw)
		}
		if st := s.stats(t); st.Methods["initialize"] != 1 || len(st.Cancelled) != 0 {
			t.Errorf("the child saw %d initialize and cancellations for %v; want 1 and none", st.Methods["initialize"], st.cancelled())
		}
	})
}

// TestMuxIdleSessionMemory measures what an idle shared session costs the
// bridge: heap and goroutines, for 1000 sessions on one child.
func TestMuxIdleSessionMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	const n = 1000
	srv, backend, _ := startMuxBridge(t, PoolConfig{Isolation: IsolationShared, SessionsPerProcess: n + 1, MinProcesses: 1, MaxProcesses: 1}, zap.NewNop())
	url := srv.URL + "/mcp"
	// The first session initializes the child, outside the measurement.
	if _, _, err := muxOpen(t.Context(), url, `1`, "2025-11-25"); err != nil {
		t.Fatal(err)
	}
	measure := func() (uint64, int) {
		var ms runtime.MemStats
		for range 3 {
			runtime.GC()
		}
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc, runtime.NumGoroutine()
	}
	http.DefaultClient.CloseIdleConnections()
	heap0, g0 := measure()
	for range n {
		if _, _, err := muxOpen(t.Context(), url, `1`, "2025-11-25"); err != nil {
			t.Fatal(err)
		}
	}
	http.DefaultClient.CloseIdleConnections()
	time.Sleep(100 * time.Millisecond) // closed connections' goroutines exit
	heap1, g1 := measure()
	if got := backend.sessionCount(); got != n+1 {
		t.Fatalf("%d sessions, want %d", got, n+1)
	}
	race := ""
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "-race" && s.Value == "true" {
				race = " (race detector on: heap inflated)"
			}
		}
	}
	t.Logf("%d idle shared sessions: heap +%d bytes (%d bytes/session), goroutines %+d%s",
		n, int64(heap1)-int64(heap0), (int64(heap1)-int64(heap0))/n, g1-g0, race)
	if g1-g0 > 10 {
		t.Errorf("idle sessions hold %d goroutines, want none", g1-g0)
	}
}

// childStats counts a backend's shared children: busy ones carry sessions.
type childStats struct{ Idle, Busy int }

func sharedStats(b *Backend) childStats {
	idle, busy := b.placement.(*placement.Shared).Load()
	return childStats{Idle: idle, Busy: busy}
}
