package mux

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/child"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"go.uber.org/zap"
)

// fuzzID makes a valid JSON-RPC id (or, with another kind, a progress
// token) out of fuzzed bytes: a number of any size, a string with escapes,
// or the bytes themselves when they already are a JSON scalar.
func fuzzID(kind byte, b []byte) []byte {
	switch kind % 5 {
	case 0: // an integer of any size, maybe negative
		digits := make([]byte, 0, len(b)+1)
		for _, c := range b {
			digits = append(digits, '0'+c%10)
		}
		digits = bytes.TrimLeft(digits, "0")
		if len(digits) == 0 {
			return []byte("0")
		}
		if kind&0x80 != 0 {
			digits = append([]byte("-"), digits...)
		}
		return digits
	case 1: // any string, as encoding/json quotes it
		q, _ := json.Marshal(string(b))
		return q
	case 2: // a string spelled with escapes
		var s strings.Builder
		s.WriteByte('"')
		for i, c := range b {
			switch {
			case c == '"':
				s.WriteString(`\"`)
			case c == '\\':
				s.WriteString(`\\`)
			case c == '/' && i%2 == 0:
				s.WriteString(`\/`)
			case c < 0x20 || c >= 0x7f || i%3 == 0:
				s.WriteString(`\u00`)
				s.WriteString(strconv.FormatUint(uint64(c)>>4, 16))
				s.WriteString(strconv.FormatUint(uint64(c)&15, 16))
			default:
				s.WriteByte(c)
			}
		}
		s.WriteByte('"')
		return []byte(s.String())
	case 3: // the bytes as they are, when they are a JSON string or a number without a fraction (which no request id has)
		if len(b) > 0 && json.Valid(b) && bytes.Equal(bytes.TrimSpace(b), b) && (b[0] == '"' || (b[0] == '-' || b[0] >= '0' && b[0] <= '9') && bytes.IndexByte(b, '.') < 0) {
			return b
		}
		return []byte("0")
	default:
		return []byte("0")
	}
}

// fuzzRequest builds a JSON-RPC request around id and params (and a
// progress token, if tok is not nil) in one of a few layouts.
func fuzzRequest(layout byte, id, params, tok []byte) []byte {
	if tok != nil {
		params = []byte(`{"_meta":{"progressToken":` + string(tok) + `},"p":` + string(params) + `}`)
	}
	switch layout % 4 {
	case 0:
		return []byte(`{"jsonrpc":"2.0","id":` + string(id) + `,"method":"echo","params":` + string(params) + `}`)
	case 1: // params first
		return []byte(`{"params":` + string(params) + `,"method":"echo","jsonrpc":"2.0","id":` + string(id) + `}`)
	case 2: // whitespace everywhere
		return []byte(" {\n\t\"jsonrpc\" : \"2.0\" ,\r\n \"id\" :\t" + string(id) + " , \"method\" : \"echo\" , \"params\" : " + string(params) + " } ")
	default: // an escaped key
		return []byte(`{"jsonrpc":"2.0","method":"echo","\u0069d":` + string(id) + `,"params":` + string(params) + `}`)
	}
}

// noLineBreaks returns b with CR and LF (outside strings only JSON
// whitespace, inside strings invalid) turned into spaces.
func noLineBreaks(b []byte) []byte {
	out := bytes.Clone(b)
	for i, c := range out {
		if c == '\n' || c == '\r' {
			out[i] = ' '
		}
	}
	return out
}

