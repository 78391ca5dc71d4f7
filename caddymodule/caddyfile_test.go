package caddymodule

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
)

// TestCaddyfileAdapt adapts each testdata/caddyfile_adapt file (a Caddyfile,
// a line of dashes, the expected JSON) and compares.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapt tests found: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, want, ok := strings.Cut(string(data), "----------")
			if !ok {
				t.Fatal("no ---------- separator")
			}
			got, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			for _, w := range warnings {
				t.Errorf("warning: %s", w.String())
			}
			var gotVal, wantVal any
			if err := json.Unmarshal(got, &gotVal); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(want), &wantVal); err != nil {
				t.Fatalf("expected JSON: %v", err)
			}
			if !reflect.DeepEqual(gotVal, wantVal) {
				pretty, _ := json.MarshalIndent(gotVal, "", "\t")
				t.Errorf("adapted JSON differs from the expected; got:\n%s", pretty)
			}
		})
	}
}

// TestCaddyfileErrors says what each bad Caddyfile gets.
func TestCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct{ name, input, wantErr string }{
		{"two arguments on directive", "mcp_bridge foo bar {\ncommand x\n}", "wrong argument count"},
		{"unknown option", "mcp_bridge {\ncommand x\nfrobnicate\n}", `unrecognized mcp_bridge option "frobnicate"`},
		{"command without program", "mcp_bridge {\ncommand\n}", "wrong argument count"},
		{"env needs key and value", "mcp_bridge {\nenv KEY\n}", "wrong argument count"},
		{"bad size", "mcp_bridge {\nmax_message_size lots\n}", "max_message_size"},
		{"zero size", "mcp_bridge {\nmax_message_size 0\n}", "max_message_size"},
		{"bad duration", "mcp_bridge {\npool {\nsession_idle_timeout soon\n}\n}", "session_idle_timeout"},
		{"negative number", "mcp_bridge {\npool {\nmax_processes -1\n}\n}", "max_processes"},
		{"unknown pool option", "mcp_bridge {\npool {\nsize 3\n}\n}", `unrecognized pool option "size"`},
		{"a health check that is no duration", "mcp_bridge {\npool {\nhealth_check never\n}\n}", `health_check: want a positive duration, got "never", at Testfile:3`},
		// Mistakes found after parsing name the line of the option.
		{"command given twice", "mcp_bridge {\ncommand a\ncommand b\n}", "command is given twice (first on line 2): give it once, at Testfile:3"},
		{"pool option given twice", "mcp_bridge {\ncommand a\npool {\nmax_processes 2\nmax_processes 3\n}\n}", "max_processes is given twice (first on line 4): give it once, at Testfile:5"},
		{"two endpoints on one path", "mcp_bridge {\ncommand a\nsse_path /mcp\n}", "sse_path /mcp is also the streamable_path: give each endpoint a path of its own, at Testfile:3"},
		{"a shared option in session isolation", "mcp_bridge {\ncommand a\npool {\nmin_processes 2\n}\n}", "pool: min_processes applies only to isolation shared, at Testfile:4"},
		{"a session option in shared isolation", "mcp_bridge {\ncommand a\npool {\nisolation shared\nmin_idle 2\n}\n}", "pool: min_idle applies only to isolation session, at Testfile:5"},
		{"an unknown isolation", "mcp_bridge {\ncommand a\npool {\nisolation process\n}\n}", `pool: isolation must be session or shared, not "process", at Testfile:4`},
		{"more spares than the default cap", "mcp_bridge {\ncommand a\npool {\nmin_idle 40\n}\n}", "pool: min_idle (40) exceeds max_processes (32), at Testfile:4"},
		{"an unknown transport", "mcp_bridge {\ncommand a\ntransports streamable grpc\n}", ", at Testfile:3"},
		{"a relative path", "mcp_bridge {\ncommand a\nhealth_path health\n}", `health_path must start with /: "health", at Testfile:3`},
		{"CORS credentials for any origin", "mcp_bridge {\ncommand a\nallowed_origins *\ncors {\nallow_credentials\n}\n}", "cors allow_credentials cannot be combined with allowed_origins *: name the origins, at Testfile:4"},
		{"a public_base_url that is no URL", "mcp_bridge {\ncommand a\npublic_base_url example.com/tools\n}", "such as https://example.com/tools, at Testfile:3"},
		{"a named key without its key", "mcp_bridge {\ncommand a\nnamed_api_key alice\n}", "wrong argument count"},
		{"a key name given twice", "mcp_bridge {\ncommand a\nnamed_api_key alice k1\nnamed_api_key alice k2\n}", "named_api_key alice is given twice"},
		{"oauth without an issuer", "mcp_bridge {\ncommand a\noauth {\nscopes mcp\n}\n}", "oauth needs an issuer"},
		{"an unknown oauth option", "mcp_bridge {\ncommand a\noauth {\nissuer https://a.example\njwks https://a.example/k\n}\n}", `unknown oauth option "jwks"`},
		{"an issuer over plain HTTP", "mcp_bridge {\ncommand a\noauth {\nissuer http://auth.example.com\n}\n}", "must be an https:// URL (http:// only on a loopback address), at Testfile:3"},
		{"introspection without credentials", "mcp_bridge {\ncommand a\noauth {\nissuer https://a.example\nintrospection_url https://a.example/i\n}\n}", "introspection_url needs client_id and client_secret"},
		{"a policy without a name", "mcp_bridge {\ncommand a\npolicy {\nrate 1/s\n}\n}", "policy needs a name"},
		{"an unknown policy option", "mcp_bridge {\ncommand a\npolicy p {\nban x\n}\n}", `unknown policy option "ban"`},
		{"an unknown match", "mcp_bridge {\ncommand a\npolicy p {\nmatch team x\n}\n}", "match team: want key, subject, client or scope"},
		{"a rate that is no rate", "mcp_bridge {\ncommand a\npolicy p {\nrate fast\n}\n}", "want <n>/<period>"},
		{"a quota per week", "mcp_bridge {\ncommand a\npolicy p {\nquota 5/week\n}\n}", "want <calls>/day or <calls>/month"},
		{"a node with a space", "mcp_bridge {\ncommand a\nnode \"a b\"\n}", `node "a b": ' ' is not allowed (letters, digits and . - : [ ] only), at Testfile:3`},
		{"a node with an underscore, which event ids use", "mcp_bridge {\ncommand a\nnode a_b\n}", `node "a_b": '_' is not allowed`},
		{"a key file and a key in storage", "mcp_bridge {\ncommand a\napi_key_file /k\napi_key_storage k\n}", "api_key_file and api_key_storage: give one, at Testfile:4"},
		{"a tools rule that neither allows nor denies", "mcp_bridge {\ncommand a\npolicy p {\ntools hide x\n}\n}", "want tools allow|deny <pattern...>"},
		{"a policy with no one to apply to", "mcp_bridge {\ncommand a\npolicy p {\nrate 1/s\n}\n}", "policies apply to authenticated principals"},
		{"two policies of one name", "mcp_bridge {\ncommand a\nnamed_api_key a k\npolicy p {\nrate 1/s\n}\npolicy p {\nrate 2/s\n}\n}", "two policies are named p"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestCommandQuoting checks the words a command line in a Caddyfile gives
// the child: shell quoting works, Caddy's double quotes and backticks make
// one word each, and nothing is expanded.
func TestCommandQuoting(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []string
	}{
		{`npx -y @modelcontextprotocol/server-everything stdio`, []string{"npx", "-y", "@modelcontextprotocol/server-everything", "stdio"}},
		{`python3 -c 'print("hi; rm -rf /")'`, []string{"python3", "-c", `print("hi; rm -rf /")`}},
		{`"/opt/my server/bin" --name "it's" $HOME`, []string{"/opt/my server/bin", "--name", "it's", "$HOME"}},
		{`server "" 'a  b'`, []string{"server", "", "a b"}}, // whitespace between Caddy tokens is one space
		{"server `raw \"quoted\"` {env.X}", []string{"server", `raw "quoted"`, "{env.X}"}},
	} {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("mcp_bridge {\ncommand " + tc.line + "\n}")); err != nil {
			t.Fatalf("%s: %v", tc.line, err)
		}
		got, err := bridge.SplitCommand(h.Command)
		if err != nil {
			t.Fatalf("%s: split %q: %v", tc.line, h.Command, err)
		}
		if strings.Join(got, "\x00") != strings.Join(tc.want, "\x00") {
			t.Errorf("command %s\n gave %q (via %q), want %q", tc.line, got, h.Command, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	two, three := 2, 3
	for _, tc := range []struct {
		name    string
		h       Handler
		wantErr string
	}{
		{"ok", Handler{Command: "server"}, ""},
		{"no command", Handler{}, "command is required"},
		{"relative path", Handler{Command: "server", StreamablePath: "mcp"}, "must start with /"},
		{"spares over cap", Handler{Command: "server", Pool: &PoolConfig{MinIdle: &three, MaxProcesses: 2}}, "exceeds max_processes"},
		{"spares at cap", Handler{Command: "server", Pool: &PoolConfig{MinIdle: &two, MaxProcesses: 2}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.h.Validate()
			if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Validate() = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestRelativeCommandBesideCaddyfile: a relative program path is taken
// against the Caddyfile's directory, unless dir is set; names on the PATH,
// absolute paths and placeholders are left alone.
func TestRelativeCommandBesideCaddyfile(t *testing.T) {
	for _, tc := range []struct{ command, dir, want string }{
		{"bin/server --flag", "", "/etc/caddy/bin/server --flag"},
		{"./server", "", "/etc/caddy/server"},
		{"bin/server", "/srv", "bin/server"},
		{"npx -y pkg", "", "npx -y pkg"},
		{"/opt/server", "", "/opt/server"},
		{"{env.HOME}/server", "", "{env.HOME}/server"},
		{"~/server", "", "~/server"},
	} {
		if got := commandBesideCaddyfile(tc.command, tc.dir, "/etc/caddy"); got != tc.want {
			t.Errorf("%q with dir %q: %q, want %q", tc.command, tc.dir, got, tc.want)
		}
	}
}
