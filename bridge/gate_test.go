package bridge

import (
	"testing"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// hideAdmin shows every tool but admin_reset.
type hideAdmin struct{}

func (hideAdmin) Admit(string, string) *Refusal { return nil }

func (hideAdmin) Shown(list string) func(string) bool {
	if list != "tools" {
		return nil
	}
	return func(name string) bool { return name != "admin_reset" }
}

// TestListFilter: a list result loses the hidden items and keeps the rest
// of its members (the cursor among them) byte for byte; other results, and
// lists the gate shows whole, pass untouched.
func TestListFilter(t *testing.T) {
	for _, tc := range []struct{ method, in, want string }{
		{"tools/list",
			`{"jsonrpc":"2.0","id":2,"result":{"nextCursor":"abc","tools":[{"name":"search"},{"name":"admin_reset","description":"x"}]}}`,
			`{"jsonrpc":"2.0","id":2,"result":{"nextCursor":"abc","tools":[{"name":"search"}]}}`},
		{"tools/list",
			`{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"admin_reset"}]}}`,
			`{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}`},
		{"tools/list", // nothing hidden: the very same bytes
			`{"jsonrpc":"2.0","id":2,"result":{"tools":[ {"name":"search"} ]}}`,
			`{"jsonrpc":"2.0","id":2,"result":{"tools":[ {"name":"search"} ]}}`},
		{"tools/list", // an error passes
			`{"jsonrpc":"2.0","id":2,"error":{"code":-32603,"message":"x"}}`,
			`{"jsonrpc":"2.0","id":2,"error":{"code":-32603,"message":"x"}}`},
	} {
		f := listFilterFor(hideAdmin{}, tc.method)
		msg := []byte(tc.in)
		env, err := jsonrpc.ParseEnvelope(msg)
		if err != nil || f == nil {
			t.Fatalf("%s: %v %v", tc.in, err, f)
		}
		if got := string(f.apply(msg, &env)); got != tc.want {
			t.Errorf("%s\ngot  %s\nwant %s", tc.in, got, tc.want)
		}
	}
	if listFilterFor(hideAdmin{}, "prompts/list") != nil || listFilterFor(hideAdmin{}, "tools/call") != nil || listFilterFor(nil, "tools/list") != nil {
		t.Error("a filter for a list the gate shows whole, or for no list")
	}
}

// TestSubjectOf: what the gate is told a request is about.
func TestSubjectOf(t *testing.T) {
	for _, tc := range []struct{ method, params, want string }{
		{"tools/call", `{"name":"search","arguments":{"name":"not this"}}`, "search"},
		{"prompts/get", `{"name":"gr\u0065et"}`, "greet"},
		{"resources/read", `{"uri":"file:///a.txt"}`, "file:///a.txt"},
		{"completion/complete", `{"ref":{"type":"ref/prompt","name":"greet"},"argument":{"name":"a","value":"b"}}`, "prompt:greet"},
		{"completion/complete", `{"ref":{"type":"ref/resource","uri":"file:///{path}"}}`, "resource:file:///{path}"},
		{"tools/list", `{"cursor":"x"}`, ""},
		{"tools/call", ``, ""},
	} {
		if got := subjectOf(tc.method, []byte(tc.params)); got != tc.want {
			t.Errorf("subjectOf(%s, %s) = %q, want %q", tc.method, tc.params, got, tc.want)
		}
	}
}
