package jsonrpc

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// kindNames names the kinds in failure messages.
var kindNames = map[Kind]string{
	KindInvalid:      "invalid",
	KindRequest:      "request",
	KindNotification: "notification",
	KindResponse:     "response",
}

// TestParseEnvelope checks what each message is taken for and which raw
// tokens the envelope keeps. Every bad message must come out KindInvalid,
// which the bridge answers with 400 (from a client) or drops (from a child).
func TestParseEnvelope(t *testing.T) {
	for _, tc := range []struct {
		name   string
		msg    string
		kind   Kind
		id     string // raw id token; "" means none
		method string // decoded method name
	}{
		// Requests, with every kind of id a request may carry.
		{"request with string id", `{"jsonrpc":"2.0","id":"abc","method":"tools/list"}`, KindRequest, `"abc"`, "tools/list"},
		{"request with number id", `{"jsonrpc":"2.0","id":42,"method":"ping"}`, KindRequest, `42`, "ping"},
		{"request with id 0", `{"jsonrpc":"2.0","id":0,"method":"ping"}`, KindRequest, `0`, "ping"},
		{"request with negative id", `{"jsonrpc":"2.0","id":-7,"method":"ping"}`, KindRequest, `-7`, "ping"},
		// The id is kept as its raw token: no float64 rounding, so the
		// response matches the request byte for byte.
		{"request with id beyond int64 and float64 precision", `{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"ping"}`, KindRequest, `123456789012345678901234567890`, "ping"},
		{"request with id in exponent form", `{"jsonrpc":"2.0","id":1e3,"method":"ping"}`, KindRequest, `1e3`, "ping"},
		{"request with empty string id", `{"jsonrpc":"2.0","id":"","method":"ping"}`, KindRequest, `""`, "ping"},
		{"request with escaped id keeps the escapes", `{"jsonrpc":"2.0","id":"a\"b\u00e9","method":"ping"}`, KindRequest, `"a\"b\u00e9"`, "ping"},
		{"members in any order and with whitespace", " \n{ \"method\" : \"ping\" ,\t\"id\" : 1 , \"jsonrpc\" : \"2.0\" }\r\n", KindRequest, `1`, "ping"},
		{"unknown members are skipped", `{"x":{"id":9,"method":"no"},"jsonrpc":"2.0","y":[1,{"result":1}],"id":2,"method":"m"}`, KindRequest, `2`, "m"},
		{"escaped method is decoded", `{"jsonrpc":"2.0","id":1,"method":"tools\/list"}`, KindRequest, `1`, "tools/list"},
		{"unicode-escaped method is decoded", `{"jsonrpc":"2.0","id":1,"method":"\u0070ing"}`, KindRequest, `1`, "ping"},
		{"escaped member names are decoded", `{"\u006asonrpc":"2.0","\u0069d":5,"meth\u006fd":"ping"}`, KindRequest, `5`, "ping"},
		{"braces and quotes inside strings do not end params", `{"jsonrpc":"2.0","id":1,"method":"m","params":{"s":"}]\"{[","t":["}"],"u":{"v":"\\"}}}`, KindRequest, `1`, "m"},
		{"empty method name is still a request", `{"jsonrpc":"2.0","id":1,"method":""}`, KindRequest, `1`, ""},
		// A duplicated member counts by its last occurrence, as in
		// encoding/json and JavaScript, so the bridge and the child agree.
		{"duplicate id: the last one counts", `{"jsonrpc":"2.0","id":1,"method":"ping","id":2}`, KindRequest, `2`, "ping"},

		// Notifications.
		{"notification", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, KindNotification, "", "notifications/initialized"},
		{"notification with params", `{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}`, KindNotification, "", "notifications/progress"},

		// Responses.
		{"result response", `{"jsonrpc":"2.0","id":"abc","result":{}}`, KindResponse, `"abc"`, ""},
		{"result response with id 0", `{"jsonrpc":"2.0","id":0,"result":null}`, KindResponse, `0`, ""},
		{"error response", `{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}`, KindResponse, `3`, ""},
		// JSON-RPC answers a request whose id could not be read with id null.
		{"error response with id null", `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}`, KindResponse, `null`, ""},

		// Invalid messages: the bridge refuses them.
		{"invalid: no jsonrpc member", `{"id":1,"method":"ping"}`, KindInvalid, `1`, "ping"},
		{"invalid: jsonrpc 1.0", `{"jsonrpc":"1.0","id":1,"method":"ping"}`, KindInvalid, `1`, "ping"},
		{"invalid: jsonrpc as a number", `{"jsonrpc":2.0,"id":1,"method":"ping"}`, KindInvalid, `1`, "ping"},
		{"invalid: request with id null", `{"jsonrpc":"2.0","id":null,"method":"ping"}`, KindInvalid, `null`, "ping"},
		{"invalid: request with a fraction id", `{"jsonrpc":"2.0","id":1.5,"method":"ping"}`, KindInvalid, `1.5`, "ping"},
		{"invalid: id is an object", `{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}`, KindInvalid, `{"a":1}`, "ping"},
		{"invalid: id is an array", `{"jsonrpc":"2.0","id":[1],"result":{}}`, KindInvalid, `[1]`, ""},
		{"invalid: id is a boolean", `{"jsonrpc":"2.0","id":true,"method":"ping"}`, KindInvalid, `true`, "ping"},
		{"invalid: method is a number", `{"jsonrpc":"2.0","id":1,"method":1}`, KindInvalid, `1`, ""},
		{"invalid: method is null", `{"jsonrpc":"2.0","id":1,"method":null}`, KindInvalid, `1`, ""},
		{"invalid: method with a result", `{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}`, KindInvalid, `1`, "ping"},
		{"invalid: method with an error", `{"jsonrpc":"2.0","method":"ping","error":{}}`, KindInvalid, "", "ping"},
		{"invalid: both result and error", `{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}`, KindInvalid, `1`, ""},
		{"invalid: response without id", `{"jsonrpc":"2.0","result":{}}`, KindInvalid, "", ""},
		{"invalid: neither method nor result nor error", `{"jsonrpc":"2.0","id":1}`, KindInvalid, `1`, ""},
		{"invalid: empty object", `{}`, KindInvalid, "", ""},
		{"invalid: members only nested, not top-level", `{"params":{"jsonrpc":"2.0","id":1,"method":"ping"}}`, KindInvalid, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, err := ParseEnvelope([]byte(tc.msg))
			if err != nil {
				t.Fatalf("ParseEnvelope(%s): %v", tc.msg, err)
			}
			if got := env.Kind(); got != tc.kind {
				t.Errorf("Kind() = %s, want %s", kindNames[got], kindNames[tc.kind])
			}
			if string(env.ID) != tc.id || (tc.id == "") != (env.ID == nil) {
				t.Errorf("ID = %q, want %q", env.ID, tc.id)
			}
			if got := env.MethodName(); got != tc.method {
				t.Errorf("MethodName() = %q, want %q", got, tc.method)
			}
			// The envelope's tokens are the ones Member finds.
			for name, got := range map[string][]byte{"id": env.ID, "method": env.Method, "params": env.Params, "result": env.Result, "error": env.Error} {
				if want := Member([]byte(tc.msg), name); !bytes.Equal(got, want) || (got == nil) != (want == nil) {
					t.Errorf("envelope %s = %q, Member = %q", name, got, want)
				}
			}
		})
	}
}

