package child

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheck says what each command gets: found programs pass; a missing
// name, a missing path, a directory, a file that is not executable and a
// missing dir are refused with an error that names them.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "server")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	plain := filepath.Join(dir, "notes.txt")
	os.WriteFile(plain, nil, 0o644)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "" for no error, else a part of it
	}{
		{"a name on the PATH", Config{Argv: []string{"sh", "-c", "true"}}, ""},
		{"an absolute path", Config{Argv: []string{script}}, ""},
		{"a path relative to dir", Config{Argv: []string{"./server"}, Dir: dir}, ""},
		{"a mistyped name", Config{Argv: []string{"npxx", "-y", "server"}}, `"npxx": not found on the PATH`},
		{"a missing path", Config{Argv: []string{filepath.Join(dir, "nope")}}, "no such file"},
		{"a relative path missing from dir", Config{Argv: []string{"./nope"}, Dir: dir}, `"./nope"`},
		{"a directory", Config{Argv: []string{dir}}, "is a directory"},
		{"a file that is not executable", Config{Argv: []string{plain}}, "not executable"},
		{"a missing dir", Config{Argv: []string{"sh"}, Dir: filepath.Join(dir, "nodir")}, "not a directory"},
		{"no command", Config{}, "no command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(tc.cfg)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Check: %v, want no error", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Check: %v, want an error with %q", err, tc.want)
			}
		})
	}
}
