//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// A load is sessions concurrent client sessions, each making calls tool
// calls one after another once all are open.
type load struct {
	sessions int
	calls    int
}

func (l load) String() string { return fmt.Sprintf("%dx%d", l.sessions, l.calls) }

// warmupCalls each session makes before the clock starts, so the first
// connection set-ups and lazy allocations on both sides are not timed.
const warmupCalls = 5

// A sample is what one run of a load measured.
type sample struct {
	setup   []time.Duration
	latency []time.Duration
	elapsed time.Duration
	cpu     time.Duration // of the measured process, during the calls
	// background is the CPU share of the machine, in percent, that
	// other programs used during the calls.
	background float64
	version    string // the protocol version the first session negotiated
}

// runLoad opens the sessions concurrently, timing each, warms them up, lets
// the system settle, then times every call and the measured process's CPU,
// and measures the load of other programs meanwhile.
func runLoad(ctx context.Context, sys *system, l load, call caller) (*sample, error) {
	sessions := make([]*mcp.ClientSession, l.sessions)
	s := &sample{setup: make([]time.Duration, l.sessions)}
	defer closeAll(sessions)
	err := forEach(l.sessions, l.sessions, func(i int) error {
		start := time.Now()
		cs, err := sys.connect(ctx)
		s.setup[i] = time.Since(start)
		sessions[i] = cs
		if err != nil {
			return fmt.Errorf("session %d: connect: %w", i, err)
		}
		for range warmupCalls {
			if err := call(ctx, cs); err != nil {
				return fmt.Errorf("session %d: warm-up call: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.version = sessions[0].InitializeResult().ProtocolVersion
	if sys.settle != nil {
		if err := sys.settle(ctx); err != nil {
			return nil, err
		}
	}
	latencies := make([][]time.Duration, l.sessions)
	meter, err := startMeter(sys.pid)
	if err != nil {
		return nil, err
	}
	cpu0, err := sys.cpu()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	err = forEach(l.sessions, l.sessions, func(i int) error {
		lat := make([]time.Duration, l.calls)
		for j := range lat {
			t := time.Now()
			if err := call(ctx, sessions[i]); err != nil {
				return fmt.Errorf("session %d: call %d: %w", i, j, err)
			}
			lat[j] = time.Since(t)
		}
		latencies[i] = lat
		return nil
	})
	s.elapsed = time.Since(start)
	if err != nil {
		return nil, err
	}
	cpu1, err := sys.cpu()
	if err != nil {
		return nil, err
	}
	s.cpu = cpu1 - cpu0
	if s.background, err = meter.foreign(); err != nil {
		return nil, err
	}
	s.latency = slices.Concat(latencies...)
	return s, nil
}

// forEach runs f(0) … f(n-1), at most limit at a time, and returns their
// errors joined.
func forEach(n, limit int, f func(i int) error) error {
	errs := make([]error, n)
	slots := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		slots <- struct{}{}
		wg.Go(func() {
			errs[i] = f(i)
			<-slots
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// closeAll ends the sessions, 64 at a time.
func closeAll(sessions []*mcp.ClientSession) {
	forEach(len(sessions), 64, func(i int) error {
		if sessions[i] != nil {
			sessions[i].Close()
		}
		return nil
	})
}

// A caller makes one tool call.
type caller func(ctx context.Context, cs *mcp.ClientSession) error

// toolCaller calls tool with args and fails on an error result. Each call
// has params of its own: the go-sdk writes the 2026-07-28 _meta into the
// params of a session of that version, which would otherwise go with every
// later call of every session, on every system. No arguments are sent as
// an empty object: a nil map would be sent as null, which mcp-proxy's
// request schema rejects.
func toolCaller(tool string, args map[string]any) caller {
	if args == nil {
		args = map[string]any{}
	}
	return func(ctx context.Context, cs *mcp.ClientSession) error {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
		if err != nil {
			return err
		}
		if res.IsError {
			return fmt.Errorf("%s: error result: %v", tool, res.Content)
		}
		return nil
	}
}

// quantile returns the q-quantile (0 < q ≤ 1) of sorted, nearest rank.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

// median returns the median of values, which it sorts.
func median(values []float64) float64 {
	if len(values) == 0 {
		return 0
	}
	slices.Sort(values)
	return values[len(values)/2]
}