// TestParseEnvelopeRawTokens checks that params, result and error are kept
// as exact raw slices of the message, nested braces and all.
func TestParseEnvelopeRawTokens(t *testing.T) {
	params := `{"s":"}]\"{[","n":[1,[2,{"x":"]"}]],"e":{}}`
	msg := `{"jsonrpc":"2.0","id":1,"method":"m","params":` + params + `}`
	env, err := ParseEnvelope([]byte(msg))
	if err != nil {
		t.Fatal(err)
	}
	if string(env.Params) != params {
		t.Errorf("Params = %s, want %s", env.Params, params)
	}
	if string(env.Version) != `"2.0"` {
		t.Errorf("Version = %s", env.Version)
	}

	result := ` [ "}" , {"a":null} ] `
	msg = `{"jsonrpc":"2.0","id":"r","result":` + result + `}`
	env, err = ParseEnvelope([]byte(msg))
	if err != nil {
		t.Fatal(err)
	}
	if want := `[ "}" , {"a":null} ]`; string(env.Result) != want {
		t.Errorf("Result = %q, want %q", env.Result, want)
	}
}

// TestParseEnvelopeNotObject checks that a message that is valid JSON but
// not an object gets an error (the bridge answers it with 400).
func TestParseEnvelopeNotObject(t *testing.T) {
	for _, msg := range []string{`[]`, `[{"jsonrpc":"2.0","id":1,"method":"ping"}]`, `"x"`, `1`, `null`, `true`, ``, `   `} {
		t.Run(msg, func(t *testing.T) {
			env, err := ParseEnvelope([]byte(msg))
			if err == nil {
				t.Errorf("ParseEnvelope(%q) = %+v, want an error", msg, env)
			}
			if k := env.Kind(); k != KindInvalid {
				t.Errorf("Kind() = %s, want invalid", kindNames[k])
			}
		})
	}
}

