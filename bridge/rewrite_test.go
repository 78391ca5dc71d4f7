package bridge

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
)

func TestRewriteOffsetIn(t *testing.T) {
	msg := []byte(`{"jsonrpc":"2.0","id":42}`)
	i := bytes.Index(msg, []byte("42"))
	if got := offsetIn(msg, msg[i:i+2]); got != i {
		t.Errorf("offsetIn = %d, want %d", got, i)
	}
	if got := offsetIn(msg, msg[:0]); got != 0 {
		t.Errorf("offsetIn of the start = %d, want 0", got)
	}
	if got := offsetIn(msg, msg[len(msg):]); got != len(msg) {
		t.Errorf("offsetIn of the end = %d, want %d", got, len(msg))
	}
	// A message that is itself a slice of a larger buffer, with spare
	// capacity past its end (as a line of a read buffer).
	buf := make([]byte, 10, 100)
	buf = append(buf, `{"id":"abc"}`...)
	line := buf[10:]
	env, err := ParseEnvelope(line)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := offsetIn(line, env.ID), strings.Index(string(line), `"abc"`); got != want {
		t.Errorf("offsetIn in a sub-buffer = %d, want %d", got, want)
	}
	// Values found by Member, nested.
	msg = []byte(`{"params":{"_meta":{"progressToken":"tok"}},"id":7}`)
	tok := ProgressToken(Member(msg, "params"))
	if got, want := offsetIn(msg, tok), bytes.Index(msg, []byte(`"tok"`)); got != want {
		t.Errorf("offsetIn of a nested value = %d, want %d", got, want)
	}
}

