package child

import (
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestStderrFloodIsLimited: a child that writes 200,000 lines and a 1 MB
// line to stderr at once gets a burst of lines into the log, each at most
// stderrLineMax long, and a count of the rest; it is not blocked while
// doing so, and exits normally.
func TestStderrFloodIsLimited(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	p, err := Start(Config{Argv: []string{"sh", "-c", `head -c 1000000 /dev/zero | tr '\0' x >&2; echo >&2; yes flood | head -n 200000 >&2`}}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		p.Kill()
		t.Fatal("a child flooding stderr did not finish: is the bridge still reading it?")
	}
	if err := p.ExitErr(); err != nil {
		t.Fatalf("child exit: %v", err)
	}
	// The reader logs what is left after the child has exited.
	counted := func() (logged, suppressed int64) {
		for _, e := range logs.FilterMessage("child stderr: lines suppressed, the child writes too much").All() {
			suppressed += e.ContextMap()["lines"].(int64)
		}
		return int64(logs.FilterMessage("child stderr").Len()), suppressed
	}
	mcptest.WaitFor(t, 10*time.Second, "every stderr line logged or counted", func() bool {
		logged, suppressed := counted()
		return logged+suppressed == 200001
	})
	lines := logs.FilterMessage("child stderr").All()
	if len(lines) == 0 || len(lines) > stderrBurst+int(30*stderrPerSecond) {
		t.Errorf("%d stderr lines logged of 200,001 written, want at most the burst and the rate", len(lines))
	}
	if first := lines[0].ContextMap(); len(first["line"].(string)) != stderrLineMax || first["truncated_bytes"] != int64(1000000-stderrLineMax) {
		t.Errorf("the 1 MB line was logged as %d bytes, truncated_bytes %v; want %d and the rest counted", len(first["line"].(string)), first["truncated_bytes"], stderrLineMax)
	}
}
