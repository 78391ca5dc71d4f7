package bridge

import (
	"errors"
	"fmt"

	"github.com/mattn/go-shellwords"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/child"
)

// SplitCommand splits a command line with shell word rules (quotes and
// backslashes) without running a shell, expanding nothing. An unquoted shell
// operator is an error.
func SplitCommand(line string) ([]string, error) {
	p := shellwords.NewParser()
	p.ParseEnv = false
	p.ParseBacktick = false
	argv, err := p.Parse(line)
	if err != nil {
		return nil, fmt.Errorf("command %q: %w", line, err)
	}
	if p.Position >= 0 {
		// The parser stops at an unquoted ; & | < or > and returns the words
		// before it: running those would silently drop the rest.
		return nil, fmt.Errorf("command %q: shell operators (; & | < >) need a shell; quote them, or run sh -c", line)
	}
	if len(argv) == 0 {
		return nil, errors.New("command is empty")
	}
	return argv, nil
}

// CheckCommand reports whether the configured program can be started,
// found as a child would be: a config load calls it, so that a mistyped
// command is refused before it replaces a working one.
func CheckCommand(cfg ProcessConfig) error { return child.Check(cfg) }