// FuzzRewriteRestore checks that the multiplexer gives a request a bridge
// id and token on the way to the child, and that the response and progress
// the child sends back reach the session with the session's own id and
// token, byte for byte: first with applySplices alone, then through a Mux
// over a stand-in child.
func FuzzRewriteRestore(f *testing.F) {
	f.Add(byte(0), []byte("1"), []byte(`{}`), byte(0), []byte(nil), byte(0))
	f.Add(byte(0), []byte("9007199254740993"), []byte(`{"a":1}`), byte(1), []byte("tok"), byte(1))
	f.Add(byte(0x80), []byte("123456789012345678901234567890"), []byte(`{"a": [1, 2, {"b": null}]}`), byte(0), []byte("77"), byte(2))
	f.Add(byte(1), []byte("str\"ing\\ with \u2028 escapes"), []byte(`not json`), byte(2), []byte("t\x00k"), byte(3))
	f.Add(byte(2), []byte("é/\x01"), []byte(`{"_meta":{"progressToken":1}}`), byte(3), []byte(`{"x":[1]}`), byte(0))
	f.Add(byte(3), []byte(`-5e+10`), []byte(`{"id":"inner","params":{}}`), byte(3), []byte(`null`), byte(1))
	f.Add(byte(3), []byte(`"\ud83d\ude00"`), []byte(` { "k" : "v" } `), byte(1), []byte(""), byte(2))
	h := newMuxHarness(f)
	f.Fuzz(func(t *testing.T, idKind byte, idBytes, params []byte, tokKind byte, tokBytes []byte, layout byte) {
		id := fuzzID(idKind, idBytes)
		if !json.Valid(params) || len(bytes.TrimSpace(params)) == 0 || bytes.TrimSpace(params)[0] != '{' {
			q, _ := json.Marshal(string(params))
			params = []byte(`{"data":` + string(q) + `}`)
		}
		var tok []byte
		switch tokKind % 4 {
		case 1:
			tok = fuzzID(0, tokBytes)
		case 2:
			tok = fuzzID(1, tokBytes)
		case 3: // any JSON value at all, when the bytes are one
			if json.Valid(tokBytes) {
				tok = bytes.TrimSpace(tokBytes)
			}
		}
		msg := fuzzRequest(layout, id, params, tok)
		// A raw line break is JSON whitespace, but the child reads lines:
		// TestMuxLineBreaksInRequest covers that separately.
		msg = noLineBreaks(msg)
		if !json.Valid(msg) {
			t.Fatalf("built invalid JSON: %s", msg)
		}
		env, err := jsonrpc.ParseEnvelope(msg)
		if err != nil || env.Kind() != jsonrpc.KindRequest {
			t.Fatalf("built no request (%v, kind %d): %s", err, env.Kind(), msg)
		}
		if !bytes.Equal(env.ID, id) {
			t.Fatalf("ParseEnvelope id = %s, want %s", env.ID, id)
		}
		envTok := jsonrpc.ProgressToken(env.Params)
		if tok != nil && !bytes.Equal(envTok, noLineBreaks(tok)) {
			t.Fatalf("progress token = %s, want %s", envTok, tok)
		}
		tok = envTok // the fuzzed params may hold a token of their own

		// applySplices alone: to bridge id and back.
		const bid = jsonrpc.BridgeID(1 << 40)
		splices := []jsonrpc.Splice{{Old: env.ID, New: bid.Raw()}}
		if tok != nil {
			splices = append(splices, jsonrpc.Splice{Old: envTok, New: bid.Raw()})
		}
		out := jsonrpc.ApplySplices(msg, splices...)
		if !json.Valid(out) {
			t.Fatalf("rewritten message is not JSON: %s", out)
		}
		outEnv, err := jsonrpc.ParseEnvelope(out)
		if err != nil || string(outEnv.ID) != string(bid.Raw()) {
			t.Fatalf("rewritten id = %s (%v), want %s: %s", outEnv.ID, err, bid.Raw(), out)
		}
		back := []jsonrpc.Splice{{Old: outEnv.ID, New: id}}
		if tok != nil {
			outTok := jsonrpc.ProgressToken(outEnv.Params)
			if string(outTok) != string(bid.Raw()) {
				t.Fatalf("rewritten token = %s, want %s", outTok, bid.Raw())
			}
			back = append(back, jsonrpc.Splice{Old: outTok, New: tok})
		}
		if restored := jsonrpc.ApplySplices(out, back...); !bytes.Equal(restored, msg) {
			t.Fatalf("restored message differs:\n got %s\nwant %s", restored, msg)
		}

		// Through a Mux: what the child gets, and what the session gets back.
		mem, got := h.attach()
		defer mem.Release()
		h.stdin.take()
		if err := mem.Send(bytes.Clone(msg), &env); err != nil {
			t.Fatalf("Send: %v", err)
		}
		lines := h.stdin.take()
		if len(lines) != 1 {
			t.Fatalf("the child got %d lines, want 1: %q", len(lines), lines)
		}
		fwd := lines[0]
		fwdEnv, err := jsonrpc.ParseEnvelope(fwd)
		if err != nil || !json.Valid(fwd) {
			t.Fatalf("the child got an invalid message (%v): %s", err, fwd)
		}
		fwdID, ok := jsonrpc.ParseBridgeID(fwdEnv.ID)
		if !ok {
			t.Fatalf("the child got id %s, not a bridge id", fwdEnv.ID)
		}
		back = []jsonrpc.Splice{{Old: fwdEnv.ID, New: id}}
		fwdTok := jsonrpc.ProgressToken(fwdEnv.Params)
		if tok != nil {
			if _, ok := jsonrpc.ParseBridgeID(fwdTok); !ok {
				t.Fatalf("the child got progress token %s, not a bridge token", fwdTok)
			}
			back = append(back, jsonrpc.Splice{Old: fwdTok, New: tok})
		}
		if restored := jsonrpc.ApplySplices(fwd, back...); !bytes.Equal(restored, msg) {
			t.Fatalf("the child's message, restored, differs:\n got %s\nwant %s", restored, msg)
		}
		if tok != nil {
			h.mux.fromChild([]byte(`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":` + string(fwdTok) + `,"progress":1}}`))
		}
		h.mux.fromChild([]byte(`{"jsonrpc":"2.0","id":` + string(fwdID.Raw()) + `,"result":{"seen":` + string(fwdEnv.Params) + `}}`))
		delivered := got()
		want := []string{`{"jsonrpc":"2.0","id":` + string(id) + `,"result":{"seen":` + string(fwdEnv.Params) + `}}`}
		if tok != nil {
			want = append([]string{`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":` + string(tok) + `,"progress":1}}`}, want...)
		}
		if len(delivered) != len(want) {
			t.Fatalf("the session got %q, want %q", delivered, want)
		}
		for i := range want {
			if string(delivered[i]) != want[i] {
				t.Fatalf("the session got\n %s\nwant\n %s", delivered[i], want[i])
			}
		}
	})
}