// TestMember covers the lookups the bridge makes on params and results.
func TestMember(t *testing.T) {
	for _, tc := range []struct {
		name, obj, member string
		want              string // "" means not found (nil)
	}{
		{"top-level string", `{"a":"x","b":2}`, "a", `"x"`},
		{"top-level number", `{"a":"x","b":2}`, "b", `2`},
		{"nested object kept whole", `{"_meta":{"progressToken":"p1"},"x":1}`, "_meta", `{"progressToken":"p1"}`},
		{"missing", `{"a":1}`, "b", ""},
		{"nested members are not top-level", `{"a":{"b":1}}`, "b", ""},
		{"member after a value with braces in strings", `{"a":"{\"b\":0}","b":1}`, "b", `1`},
		{"escaped member name matches", `{"progress\u0054oken":7}`, "progressToken", `7`},
		{"name is compared exactly, not by prefix", `{"idx":1,"id":2}`, "id", `2`},
		{"duplicate: the last one counts", `{"id":1,"id":2}`, "id", `2`},
		{"null value is found", `{"id":null}`, "id", `null`},
		{"not an object", `[{"a":1}]`, "a", ""},
		{"empty input", ``, "a", ""},
		// A prefix cut off mid-message, as OversizePrefix keeps: the members
		// before the cut are still found.
		{"truncated prefix, member before the cut", `{"jsonrpc":"2.0","id":17,"result":{"data":"xxxx`, "id", `17`},
		{"truncated prefix, member after the cut", `{"jsonrpc":"2.0","result":{"data":"xxxx`, "id", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Member([]byte(tc.obj), tc.member)
			if string(got) != tc.want || (tc.want == "") != (got == nil) {
				t.Errorf("Member(%s, %q) = %q, want %q", tc.obj, tc.member, got, tc.want)
			}
		})
	}
}

func TestStringValue(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{`"2025-11-25"`, "2025-11-25"},
		{`""`, ""},
		{`"a\"b"`, `a"b`},
		{`"\u00e9\n"`, "é\n"},
		{`"a\/b"`, "a/b"},
		// Anything but a string token gives "".
		{`42`, ""},
		{`null`, ""},
		{`{"a":"b"}`, ""},
		{`["a"]`, ""},
		{`"`, ""},
		{``, ""},
		{`"bad escape \q"`, ""},
	} {
		if got := StringValue([]byte(tc.raw)); got != tc.want {
			t.Errorf("StringValue(%s) = %q, want %q", tc.raw, got, tc.want)
		}
	}
}

// TestErrorResponse checks that every error the bridge writes is a valid
// JSON-RPC response carrying the id, code and message it was given, whatever
// bytes the message holds (some come from client headers or the child).
func TestErrorResponse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		id      []byte
		message string
		wantID  string
	}{
		{"no id gives null", nil, "parse error", `null`},
		{"string id", []byte(`"abc"`), "boom", `"abc"`},
		{"number id", []byte(`7`), "boom", `7`},
		{"large integer id kept exactly", []byte(`123456789012345678901234567890`), "boom", `123456789012345678901234567890`},
		{"id 0", []byte(`0`), "boom", `0`},
		{"message with quotes and backslashes", []byte(`1`), `say "hi" \ bye`, `1`},
		{"message with unicode", []byte(`1`), "version ü 🎉", `1`},
		{"message with control characters", []byte(`1`), "bell\a tab\t nl\n del\x7f nul\x00", `1`},
		{"message with invalid UTF-8 (from a header)", []byte(`1`), "unsupported MCP-Protocol-Version: \xff\xfe", `1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := ErrorResponse(tc.id, CodeInvalidRequest, tc.message)
			if !json.Valid(b) {
				t.Fatalf("ErrorResponse gave invalid JSON: %s", b)
			}
			env, err := ParseEnvelope(b)
			if err != nil || env.Kind() != KindResponse {
				t.Fatalf("not a response: %s (%v)", b, err)
			}
			if string(env.ID) != tc.wantID {
				t.Errorf("id = %s, want %s", env.ID, tc.wantID)
			}
			var e struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			if err := json.Unmarshal(env.Error, &e); err != nil {
				t.Fatal(err)
			}
			if e.Code != CodeInvalidRequest {
				t.Errorf("code = %d, want %d", e.Code, CodeInvalidRequest)
			}
			// Each byte of invalid UTF-8 becomes U+FFFD, as in a conversion
			// to []rune; everything else must come through unchanged.
			if want := string([]rune(tc.message)); e.Message != want {
				t.Errorf("message = %q, want %q", e.Message, want)
			}
		})
	}
}

// FuzzParseEnvelope checks that the envelope scanner never panics on valid
// JSON, and that on objects it agrees with Member and with encoding/json.
func FuzzParseEnvelope(f *testing.F) {
	for _, seed := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"ping"}`,
		`{"jsonrpc":"2.0","id":"a\"}","result":{"x":["}",{"y":"]"}]}}`,
		`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1}}`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}`,
		`{"\u0069d":1,"id":2}`,
		` { "id" : 123456789012345678901234567890 } `,
		`[1,2]`,
		`"str"`,
		`-0.5e10`,
		`{}`,
		`{"a":{}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		if !json.Valid(msg) {
			return
		}
		env, err := ParseEnvelope(msg)
		_ = env.Kind()
		_ = env.MethodName()
		_ = StringValue(env.ID)
		_ = Member(env.Params, "progressToken")

		if trimmed := bytes.TrimSpace(msg); trimmed[0] != '{' {
			if err == nil {
				t.Fatalf("ParseEnvelope accepted a non-object: %s", msg)
			}
			return
		}
		if err != nil {
			t.Fatalf("ParseEnvelope(%s): %v", msg, err)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(msg, &obj); err != nil {
			t.Fatalf("encoding/json: %v", err)
		}
		if got := Member(msg, "id"); !bytes.Equal(got, env.ID) || (got == nil) != (env.ID == nil) {
			t.Fatalf("Member(id) = %q, envelope id = %q in %s", got, env.ID, msg)
		}
		// encoding/json, which decodes escaped names and keeps the last of
		// duplicates, sees the same id (up to whitespace, which the raw
		// token never has).
		if want, ok := obj["id"]; ok != (env.ID != nil) || (ok && !bytes.Equal(bytes.TrimSpace(want), env.ID)) {
			t.Fatalf("envelope id = %q, encoding/json id = %q in %s", env.ID, want, msg)
		}
	})
}

