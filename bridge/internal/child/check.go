package child

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Check reports whether cfg's program can be started, found the way Start
// finds it: a bare name on the bridge's PATH (as os/exec looks it up), a
// path relative to Dir. It is what a config load checks, so that a
// mistyped command is refused before it replaces a working one.
func Check(cfg Config) error {
	if len(cfg.Argv) == 0 {
		return errors.New("no command to run")
	}
	name := cfg.Argv[0]
	if cfg.Dir != "" {
		if st, err := os.Stat(cfg.Dir); err != nil || !st.IsDir() {
			return fmt.Errorf("dir %q: not a directory", cfg.Dir)
		}
	}
	if !strings.ContainsRune(name, '/') && !strings.ContainsRune(name, filepath.Separator) {
		if _, err := exec.LookPath(name); err != nil {
			return fmt.Errorf("command %q: not found on the PATH (%s)", name, os.Getenv("PATH"))
		}
		return nil
	}
	path := name
	if !filepath.IsAbs(path) && cfg.Dir != "" {
		path = filepath.Join(cfg.Dir, path)
	}
	st, err := os.Stat(path)
	switch {
	case err != nil:
		return fmt.Errorf("command %q: %w", name, err)
	case st.IsDir():
		return fmt.Errorf("command %q: is a directory", name)
	case runtime.GOOS != "windows" && st.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("command %q: not executable (mode %v)", name, st.Mode().Perm())
	}
	return nil
}
