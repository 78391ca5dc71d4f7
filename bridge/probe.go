package bridge

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/placement"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/supervisor"
	"go.uber.org/zap"
)

// probeTimeout bounds one probe: a child that cannot initialize and list
// its tools within it counts as broken.
const probeTimeout = 30 * time.Second

// probeResult is what the bridge last learned from a child of its own: that one
// can be started and initialized, and how many tools it offers.
type probeResult struct {
	// Era is "stateless" (the 2026-07-28 protocol on), "legacy"
	// (sessions and initialize) or "dual" (both), as server/discover told.
	Era       string
	Tools     int
	CheckedAt time.Time
	Err       error
	// Initialized: the child started and answered server/discover or
	// initialize, whatever came next.
	Initialized bool
}

// prober runs probes, one at a time, and keeps the last result. A tools
// list_changed from any child marks the result stale; a stale result is
// probed again no sooner than reprobeInterval after the last probe, since
// some servers (the Node server-everything) announce a change in every
// session, and a probe is a child spawn.
type prober struct {
	start  func(context.Context) (*supervisor.Child, error)
	logger *zap.Logger
	ctx    context.Context // cancelled when the backend closes
	cancel context.CancelFunc

	mu      sync.Mutex
	last    probeResult
	stale   bool
	running chan struct{} // closed when the probe under way ends
}

const (
	// firstProbeWait is how long a report waits for the very first probe.
	firstProbeWait = 5 * time.Second
	// reprobeInterval is the least time between probes of a stale result.
	reprobeInterval = 30 * time.Second
)

func newProber(start func(context.Context) (*supervisor.Child, error), logger *zap.Logger) *prober {
	ctx, cancel := context.WithCancel(context.Background())
	return &prober{start: start, logger: logger, ctx: ctx, cancel: cancel}
}