// FuzzParseEnvelopeRoute feeds whatever a child may write (any valid JSON)
// to a Mux's router: with no session, and with one that has a request in
// flight. Nothing may panic, and what a session gets must still be JSON.
func FuzzParseEnvelopeRoute(f *testing.F) {
	for _, seed := range []string{
		`{}`, `[]`, `null`, `1`, `"x"`,
		`{"jsonrpc":"2.0","id":1,"result":{}}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m"}}`,
		`{"jsonrpc":"2.0","id":"1","result":{}}`,
		`{"jsonrpc":"2.0","id":0,"result":{}}`,
		`{"jsonrpc":"2.0","id":-1,"result":{}}`,
		`{"jsonrpc":"2.0","id":99999999999999999999,"result":{}}`,
		`{"jsonrpc":"2.0","id":null,"error":{}}`,
		`{"jsonrpc":"2.0","id":"srv-1","method":"sampling/createMessage","params":{}}`,
		`{"jsonrpc":"2.0","id":{},"method":"x"}`,
		`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}`,
		`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":{"a":1}}}`,
		`{"jsonrpc":"2.0","method":"notifications/progress","params":[1]}`,
		`{"jsonrpc":"2.0","method":"notifications/progress"}`,
		`{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///a"}}`,
		`{"jsonrpc":"2.0","method":"notifications/resources/updated","params":"x"}`,
		`{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"error","data":1}}`,
		`{"jsonrpc":"2.0","method":"notifications/message","params":{"level":7}}`,
		`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"srv-1"}}`,
		`{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}`,
		`{"jsonrpc":"2.0","method":1}`,
		`{"jsonrpc":"2.0","method":"\u006eotifications/progress","params":{"progressToken":2}}`,
		`{"jsonrpc":"2.0","\u0069d":2,"result":{}}`,
		`{"jsonrpc":"2.0","id":2,"id":3,"result":1,"result":2}`,
	} {
		f.Add([]byte(seed))
	}
	empty, h := newMuxHarness(f), newMuxHarness(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		// No session at all.
		empty.mux.fromChild(bytes.Clone(data))
		empty.mux.onOversize(bytes.Clone(data))
		empty.stdin.take()

		// A session with requests in flight, a token, a subscription and
		// a log level.
		h.stdin.take()
		mem, got := h.attach()
		for _, msg := range []string{
			`{"jsonrpc":"2.0","id":"a","method":"echo","params":{"_meta":{"progressToken":"t"}}}`,
			`{"jsonrpc":"2.0","id":2,"method":"echo","params":{}}`,
			`{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"file:///a"}}`,
			`{"jsonrpc":"2.0","id":4,"method":"logging/setLevel","params":{"level":"debug"}}`,
		} {
			env, err := jsonrpc.ParseEnvelope([]byte(msg))
			if err != nil {
				t.Fatal(err)
			}
			if err := mem.Send([]byte(msg), &env); err != nil {
				t.Fatal(err)
			}
		}
		h.mux.fromChild([]byte(`{"jsonrpc":"2.0","id":3,"result":{}}`)) // the subscribe
		got()
		h.mux.fromChild(bytes.Clone(data))
		h.mux.onOversize(bytes.Clone(data))
		for _, msg := range got() {
			if !json.Valid(msg) {
				t.Errorf("the session got invalid JSON: %s", msg)
			}
		}
		for _, line := range h.stdin.take() {
			if !json.Valid(line) {
				t.Errorf("the child got invalid JSON: %s", line)
			}
		}
		mem.Release()
	})
}