// BenchmarkParseEnvelope measures reading a tools/call request, its result and a 64 KiB result.
func BenchmarkParseEnvelope(b *testing.B) {
	for _, bc := range []struct {
		name string
		msg  []byte
		kind Kind
	}{
		{"request", []byte(mcptest.ToolsCallRequest), KindRequest},
		{"result", []byte(mcptest.ToolsCallResult), KindResponse},
		{"result_64KiB", mcptest.LargeToolsCallResult(64 << 10), KindResponse},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.msg)))
			b.ReportAllocs()
			for b.Loop() {
				env, err := ParseEnvelope(bc.msg)
				if err != nil || env.Kind() != bc.kind {
					b.Fatalf("ParseEnvelope = kind %s, %v; want %s", kindNames[env.Kind()], err, kindNames[bc.kind])
				}
			}
		})
	}
}

// TestEchoableID: the ids any child echoes byte for byte, and those the
// bridge replaces before an isolated child sees them.
func TestEchoableID(t *testing.T) {
	for id, want := range map[string]bool{
		`7`: true, `-42`: true, `999999999999999`: true, `"abc"`: true, `""`: true, `"é"`: true,
		`9999999999999999`: false, `123456789012345678901234567890`: false, `1e3`: false, `-1E400`: false,
		`"\ud800"`: false, `"a\"b"`: false,
	} {
		if got := EchoableID([]byte(id)); got != want {
			t.Errorf("EchoableID(%s) = %v, want %v", id, got, want)
		}
	}
}

// BenchmarkMethodName measures naming the method of a request, which the
// bridge does several times per message: MCP's own methods are interned.
func BenchmarkMethodName(b *testing.B) {
	for _, method := range []string{"tools/call", "vendor/custom"} {
		b.Run(strings.ReplaceAll(method, "/", "_"), func(b *testing.B) {
			env, err := ParseEnvelope([]byte(`{"jsonrpc":"2.0","id":1,"method":"` + method + `"}`))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if env.MethodName() != method {
					b.Fatal("wrong method")
				}
			}
		})
	}
}

// TestStringIs holds StringIs to StringValue's answer.
func TestStringIs(t *testing.T) {
	for _, raw := range []string{`"tools"`, `"to\u006fls"`, `"tool"`, `tools`, `""`, `"`, `1`, `"a\"b"`} {
		for _, s := range []string{"tools", "", "a\"b", "tool"} {
			if got, want := StringIs([]byte(raw), s), StringValue([]byte(raw)) == s; got != want {
				t.Errorf("StringIs(%s, %q) = %v, want %v", raw, s, got, want)
			}
		}
	}
}
