package bridge

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// sseReader reads the events of a stream, one at a time; comments are
// skipped.
type sseReader struct{ events <-chan sseEvent }

func newSSEReader(body io.Reader) *sseReader { return &sseReader{readSSE(body)} }

// next returns the next event, or false once the stream has ended.
func (r *sseReader) next() (sseEvent, bool) {
	for {
		select {
		case ev, ok := <-r.events:
			if !ok {
				return ev, false
			}
			if ev.HasData || ev.HasID || ev.Retry != "" {
				return ev, true
			}
		case <-time.After(15 * time.Second):
			return sseEvent{}, false
		}
	}
}

// startResumeBridge serves muxchild with one child per session.
func startResumeBridge(t *testing.T, cfg ServerConfig) *httptest.Server {
	t.Helper()
	srv, _ := startBridgeWith(t, []string{mcptest.Build(t, muxChildPackage)}, BackendConfig{}, cfg)
	return srv
}

// resumeGet opens a GET stream, resuming after lastID when given.
func resumeGet(t *testing.T, url string, s *muxSession, lastID string) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set(headerSessionID, s.id)
	req.Header.Set("MCP-Protocol-Version", s.version)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// progressValue reads the progress of a notifications/progress event.
func progressValue(data string) string {
	return string(jsonrpc.Member(jsonrpc.Member([]byte(data), "params"), "progress"))
}

// TestResumePOSTStream breaks a POST stream while the child reports
// progress, and resumes it with GET and Last-Event-ID: every notification
// arrives exactly once, in order, then the response.
func TestResumePOSTStream(t *testing.T) {
	srv := startResumeBridge(t, ServerConfig{})
	url := srv.URL + "/mcp"
	s, _, err := muxOpen(t.Context(), url, "0", "2025-11-25")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cut := context.WithCancel(t.Context())
	resp, err := muxPost(ctx, url, s.id, s.version,
		`{"jsonrpc":"2.0","id":5,"method":"progress","params":{"steps":30,"delayMs":10,"_meta":{"progressToken":"p"}}}`)
	if err != nil {
		t.Fatal(err)
	}
	events := newSSEReader(resp.Body)
	var got []string
	lastID := ""
	for len(got) < 5 {
		ev, ok := events.next()
		if !ok {
			t.Fatal("stream ended early")
		}
		lastID = ev.ID
		if ev.Data != "" {
			got = append(got, progressValue(ev.Data))
		}
	}
	cut() // the client loses its connection mid-call
	resp.Body.Close()
	time.Sleep(100 * time.Millisecond)

	resumed := resumeGet(t, url, s, lastID)
	defer resumed.Body.Close()
	if resumed.StatusCode != http.StatusOK {
		t.Fatalf("resume: %s", resumed.Status)
	}
	events = newSSEReader(resumed.Body)
	expectPrimedAgain(t, events, lastID)
	response := ""
	for {
		ev, ok := events.next()
		if !ok {
			break
		}
		if strings.Contains(ev.Data, `"result"`) {
			response = ev.Data
			break
		}
		got = append(got, progressValue(ev.Data))
	}
	want := make([]string, 30) // muxchild counts progress from 1
	for i := range want {
		want[i] = fmt.Sprint(i + 1)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("progress across the break: %v\nwant %v", got, want)
	}
	if !strings.Contains(response, `"id":5`) {
		t.Errorf("no response after resuming: %q", response)
	}
}

