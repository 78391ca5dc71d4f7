package mcptest

import (
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Logger logs to t until the test's cleanup ends. Unlike zaptest, a
// goroutine that logs after the test (a child's stderr reader still
// draining) is silenced instead of panicking.
func Logger(t testing.TB) *zap.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), zap.DebugLevel))
}

type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// TestChildPackage is a small stdio MCP server whose flags make it
// misbehave (see internal/testchild).
const TestChildPackage = "github.com/mcpbridge/caddy-mcp-bridge/internal/testchild"

// TestChild returns the path of the built test child, and checks at
// cleanup that none of its processes is left.
func TestChild(t *testing.T) string {
	t.Helper()
	exe := Build(t, TestChildPackage)
	t.Cleanup(func() { WaitNoProcesses(t, exe, 5*time.Second) })
	return exe
}