// result returns the last probe, starting a new one in the background if
// it is missing, or stale and old enough; with none finished yet, it waits
// a little for the first.
func (p *prober) result() probeResult {
	p.mu.Lock()
	due := p.last.CheckedAt.IsZero() || p.stale && time.Since(p.last.CheckedAt) >= reprobeInterval
	if due && p.running == nil {
		p.startLocked()
	}
	first, done := p.last.CheckedAt.IsZero(), p.running
	p.mu.Unlock()
	if first && done != nil {
		select {
		case <-done:
		case <-time.After(firstProbeWait):
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// check probes now, waiting for the result, and keeps it.
func (p *prober) check(ctx context.Context) probeResult {
	res := probeChild(ctx, p.start)
	p.mu.Lock()
	if p.keepLocked(res) {
		p.stale = false
	}
	p.mu.Unlock()
	return res
}

// keepLocked makes res the last result, unless the budget was full, which
// tells nothing about the server; it reports whether it did.
func (p *prober) keepLocked(res probeResult) bool {
	if errors.Is(res.Err, placement.ErrPoolExhausted) {
		return false
	}
	p.last = res
	return true
}

// lastProbe returns the last probe without starting one.
func (p *prober) lastProbe() probeResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// close stops a probe under way, and waits until its child is gone.
func (p *prober) close() {
	p.cancel()
	p.mu.Lock()
	done := p.running
	p.mu.Unlock()
	if done != nil {
		<-done
	}
}

func (p *prober) markStale() {
	p.mu.Lock()
	p.stale = true
	p.mu.Unlock()
}

func (p *prober) startLocked() {
	if p.ctx.Err() != nil {
		return // the backend is closed
	}
	done := make(chan struct{})
	p.running = done
	p.stale = false
	go func() {
		res := probeChild(p.ctx, p.start)
		p.mu.Lock()
		p.keepLocked(res)
		p.running = nil
		p.mu.Unlock()
		close(done)
	}()
}

// probeChild starts a child, initializes it as a client would, counts its
// tools (following pagination), and stops it.
func probeChild(ctx context.Context, start func(context.Context) (*supervisor.Child, error)) probeResult {
	res := probeResult{CheckedAt: time.Now()}
	child, err := start(ctx)
	if err != nil {
		res.Err = err
		return res
	}
	defer child.Stop()
	responses := make(chan []byte, 16)
	child.Attach(func(msg []byte) {
		if env, err := jsonrpc.ParseEnvelope(msg); err == nil && env.Kind() == jsonrpc.KindResponse {
			select {
			case responses <- msg:
			default: // answers nobody asked for, or after the probe gave up
			}
		}
	}, func([]byte) {}, func() { close(responses) })

	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	call := func(ctx context.Context, id int, method, params string) ([]byte, error) {
		msg := `{"jsonrpc":"2.0","id":` + strconv.Itoa(id) + `,"method":"` + method + `","params":` + params + `}`
		if err := child.Send([]byte(msg)); err != nil {
			return nil, err
		}
		for {
			select {
			case resp, ok := <-responses:
				if !ok {
					return nil, child.ExitError()
				}
				if string(jsonrpc.Member(resp, "id")) != strconv.Itoa(id) {
					continue
				}
				if e := jsonrpc.Member(resp, "error"); e != nil {
					return nil, fmt.Errorf("%s: %s", method, jsonrpc.StringValue(jsonrpc.Member(e, "message")))
				}
				return jsonrpc.Member(resp, "result"), nil
			case <-ctx.Done():
				return nil, fmt.Errorf("%s: no answer within %v", method, probeTimeout)
			}
		}
	}
	// The stateless protocol's probe first: a legacy server answers it
	// "method not found" (and may ignore it: hence the short wait).
	meta := `"_meta":{"io.modelcontextprotocol/protocolVersion":"` + versionStateless +
		`","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"caddy-mcp-bridge-probe","version":"1"}}`
	discoverCtx, cancelDiscover := context.WithTimeout(ctx, 5*time.Second)
	discovered, err := call(discoverCtx, 1, "server/discover", "{"+meta+"}")
	cancelDiscover()
	if child.Exited() {
		res.Err = child.ExitError()
		return res
	}
	if res.Era = eraOf(discovered, err); res.Era == "legacy" {
		meta = ""
		if _, err := call(ctx, 2, "initialize", `{"protocolVersion":"`+version20251125+`","capabilities":{},"clientInfo":{"name":"caddy-mcp-bridge-probe","version":"1"}}`); err != nil {
			res.Err = err
			return res
		}
		_ = child.Send([]byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}`))
	}
	res.Initialized = true
	cursor := ""
	for id := 3; id < 100; id++ {
		var fields []string
		if cursor != "" {
			fields = append(fields, `"cursor":`+strconv.Quote(cursor))
		}
		if meta != "" {
			fields = append(fields, meta)
		}
		result, err := call(ctx, id, "tools/list", "{"+strings.Join(fields, ",")+"}")
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) || res.Tools == 0 {
				res.Err = err
			}
			return res
		}
		if err := jsonrpc.ScanArray(jsonrpc.Member(result, "tools"), func([]byte) { res.Tools++ }); err != nil {
			res.Err = fmt.Errorf("tools/list: %v", err)
			return res
		}
		if cursor = jsonrpc.StringValue(jsonrpc.Member(result, "nextCursor")); cursor == "" {
			return res
		}
	}
	return res
}

// eraOf reads the answer to server/discover: which protocol eras the
// server speaks.
func eraOf(discovered []byte, err error) string {
	if err != nil {
		return "legacy"
	}
	stateless, legacy := false, false
	_ = jsonrpc.ScanArray(jsonrpc.Member(discovered, "supportedVersions"), func(v []byte) {
		if jsonrpc.StringValue(v) >= versionStateless {
			stateless = true
		} else {
			legacy = true
		}
	})
	switch {
	case stateless && legacy:
		return "dual"
	case stateless:
		return "stateless"
	}
	return "legacy"
}
