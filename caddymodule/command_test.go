package caddymodule

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// cmdCaddyfile is a Caddyfile whose mcp_bridge names an api_key_file; %s
// is the file.
const cmdCaddyfile = `:8080 {
	mcp_bridge {
		command /bin/true
		api_key_file %s
	}
}
`

func cmdConfig(keyFile string) string { return strings.Replace(cmdCaddyfile, "%s", keyFile, 1) }

// TestCommandKey runs `caddy mcp-bridge key show|rotate` as an operator
// does, in a directory of its own, and checks what it prints, how it exits
// and what it leaves in the key file.
func TestCommandKey(t *testing.T) {
	caddyExe := mcptest.Build(t, mcptest.CaddyPackage)
	const current = "k-current-Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0"

	tests := []struct {
		name  string
		files map[string]string // written in the directory; {dir} is replaced by it
		env   []string          // extra environment; {dir} is replaced
		args  []string          // after `caddy mcp-bridge key`; {dir} is replaced
		// wantOut is the exact stdout of a command that must succeed;
		// wantErr is in the output of one that must fail.
		wantOut, wantErr string
		check            func(t *testing.T, dir, stdout string)
	}{
		{
			name:    "show --file prints the current key",
			files:   map[string]string{"keys/api.key": "# a comment\n\n  " + current + "  \nk-old until=2099-01-01T00:00:00Z\n"},
			args:    []string{"show", "--file", "keys/api.key"},
			wantOut: current + "\n",
		},
		{
			name:    "show --config finds the api_key_file the Caddyfile names",
			files:   map[string]string{"keys/api.key": current + "\n", "site.caddyfile": cmdConfig("{dir}/keys/api.key")},
			args:    []string{"show", "--config", "site.caddyfile"},
			wantOut: current + "\n",
		},
		{
			name:    "show with no flag reads ./Caddyfile",
			files:   map[string]string{"keys/api.key": current + "\n", "Caddyfile": cmdConfig("{dir}/keys/api.key")},
			args:    []string{"show"},
			wantOut: current + "\n",
		},
		{
			name:    "show --config --adapter caddyfile, any file name",
			files:   map[string]string{"keys/api.key": current + "\n", "mcp.conf": cmdConfig("{dir}/keys/api.key")},
			args:    []string{"show", "--config", "mcp.conf", "--adapter", "caddyfile"},
			wantOut: current + "\n",
		},
		{
			name:    "show --config with an {env.*} placeholder in api_key_file",
			files:   map[string]string{"keys/api.key": current + "\n", "Caddyfile": cmdConfig("{env.MCPBRIDGE_KEY_DIR}/api.key")},
			env:     []string{"MCPBRIDGE_KEY_DIR={dir}/keys"},
			args:    []string{"show", "--config", "Caddyfile"},
			wantOut: current + "\n",
		},
		{
			name: "show --config with a JSON config",
			files: map[string]string{"keys/api.key": current + "\n", "caddy.json": `{"apps":{"http":{"servers":{"srv0":{"listen":[":8080"],"routes":[{"handle":[` +
				`{"handler":"mcp_bridge","command":"/bin/true","api_key_file":"{dir}/keys/api.key"}]}]}}}}}`},
			args:    []string{"show", "--config", "caddy.json"},
			wantOut: current + "\n",
		},
		{
			name:    "show on a missing file fails and names it",
			args:    []string{"show", "--file", "{dir}/nothing/api.key"},
			wantErr: "{dir}/nothing/api.key: no such file",
		},
		{
			name:    "show on a file of expired keys fails",
			files:   map[string]string{"api.key": "# only old keys\nk-old until=2001-01-01T00:00:00Z\n"},
			args:    []string{"show", "--file", "api.key"},
			wantErr: "holds no valid key",
		},
		{
			name:    "show on a malformed file fails and names the line",
			files:   map[string]string{"api.key": "# keys\n" + current + " expires=tomorrow\n"},
			args:    []string{"show", "--file", "api.key"},
			wantErr: `api.key:2: unknown field "expires=tomorrow"`,
		},
		{
			name:    "a config with no api_key_file fails with a clear message",
			files:   map[string]string{"Caddyfile": ":8080 {\n\tmcp_bridge {\n\t\tcommand /bin/true\n\t\tapi_key k-inline\n\t}\n}\n"},
			args:    []string{"show", "--config", "Caddyfile"},
			wantErr: "the config names no api_key_file",
		},
		{
			name: "a config with two api_key_files asks for --file",
			files: map[string]string{"Caddyfile": cmdConfig("{dir}/a.key") +
				":8081 {\n\tmcp_bridge {\n\t\tcommand /bin/true\n\t\tapi_key_file {dir}/b.key\n\t}\n}\n"},
			args:    []string{"rotate", "--config", "Caddyfile"},
			wantErr: "choose a file with --file",
		},
		{
			name:    "no config and no --file fails with a clear message",
			args:    []string{"show"},
			wantErr: "no config found (no ./Caddyfile), and no key file of caddy mcp-bridge serve: give --config or --file",
		},
		{
			name:    "--config naming a missing file fails",
			args:    []string{"show", "--config", "missing.caddyfile"},
			wantErr: "missing.caddyfile",
		},
		{
			name:  "rotate --file writes a new current key, prints it and says caddy reload",
			files: map[string]string{"keys/api.key": current + "\n"},
			args:  []string{"rotate", "--file", "keys/api.key"},
			check: func(t *testing.T, dir, stdout string) {
				keys := cmdReadKeys(t, filepath.Join(dir, "keys", "api.key"))
				if len(keys) != 1 || keys[0][0] == current {
					t.Fatalf("key file after rotate: %q, want one new key", keys)
				}
				newKey := keys[0][0]
				if !secURLSafeKey.MatchString(newKey) {
					t.Errorf("new key %q is not >= 43 URL-safe characters", newKey)
				}
				if !slices.Contains(strings.Split(stdout, "\n"), newKey) {
					t.Errorf("rotate did not print the new key on a line of its own:\n%s", stdout)
				}
				if !strings.Contains(stdout, "caddy reload") {
					t.Errorf("rotate does not say to run caddy reload:\n%s", stdout)
				}
				if strings.Contains(stdout, current) {
					t.Errorf("rotate printed the old key:\n%s", stdout)
				}
				cmdCheckMode(t, filepath.Join(dir, "keys", "api.key"), 0o600)
				if out := cmdRun(t, caddyExe, dir, nil, "show", "--file", "keys/api.key"); out != newKey+"\n" {
					t.Errorf("show after rotate printed %q, want the new key", out)
				}
			},
		},
		{
			name:  "rotate --overlap 1h keeps the old key valid for an hour",
			files: map[string]string{"keys/api.key": current + "\n"},
			args:  []string{"rotate", "--file", "keys/api.key", "--overlap", "1h"},
			check: func(t *testing.T, dir, stdout string) {
				keys := append(cmdReadKeys(t, filepath.Join(dir, "keys", "api.key")), cmdReadKeys(t, filepath.Join(dir, "keys", "api.key.previous"))...)
				if len(keys) != 2 || keys[1][0] != current || len(keys[1]) != 2 {
					t.Fatalf("key file after rotate --overlap: %q, want the new key, then the old one with until=", keys)
				}
				until, err := time.Parse(time.RFC3339, strings.TrimPrefix(keys[1][1], "until="))
				if err != nil {
					t.Fatal(err)
				}
				if d := time.Until(until); d < 58*time.Minute || d > 61*time.Minute {
					t.Errorf("the old key stays valid for %v, want about 1h", d)
				}
				if !strings.Contains(stdout, "1h0m0s") || !strings.Contains(stdout, "caddy reload") {
					t.Errorf("rotate --overlap printed:\n%s", stdout)
				}
			},
		},
		{
			name: "rotate --overlap does not extend an older key's overlap",
			files: map[string]string{"api.key": current + "\nk-older until=" +
				time.Now().Add(10*time.Minute).UTC().Format(time.RFC3339) + "\n"},
			args: []string{"rotate", "--file", "api.key", "--overlap", "1h"},
			check: func(t *testing.T, dir, stdout string) {
				keys := append(cmdReadKeys(t, filepath.Join(dir, "api.key")), cmdReadKeys(t, filepath.Join(dir, "api.key.previous"))...)
				if len(keys) != 3 || keys[1][0] != current || keys[2][0] != "k-older" {
					t.Fatalf("key file: %q", keys)
				}
				until, _ := time.Parse(time.RFC3339, strings.TrimPrefix(keys[2][1], "until="))
				if d := time.Until(until); d > 11*time.Minute {
					t.Errorf("the older key's overlap grew to %v", d)
				}
			},
		},
		{
			name:  "rotate --config rotates the Caddyfile's key file",
			files: map[string]string{"keys/api.key": current + "\n", "Caddyfile": cmdConfig("{dir}/keys/api.key")},
			args:  []string{"rotate", "--config", "Caddyfile"},
			check: func(t *testing.T, dir, stdout string) {
				keys := cmdReadKeys(t, filepath.Join(dir, "keys", "api.key"))
				if len(keys) != 1 || keys[0][0] == current || !strings.Contains(stdout, keys[0][0]) {
					t.Errorf("key file %q after rotate printing:\n%s", keys, stdout)
				}
			},
		},
		{
			name: "rotate creates a missing key file, in a private directory",
			args: []string{"rotate", "--file", "{dir}/new/secrets/api.key"},
			check: func(t *testing.T, dir, stdout string) {
				path := filepath.Join(dir, "new", "secrets", "api.key")
				keys := cmdReadKeys(t, path)
				if len(keys) != 1 || !strings.Contains(stdout, keys[0][0]) {
					t.Errorf("key file %q after rotate printing:\n%s", keys, stdout)
				}
				cmdCheckMode(t, path, 0o600)
				cmdCheckMode(t, filepath.Dir(path), os.ModeDir|0o700)
				cmdCheckMode(t, filepath.Join(dir, "new"), os.ModeDir|0o700)
			},
		},
		{
			name:    "rotate refuses a malformed file and leaves it as it was",
			files:   map[string]string{"api.key": current + " bogus\n"},
			args:    []string{"rotate", "--file", "api.key"},
			wantErr: `unknown field "bogus"`,
			check: func(t *testing.T, dir, _ string) {
				if b, _ := os.ReadFile(filepath.Join(dir, "api.key")); string(b) != current+" bogus\n" {
					t.Errorf("the file became %q", b)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			expand := func(s string) string { return strings.ReplaceAll(s, "{dir}", dir) }
			for name, content := range tt.files {
				path := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(expand(content)), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var args, env []string
			for _, a := range tt.args {
				args = append(args, expand(a))
			}
			for _, e := range tt.env {
				env = append(env, expand(e))
			}
			cmd := cmdCommand(caddyExe, dir, env, args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exitErr *exec.ExitError
			if err != nil && !errors.As(err, &exitErr) {
				t.Fatal(err)
			}
			if want := expand(tt.wantErr); want != "" {
				if err == nil {
					t.Fatalf("succeeded, want a failure saying %q\nstdout: %s\nstderr: %s", want, &stdout, &stderr)
				}
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr does not say %q:\n%s", want, &stderr)
				}
				if stdout.Len() != 0 {
					t.Errorf("a failure printed %q on stdout", &stdout)
				}
			} else {
				if err != nil {
					t.Fatalf("%v\nstdout: %s\nstderr: %s", err, &stdout, &stderr)
				}
				if tt.wantOut != "" && stdout.String() != tt.wantOut {
					t.Errorf("stdout %q, want %q", &stdout, tt.wantOut)
				}
			}
			if tt.check != nil {
				tt.check(t, dir, stdout.String())
			}
		})
	}
}

// cmdCommand is `caddy mcp-bridge key <args>` in dir, with a HOME of its own.
func cmdCommand(caddyExe, dir string, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(caddyExe, append([]string{"mcp-bridge", "key"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, ".data"), "XDG_CONFIG_HOME="+filepath.Join(dir, ".config"))
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// cmdRun runs a key subcommand that must succeed and returns its stdout.
func cmdRun(t *testing.T, caddyExe, dir string, env []string, args ...string) string {
	t.Helper()
	cmd := cmdCommand(caddyExe, dir, env, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("caddy mcp-bridge key %s: %v\n%s", strings.Join(args, " "), err, &stderr)
	}
	return string(out)
}

var cmdKeyLine = regexp.MustCompile(`^\S+( until=\S+)?$`)

// cmdReadKeys returns the key lines of a key file, split into fields.
func cmdReadKeys(t *testing.T, path string) [][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var keys [][]string
	for line := range strings.SplitSeq(string(data), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !cmdKeyLine.MatchString(line) {
			t.Errorf("%s: malformed line %q", path, line)
		}
		keys = append(keys, strings.Fields(line))
	}
	return keys
}

func cmdCheckMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode() &^ (os.ModeSetgid | os.ModeSetuid | os.ModeSticky); got != want {
		t.Errorf("%s mode %v, want %v", path, got, want)
	}
}
