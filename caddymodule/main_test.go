package caddymodule

import (
	"os"
	"strings"
	"sync"
	"testing"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

func TestMain(m *testing.M) { mcptest.Main(m) }

// toolsFrom returns the values of the environment variables that name the
// tools scripts/test installs. Without them the test is skipped, unless
// MCPBRIDGE_REQUIRE_ALL is set (scripts/test sets it): then it fails, so
// that no test passes by skipping.
func toolsFrom(t *testing.T, names ...string) []string {
	t.Helper()
	values := make([]string, len(names))
	for i, name := range names {
		values[i] = os.Getenv(name)
		if values[i] == "" {
			list := strings.Join(names, " and ")
			if os.Getenv("MCPBRIDGE_REQUIRE_ALL") != "" {
				t.Fatalf("%s must be set (scripts/test sets them)", list)
			}
			t.Skipf("set %s, or run scripts/test", list)
		}
	}
	return values
}

// lockedBuffer collects a process's output, read while it runs.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
