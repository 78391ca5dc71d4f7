package jsonrpc

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
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

// BenchmarkRewriteRequest measures putting a bridge id and token on a request.
func BenchmarkRewriteRequest(b *testing.B) {
	const bid = BridgeID(1042)
	for _, bc := range []struct {
		name string
		msg  []byte
	}{
		{"tools_call", []byte(mcptest.ToolsCallRequest)},
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
		{"result", []byte(mcptest.ToolsCallResult)},
		{"result_64KiB", mcptest.LargeToolsCallResult(64 << 10)},
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