// TestResumeGETStream breaks the GET stream while notifications flow, and
// resumes it: each arrives exactly once, in order.
func TestResumeGETStream(t *testing.T) {
	srv := startResumeBridge(t, ServerConfig{})
	url := srv.URL + "/mcp"
	s, _, err := muxOpen(t.Context(), url, "0", "2025-11-25")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.rpc(t.Context(), "resources/subscribe", `{"uri":"test://r"}`); err != nil {
		t.Fatal(err)
	}
	get := resumeGet(t, url, s, "")
	events := newSSEReader(get.Body)
	primed, _ := events.next()
	update := func(i int) {
		if _, err := s.rpc(t.Context(), "update", fmt.Sprintf(`{"uri":"test://r/%d"}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	lastID := primed.ID
	for i := range 3 {
		update(i)
		ev, _ := events.next()
		got, lastID = append(got, jsonrpc.StringValue(jsonrpc.Member(jsonrpc.Member([]byte(ev.Data), "params"), "uri"))), ev.ID
	}
	get.Body.Close() // the connection breaks
	for i := 3; i < 8; i++ {
		update(i) // sent while the client is away
	}
	resumed := resumeGet(t, url, s, lastID)
	defer resumed.Body.Close()
	events = newSSEReader(resumed.Body)
	expectPrimedAgain(t, events, lastID)
	for len(got) < 8 {
		ev, ok := events.next()
		if !ok {
			t.Fatal("resumed stream ended")
		}
		got = append(got, jsonrpc.StringValue(jsonrpc.Member(jsonrpc.Member([]byte(ev.Data), "params"), "uri")))
	}
	for i, uri := range got {
		if uri != fmt.Sprintf("test://r/%d", i) {
			t.Fatalf("updates across the break: %v", got)
		}
	}
}

// TestResumeBadEventID says what a Last-Event-ID that names nothing of the
// session gets: 400, and no event of any stream.
func TestResumeBadEventID(t *testing.T) {
	srv := startResumeBridge(t, ServerConfig{})
	url := srv.URL + "/mcp"
	a, _, err := muxOpen(t.Context(), url, "0", "2025-11-25")
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := muxOpen(t.Context(), url, "0", "2025-11-25")
	if err != nil {
		t.Fatal(err)
	}
	// An event id of session a.
	get := resumeGet(t, url, a, "")
	primed, _ := newSSEReader(get.Body).next()
	get.Body.Close()
	tag, _, _ := strings.Cut(primed.ID, "_")
	for name, id := range map[string]string{
		"another session's id": primed.ID,
		"unknown stream":       "x",
		"malformed":            tag + "_zz_1",
		"stream never opened":  tag + "_99_1",
	} {
		t.Run(name, func(t *testing.T) {
			s := b
			if name != "another session's id" {
				s = a
			}
			resp := resumeGet(t, url, s, id)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "cannot resume") {
				t.Errorf("Last-Event-ID %q: %s %s, want 400", id, resp.Status, body)
			}
		})
	}
}

// TestLegacySSEResume: a legacy SSE client that reconnects with
// Last-Event-ID within the grace gets its session and the events it
// missed; after the grace, the session is gone.
func TestLegacySSEResume(t *testing.T) {
	srv := startResumeBridge(t, ServerConfig{ResumeGrace: 500 * time.Millisecond})
	open := func(lastID string) (*http.Response, *sseReader, string) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/sse", nil)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			return resp, nil, ""
		}
		r := newSSEReader(resp.Body)
		endpoint, _ := r.next()
		return resp, r, endpoint.Data
	}
	post := func(endpoint, body string) int {
		resp, err := http.Post(srv.URL+endpoint, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	resp, events, endpoint := open("")
	post(endpoint, `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`)
	initEv, _ := events.next()
	post(endpoint, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	post(endpoint, `{"jsonrpc":"2.0","id":1,"method":"progress","params":{"steps":20,"delayMs":15,"_meta":{"progressToken":1}}}`)
	var got []string
	lastID := initEv.ID
	for len(got) < 4 {
		ev, _ := events.next()
		got, lastID = append(got, progressValue(ev.Data)), ev.ID
	}
	resp.Body.Close() // the connection breaks mid-call

	resp, events, endpoint2 := open(lastID)
	if events == nil {
		t.Fatalf("resume within the grace: %s", resp.Status)
	}
	if endpoint2 != endpoint {
		t.Errorf("resumed endpoint %q, want the session's %q", endpoint2, endpoint)
	}
	for {
		ev, ok := events.next()
		if !ok {
			t.Fatal("resumed stream ended")
		}
		if strings.Contains(ev.Data, `"result"`) {
			break
		}
		got = append(got, progressValue(ev.Data))
	}
	if len(got) != 20 || got[0] != "1" || got[19] != "20" {
		t.Errorf("progress across the break: %v", got)
	}
	resp.Body.Close()
	time.Sleep(1500 * time.Millisecond) // past the grace
	if code := post(endpoint, `{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`); code != http.StatusNotFound {
		t.Errorf("after the grace, posting to the session got %d, want 404", code)
	}
	if resp, _, _ := open(lastID); resp.StatusCode != http.StatusNotFound {
		t.Errorf("resuming after the grace: %s, want 404", resp.Status)
	}
}

// TestPolling: with PollInterval, a long call's stream is closed with a
// retry field after a while, and the client collects the rest by resuming.
func TestPolling(t *testing.T) {
	srv := startResumeBridge(t, ServerConfig{PollInterval: 100 * time.Millisecond})
	url := srv.URL + "/mcp"
	s, _, err := muxOpen(t.Context(), url, "0", "2025-11-25")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := muxPost(t.Context(), url, s.id, s.version,
		`{"jsonrpc":"2.0","id":2,"method":"progress","params":{"steps":10,"delayMs":40,"_meta":{"progressToken":"p"}}}`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	lastID, retries := "", 0
	for body := resp.Body; ; {
		events := newSSEReader(body)
		done := false
		for {
			ev, ok := events.next()
			if !ok {
				break
			}
			if ev.Retry != "" {
				retries++
				continue
			}
			if ev.ID != "" {
				lastID = ev.ID
			}
			if strings.Contains(ev.Data, `"result"`) {
				done = true
			} else if ev.Data != "" {
				got = append(got, progressValue(ev.Data))
			}
		}
		body.Close()
		if done {
			break
		}
		if retries > 20 {
			t.Fatal("never finished")
		}
		body = resumeGet(t, url, s, lastID).Body
	}
	if retries == 0 {
		t.Error("the stream was never closed for polling")
	}
	if strings.Join(got, ",") != "1,2,3,4,5,6,7,8,9,10" {
		t.Errorf("progress while polling: %v", got)
	}
}

// expectPrimedAgain reads the first event of a resumed stream: a priming
// event (no data) whose id is new, so that clients that count progress by
// event id see progress on every reconnection.
func expectPrimedAgain(t *testing.T, events *sseReader, lastID string) {
	t.Helper()
	ev, ok := events.next()
	if !ok || ev.Data != "" || ev.ID == "" || ev.ID == lastID {
		t.Fatalf("the resumed stream opens with %+v, want a priming event with an id other than %q", ev, lastID)
	}
}
