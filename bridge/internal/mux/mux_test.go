package mux

import (
	"strings"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// TestInitializeAfterFirstSessionLeft is TestMuxInitializeAfterFirstSessionLeft
// of the bridge package, on a Mux over a stand-in child: a session that
// leaves while the child initializes must not cancel initialize, and a
// later session is answered from its result.
func TestInitializeAfterFirstSessionLeft(t *testing.T) {
	h := newMuxHarness(t)
	a, _ := h.attach()
	h.send(t, a, `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}`)
	lines := h.stdin.take()
	if len(lines) != 1 {
		t.Fatalf("the child got %q", lines)
	}
	initID := jsonrpc.Member(lines[0], "id")
	a.Release()
	for _, line := range h.stdin.take() {
		t.Errorf("BUG: the child was sent %s after the first session left during initialize; initialize must not be cancelled", line)
	}
	h.mux.fromChild([]byte(`{"jsonrpc":"2.0","id":` + string(initID) + `,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"x","version":"1"}}}`))
	b, got := h.attach()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.send(t, b, `{"jsonrpc":"2.0","id":7,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}`)
	}()
	select {
	case <-done:
		msgs := got()
		if len(msgs) != 1 || !strings.HasPrefix(string(msgs[0]), `{"jsonrpc":"2.0","id":7,"result":{"protocolVersion"`) {
			t.Errorf("the second session's initialize got %q", msgs)
		}
	case <-time.After(time.Second):
		// Release replaced the request by muxRequest{}, losing its init
		// flag: the answer did not settle initState, which stays
		// initPending, and later sessions wait on initDone until the
		// child exits.
		t.Error("BUG: the second session's initialize is stuck: the first session's leaving lost the pending initialize")
	}
}

// TestCancelledRequestNotInFlight is the minimal form of the cancel bug
// of the bridge package's TestMuxClientCancel, on a Mux over a stand-in
// child.
func TestCancelledRequestNotInFlight(t *testing.T) {
	h := newMuxHarness(t)
	a, _ := h.attach()
	b, gotB := h.attach()
	h.send(t, a, `{"jsonrpc":"2.0","id":1,"method":"slow","params":{}}`)
	h.send(t, a, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}`)
	lines := h.stdin.take()
	if len(lines) != 2 {
		t.Fatalf("the child got %q", lines)
	}
	if want := `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":` + string(jsonrpc.Member(lines[0], "id")) + `}}`; string(lines[1]) != want {
		t.Errorf("the child got %s, want %s", lines[1], want)
	}
	// The child does not answer a cancelled request. B calls, and the
	// child asks its client something: B is the only one in flight.
	h.send(t, b, `{"jsonrpc":"2.0","id":1,"method":"ask","params":{}}`)
	h.stdin.take()
	h.mux.fromChild([]byte(`{"jsonrpc":"2.0","id":"srv-1","method":"sampling/createMessage","params":{}}`))
	if got := gotB(); len(got) != 1 || !strings.Contains(string(got[0]), "sampling/createMessage") {
		t.Errorf("BUG: B, the only session with a request in flight, got %q; the child was sent %q", got, h.stdin.take())
	}
}

// TestInitializeAfterExit: sessions that send initialize once the child
// has exited get an error at once. The first used to leave initialize
// pending for good, and every later session waited on it forever (seen
// as a hang of TestCrashLoopBreaker in shared isolation).
func TestInitializeAfterExit(t *testing.T) {
	h := newMuxHarness(t)
	a, _ := h.attach()
	b, _ := h.attach()
	h.mux.child.(recordingChild).Kill()
	deadline := time.Now().Add(5 * time.Second)
	for {
		h.mux.mu.Lock()
		exited := h.mux.exited
		h.mux.mu.Unlock()
		if exited {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the Mux did not see the child exit")
		}
		time.Sleep(time.Millisecond)
	}
	for _, mem := range []*Member{a, b} {
		done := make(chan error, 1)
		go func() {
			msg := []byte(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}`)
			env, _ := jsonrpc.ParseEnvelope(msg)
			done <- mem.Send(msg, &env)
		}()
		select {
		case err := <-done:
			if err != ErrExited {
				t.Errorf("initialize after the exit: %v, want ErrExited", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("initialize after the exit is stuck")
		}
	}
}