func TestRewriteApplySplices(t *testing.T) {
	for _, tc := range []struct {
		name, msg string
		olds      []string // values to replace, found in msg by their first occurrence
		news      []string
		want      string
	}{
		{"none", `{"id":1}`, nil, nil, `{"id":1}`},
		{"grow", `{"id":1,"method":"m"}`, []string{`1`}, []string{`"a long string id"`}, `{"id":"a long string id","method":"m"}`},
		{"shrink", `{"id":"a long string id","method":"m"}`, []string{`"a long string id"`}, []string{`3`}, `{"id":3,"method":"m"}`},
		{"at start", `"abc"`, []string{`"abc"`}, []string{`12`}, `12`},
		{"whole", `123`, []string{`123`}, []string{`"x"`}, `"x"`},
		{"empty new", `[1,2,3]`, []string{`2`}, []string{``}, `[1,,3]`},
		{"in order", `{"id":"x","params":{"_meta":{"progressToken":"y"}}}`, []string{`"x"`, `"y"`}, []string{`1`, `2`},
			`{"id":1,"params":{"_meta":{"progressToken":2}}}`},
		{"out of order", `{"params":{"_meta":{"progressToken":"y"}},"id":"x"}`, []string{`"x"`, `"y"`}, []string{`10`, `20`},
			`{"params":{"_meta":{"progressToken":20}},"id":10}`},
		{"adjacent", `[1,22]`, []string{`1`, `22`}, []string{`"a"`, `"b"`}, `["a","b"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := []byte(tc.msg)
			orig := bytes.Clone(msg)
			var splices []Splice
			for i, old := range tc.olds {
				at := bytes.Index(msg, []byte(old))
				splices = append(splices, Splice{Old: msg[at : at+len(old)], New: []byte(tc.news[i])})
			}
			got := ApplySplices(msg, splices...)
			if string(got) != tc.want {
				t.Errorf("applySplices = %s, want %s", got, tc.want)
			}
			if !bytes.Equal(msg, orig) {
				t.Errorf("the original was modified: %s", msg)
			}
			if cap(got) <= len(got) {
				t.Errorf("no room for the newline Process.Send appends: len %d cap %d", len(got), cap(got))
			}
			// The result does not alias the original.
			if len(got) > 0 {
				got[0] = 'X'
				if !bytes.Equal(msg, orig) {
					t.Error("the result aliases the original")
				}
			}
		})
	}
}

func TestRewriteParseBridgeID(t *testing.T) {
	for _, id := range []BridgeID{1, 2, 10, 12345, 1<<53 + 1, 1<<63 - 1} {
		got, ok := ParseBridgeID(id.Raw())
		if !ok || got != id {
			t.Errorf("parseBridgeID(%s) = %d, %v; want %d, true", id.Raw(), got, ok, id)
		}
		if string(id.Raw()) != strconv.FormatInt(int64(id), 10) {
			t.Errorf("raw(%d) = %s", id, id.Raw())
		}
	}
	// Ids the bridge never writes: a session's own, or the child's.
	for _, raw := range []string{
		``, `0`, `-1`, `-0`, `"1"`, `"abc"`, `1.0`, `1e3`, `1.5`, `null`, `true`, `{}`, `[1]`, ` 1`, `1 `,
		`9223372036854775808`, `99999999999999999999`, `-9223372036854775808`,
	} {
		if id, ok := ParseBridgeID([]byte(raw)); ok {
			t.Errorf("parseBridgeID(%q) = %d, true; want false", raw, id)
		}
	}
}

func TestRewriteResponseWithResult(t *testing.T) {
	got := ResponseWithResult([]byte(`"x\"y"`), []byte(`{"a": [1, 2]}`))
	if want := `{"jsonrpc":"2.0","id":"x\"y","result":{"a": [1, 2]}}`; string(got) != want {
		t.Errorf("responseWithResult = %s, want %s", got, want)
	}
}

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
	case 3: // the bytes as they are, when they are a JSON number or string
		if len(b) > 0 && json.Valid(b) && bytes.Equal(bytes.TrimSpace(b), b) && (b[0] == '"' || b[0] == '-' || b[0] >= '0' && b[0] <= '9') {
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
	f.Add(byte(3), []byte(`-0.5e+10`), []byte(`{"id":"inner","params":{}}`), byte(3), []byte(`null`), byte(1))
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
		env, err := ParseEnvelope(msg)
		if err != nil || env.Kind() != KindRequest {
			t.Fatalf("built no request (%v, kind %d): %s", err, env.Kind(), msg)
		}
		if !bytes.Equal(env.ID, id) {
			t.Fatalf("ParseEnvelope id = %s, want %s", env.ID, id)
		}
		envTok := ProgressToken(env.Params)
		if tok != nil && !bytes.Equal(envTok, noLineBreaks(tok)) {
			t.Fatalf("progress token = %s, want %s", envTok, tok)
		}
		tok = envTok // the fuzzed params may hold a token of their own

		// applySplices alone: to bridge id and back.
		const bid = BridgeID(1 << 40)
		splices := []Splice{{Old: env.ID, New: bid.Raw()}}
		if tok != nil {
			splices = append(splices, Splice{Old: envTok, New: bid.Raw()})
		}
		out := ApplySplices(msg, splices...)
		if !json.Valid(out) {
			t.Fatalf("rewritten message is not JSON: %s", out)
		}
		outEnv, err := ParseEnvelope(out)
		if err != nil || string(outEnv.ID) != string(bid.Raw()) {
			t.Fatalf("rewritten id = %s (%v), want %s: %s", outEnv.ID, err, bid.Raw(), out)
		}
		back := []Splice{{Old: outEnv.ID, New: id}}
		if tok != nil {
			outTok := ProgressToken(outEnv.Params)
			if string(outTok) != string(bid.Raw()) {
				t.Fatalf("rewritten token = %s, want %s", outTok, bid.Raw())
			}
			back = append(back, Splice{Old: outTok, New: tok})
		}
		if restored := ApplySplices(out, back...); !bytes.Equal(restored, msg) {
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
		fwdEnv, err := ParseEnvelope(fwd)
		if err != nil || !json.Valid(fwd) {
			t.Fatalf("the child got an invalid message (%v): %s", err, fwd)
		}
		fwdID, ok := ParseBridgeID(fwdEnv.ID)
		if !ok {
			t.Fatalf("the child got id %s, not a bridge id", fwdEnv.ID)
		}
		back = []Splice{{Old: fwdEnv.ID, New: id}}
		fwdTok := ProgressToken(fwdEnv.Params)
		if tok != nil {
			if _, ok := ParseBridgeID(fwdTok); !ok {
				t.Fatalf("the child got progress token %s, not a bridge token", fwdTok)
			}
			back = append(back, Splice{Old: fwdTok, New: tok})
		}
		if restored := ApplySplices(fwd, back...); !bytes.Equal(restored, msg) {
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
			env, err := ParseEnvelope([]byte(msg))
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
	child, err := StartProcess(ProcessConfig{Argv: []string{sleep, "3600"}}, zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	rec := &lineRecorder{}
	child.writeMu.Lock()
	child.stdin = rec // before the Mux exists, so no Send races this
	child.writeMu.Unlock()
	exited := make(chan struct{})
	m := NewMux(child, zap.NewNop(), func(*Mux) { close(exited) }, func() {})
	tb.Cleanup(func() {
		child.Kill() // its stdout ends: the Mux sees the child exit
		<-exited
	})
	return &muxHarness{mux: m, stdin: rec}
}

// attach adds a session; got returns (and forgets) what it was delivered.
func (h *muxHarness) attach() (mem *MuxMember, got func() [][]byte) {
	var mu sync.Mutex
	var msgs [][]byte
	mem = h.mux.Attach(func(msg []byte) {
		mu.Lock()
		msgs = append(msgs, bytes.Clone(msg))
		mu.Unlock()
	}, func() {})
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
func (h *muxHarness) send(tb testing.TB, mem *MuxMember, msg string) {
	tb.Helper()
	env, err := ParseEnvelope([]byte(msg))
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

// BenchmarkRewriteRequest measures putting a bridge id and token on a request.
func BenchmarkRewriteRequest(b *testing.B) {
	const bid = BridgeID(1042)
	for _, bc := range []struct {
		name string
		msg  []byte
	}{
		{"tools_call", []byte(toolsCallRequest)},
		{"with_progress_token", []byte(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"test_simple_text","arguments":{},"_meta":{"progressToken":"call-7"}}}`)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			env, err := ParseEnvelope(bc.msg)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(bc.msg)))
			b.ReportAllocs()
			var out []byte
			for b.Loop() {
				out, _ = TagRequest(bc.msg, &env, bid)
			}
			if id := Member(out, "id"); string(id) != string(bid.Raw()) {
				b.Errorf("rewritten id = %s, want %s", id, bid.Raw())
			}
		})
	}
}

// BenchmarkRewriteResponse measures restoring a session's id in a result, as routeResponse does.
func BenchmarkRewriteResponse(b *testing.B) {
	clientID := []byte("7")
	for _, bc := range []struct {
		name string
		msg  []byte
	}{
		{"result", []byte(toolsCallResult)},
		{"result_64KiB", largeToolsCallResult(64 << 10)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			msg := bytes.Replace(bc.msg, []byte(`"id":7`), []byte(`"id":1042`), 1) // as the child answers
			env, err := ParseEnvelope(msg)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			var out []byte
			for b.Loop() {
				if _, ok := ParseBridgeID(env.ID); !ok {
					b.Fatalf("parseBridgeID(%s) failed", env.ID)
				}
				out = ApplySplices(msg, Splice{Old: env.ID, New: clientID})
			}
			if !bytes.Equal(out, bc.msg) {
				b.Errorf("restored result differs from the original: %.80s", out)
			}
		})
	}
}
