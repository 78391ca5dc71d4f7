package jsonrpc

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// validJSONCases are inputs on each side of the grammar's edges.
var validJSONCases = []string{
	``, ` `, `{}`, `[]`, `{"a":1}`, `{"a":1,}`, `[1,]`, `[,1]`, `{"a" 1}`, `{1:2}`,
	`"abc"`, `"a\"b\\c\/d\b\f\n\r\t"`, `"\u00e9\u00E9"`, `"\u00g9"`, `"\u12"`, `"\x"`,
	"\"tab\there\"", "\"nul\x00\"", "\"\xff\xfe\"", `"unterminated`, `"ends in backslash\`,
	`0`, `-0`, `01`, `-`, `1.`, `.5`, `1.5e`, `1.5e+3`, `1E-3`, `-12.30e10`, `1e`, `+1`,
	`true`, `false`, `null`, `nul`, `truex`, `tru`, `[true,false,null]`,
	` {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}} `,
	`{"a":[1,{"b":[]}],"c":{}}`, `{"a":[1,{"b":[]}],"c":{}`, `{"a":[1}`, `[1}`, `{"a":1]`,
	`1 2`, `{} {}`, "[\n1,\r\n2\t]",
	strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth),
	strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1),
	`"` + strings.Repeat("abcdefgh", 9) + `"`, `"` + strings.Repeat("abcdefg\\n", 9) + `"`,
}

func TestValidJSONAgreesWithEncodingJSON(t *testing.T) {
	for _, c := range validJSONCases {
		if got, want := Valid([]byte(c)), json.Valid([]byte(c)); got != want {
			t.Errorf("validJSON(%.60q) = %v, json.Valid says %v", c, got, want)
		}
	}
}

// FuzzValidJSON holds validJSON to json.Valid's answer on any input.
func FuzzValidJSON(f *testing.F) {
	for _, c := range validJSONCases {
		f.Add([]byte(c))
	}
	f.Add([]byte(mcptest.ToolsCallRequest))
	f.Add([]byte(mcptest.ToolsCallResult))
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := Valid(b), json.Valid(b); got != want {
			t.Errorf("validJSON(%q) = %v, json.Valid says %v", b, got, want)
		}
	})
}

// BenchmarkValidJSON compares validJSON with json.Valid on a small request
// and a 64 KiB result.
func BenchmarkValidJSON(b *testing.B) {
	for _, bc := range []struct {
		name string
		data []byte
	}{
		{"request", []byte(mcptest.ToolsCallRequest)},
		{"result_64KiB", mcptest.LargeToolsCallResult(64 << 10)},
		// One string with nothing to escape, as the bench's echo sends.
		{"plain_64KiB", []byte(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"` + strings.Repeat("x", 64<<10) + `"}}}`)},
	} {
		for _, impl := range []struct {
			name  string
			valid func([]byte) bool
		}{{"validJSON", Valid}, {"json.Valid", json.Valid}} {
			b.Run(bc.name+"/"+impl.name, func(b *testing.B) {
				b.SetBytes(int64(len(bc.data)))
				b.ReportAllocs()
				for b.Loop() {
					if !impl.valid(bc.data) {
						b.Fatal("invalid")
					}
				}
			})
		}
	}
}

// TestValidEveryPosition puts each byte a string scan must stop at, and
// bytes next to those, at every position of strings up to 80 bytes long,
// the steps of 8 and 32 bytes included: Valid agrees with json.Valid.
func TestValidEveryPosition(t *testing.T) {
	for n := range 81 {
		for pos := range n {
			for _, c := range []byte{'"', '\\', 0, 0x1f, 0x20, '!', '[', 0x7f, 0x80, 0xff} {
				s := []byte(strings.Repeat("a", n))
				s[pos] = c
				for _, msg := range [][]byte{
					append(append([]byte(`{"k":"`), s...), `"}`...),
					append(append([]byte(`["`), s...), `\n"]`...),
				} {
					if got, want := Valid(msg), json.Valid(msg); got != want {
						t.Fatalf("Valid(%q) = %v, json.Valid says %v", msg, got, want)
					}
				}
			}
		}
	}
}