// muxHarness is a Mux over a stand-in child: a real process (sleep) that
// never writes, whose stdin is replaced by a recorder. The test plays the
// child by calling fromChild itself.
type muxHarness struct {
	mux   *Mux
	stdin *lineRecorder
}

// newMuxHarness starts a Mux over a stand-in child; it is stopped at
// cleanup.
func newMuxHarness(tb testing.TB) *muxHarness {
	tb.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		tb.Skip("no sleep program for a stand-in child")
	}
	proc, err := child.Start(child.Config{Argv: []string{sleep, "3600"}}, zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	rec := &lineRecorder{}
	exited := make(chan struct{})
	m := New(recordingChild{proc, rec}, zap.NewNop(), func(*Mux) { close(exited) }, func() {})
	tb.Cleanup(func() {
		proc.Kill() // its stdout ends: the Mux sees the child exit
		<-exited
	})
	return &muxHarness{mux: m, stdin: rec}
}

// recordingChild is a child whose stdin is a lineRecorder.
type recordingChild struct {
	*child.Process
	stdin *lineRecorder
}

func (recordingChild) ExitReason() string { return "exited" }

func (c recordingChild) Send(msg []byte) error {
	_, err := c.stdin.Write(append(msg, '\n'))
	return err
}

// attach adds a session; got returns (and forgets) what it was delivered.
func (h *muxHarness) attach() (mem *Member, got func() [][]byte) {
	var mu sync.Mutex
	var msgs [][]byte
	mem = h.mux.Attach("", func(msg []byte) {
		mu.Lock()
		msgs = append(msgs, bytes.Clone(msg))
		mu.Unlock()
	}, func() {}, func(*Member) {})
	if mem == nil {
		panic("Attach refused a session")
	}
	return mem, func() [][]byte {
		mu.Lock()
		defer mu.Unlock()
		out := msgs
		msgs = nil
		return out
	}
}

// send has a session send a message, parsed as the session would.
func (h *muxHarness) send(tb testing.TB, mem *Member, msg string) {
	tb.Helper()
	env, err := jsonrpc.ParseEnvelope([]byte(msg))
	if err != nil {
		tb.Fatal(err)
	}
	if err := mem.Send([]byte(msg), &env); err != nil {
		tb.Fatalf("Send %s: %v", msg, err)
	}
}

// lineRecorder records the lines written to it; it stands in for a child's
// stdin.
type lineRecorder struct {
	mu    sync.Mutex
	lines [][]byte
	part  []byte
}

func (r *lineRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.part = append(r.part, p...)
	for {
		i := bytes.IndexByte(r.part, '\n')
		if i < 0 {
			return len(p), nil
		}
		r.lines = append(r.lines, bytes.Clone(r.part[:i]))
		r.part = r.part[i+1:]
	}
}

func (r *lineRecorder) Close() error { return nil }

// take returns (and forgets) the lines recorded so far.
func (r *lineRecorder) take() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.lines
	r.lines = nil
	return out
}
