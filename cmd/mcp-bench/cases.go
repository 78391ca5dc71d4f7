//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// bench runs the cases and fills the report.
type bench struct {
	*options
	loads []load
	self  string // this program, whose `child` is the large-message server
	dir   string
	rep   *report
}

// bridgeSite is the body of a Caddyfile site block serving mcp_bridge in
// front of command, with the given pool options. A legacy SSE session
// whose client closed its stream is kept for resume_grace (30 s by
// default) in case the client comes back; the bench's never do, so it is
// cut to 1 s.
//
// Its node is the host the front dials it at (all bridges listen on
// 127.0.0.1), so that lb_policy mcp_session finds the owner of a session
// as in a real deployment.
func bridgeSite(command string, pool ...string) string {
	return fmt.Sprintf("\tmcp_bridge {\n\t\tcommand %s\n\t\tresume_grace 1s\n\t\tnode 127.0.0.1\n\t\tpool {\n\t\t\t%s\n\t\t}\n\t}\n",
		command, strings.Join(pool, "\n\t\t\t"))
}

// startCaddy starts a fresh bridge serving sites, in a directory of its own.
func (b *bench) startCaddy(name string, sites ...string) (*caddyProcess, error) {
	dir, err := os.MkdirTemp(b.dir, name+"-")
	if err != nil {
		return nil, err
	}
	return startCaddy(b.caddy, dir, sites...)
}

// bridgeLauncher starts a fresh Caddy per run, serving command on one site
// with minIdle warm spares, and waits for the spares: a bridge that sits
// beside the other systems' runs would take their CPU with its spares,
// and carry one run's leftovers into the next. connect says how clients
// come to it, such as bridgeSystem over a transport.
func (b *bench) bridgeLauncher(command string, minIdle int, connect func(c *caddyProcess) *system) launcher {
	return func(ctx context.Context) (*system, error) {
		// The spares and the sessions run at once: beyond the default
		// cap, sized for a workstation.
		c, err := b.startCaddy("bridge", bridgeSite(command, fmt.Sprintf("min_idle %d", minIdle), "max_processes off"))
		if err != nil {
			return nil, err
		}
		sys := connect(c)
		sys.stop = c.stop
		if err := c.waitSpares(ctx, c.urls[0], minIdle); err != nil {
			c.stop()
			return nil, err
		}
		return sys, nil
	}
}

// frontLauncher starts a fresh bridge, and in front of it a second Caddy
// whose reverse_proxy uses lb_policy mcp_session, as the README's
// "Running several instances" deploys them (one instance is enough to
// measure the hop). The CPU column is the front's: what the hop costs.
func (b *bench) frontLauncher(command string, minIdle int) launcher {
	var instance *caddyProcess
	launch := b.bridgeLauncher(command, minIdle, func(c *caddyProcess) *system {
		instance = c
		return &system{name: "bridge via front"}
	})
	return func(ctx context.Context) (*system, error) {
		sys, err := launch(ctx)
		if err != nil {
			return nil, err
		}
		front, err := b.startCaddy("front", fmt.Sprintf("\treverse_proxy %s {\n\t\tlb_policy mcp_session\n\t}\n", strings.TrimPrefix(instance.urls[0], "http://")))
		if err != nil {
			sys.stop()
			return nil, err
		}
		stopInstance, bridge := sys.stop, instance
		sys.stop = func() { front.stop(); stopInstance() }
		// Timed calls start once the bridge has its spare again, as
		// bridge streamable's do.
		sys.settle = func(ctx context.Context) error { return bridge.waitSpares(ctx, bridge.urls[0], minIdle) }
		sys.pid = front.pid()
		sys.profile = front.profile
		sys.connect = connectWith(&mcp.StreamableClientTransport{Endpoint: front.urls[0] + "/mcp", HTTPClient: httpClient, MaxEventSize: -1}, sessionVersion)
		return sys, nil
	}
}

func (b *bench) transportLauncher(command, transport string, minIdle int) launcher {
	return b.bridgeLauncher(command, minIdle, func(c *caddyProcess) *system {
		return bridgeSystem(c, c.urls[0], transport, minIdle)
	})
}

func stdioLauncher(command string) launcher {
	return func(context.Context) (*system, error) { return stdioSystem(strings.Fields(command)), nil }
}

// peers are the other gateways the run compares with, those asked for.
func (b *bench) peers() []peer {
	var peers []peer
	if b.supergateway != "" {
		peers = append(peers, supergatewayPeer(b.node, b.supergateway))
	}
	if b.mcpProxy != "" {
		peers = append(peers, mcpProxyPeer(b.node, b.mcpProxy))
	}
	if b.native {
		peers = append(peers, nativePeer())
	}
	return peers
}

// callCases measures the loads on every system, the large echo and the
// warm-spare set-up in front of a Node server. Every run of every system
// starts from fresh processes.
func (b *bench) callCases(ctx context.Context) error {
	for _, p := range b.peers() {
		b.rep.addPeer(p)
	}
	call := toolCaller(b.tool, nil)
	for _, l := range b.loads {
		// Spares for every session of the load, so that none waits for
		// a spawn.
		launchers := []launcher{stdioLauncher(b.server)}
		for _, t := range b.transports {
			launchers = append(launchers, b.transportLauncher(b.server, t, l.sessions))
			// The connector serves one desktop client: it is measured
			// with one session, next to the direct client it adds to.
			// So is the front of "Running several instances", whose hop
			// is what it adds.
			if l.sessions == 1 && t == "streamable" {
				launchers = append(launchers, b.bridgeLauncher(b.server, l.sessions, func(c *caddyProcess) *system {
					return connectorSystem(c, b.caddy, c.urls[0], l.sessions)
				}), b.frontLauncher(b.server, l.sessions))
			}
		}
		for _, p := range b.peers() {
			launchers = append(launchers, p.launcher(b.server))
		}
		for _, launch := range launchers {
			if err := b.measureLoad(ctx, l.String(), launch, l, call); err != nil {
				return err
			}
		}
	}

	echoCase := fmt.Sprintf("echo %s", size(b.echoSize))
	echo := toolCaller("echo", map[string]any{"text": strings.Repeat("x", b.echoSize)})
	childCommand := b.self + " child"
	launchers := []launcher{stdioLauncher(childCommand), b.transportLauncher(childCommand, "streamable", 1)}
	for _, p := range b.peers() {
		launchers = append(launchers, p.launcher(childCommand))
	}
	for _, launch := range launchers {
		if err := b.measureLoad(ctx, echoCase, launch, load{sessions: 1, calls: b.echoCalls}, echo); err != nil {
			return err
		}
	}

	if b.nodeEverything == "" {
		return nil
	}
	nodeCommand := b.node + " " + b.nodeEverything + " stdio"
	launchers = []launcher{stdioLauncher(nodeCommand)}
	for _, p := range b.peers() {
		if p.name != "native go" { // the Node server is not the Go one
			launchers = append(launchers, p.launcher(nodeCommand))
		}
	}
	launchers = append(launchers, b.transportLauncher(nodeCommand, "streamable", 1))
	for _, launch := range launchers {
		if err := b.measureSetups(ctx, "node set-up", launch); err != nil {
			return err
		}
	}
	return nil
}

// measureLoad runs load l b.runs times, each on a fresh instance of the
// system, and reports each figure's median.
func (b *bench) measureLoad(ctx context.Context, name string, launch launcher, l load, call caller) error {
	var samples []*sample
	var sys *system
	var busiest float64
	for run := range b.runs {
		share, err := quiet(ctx, b.maxBackground)
		if err != nil {
			return err
		}
		busiest = max(busiest, share)
		if sys, err = launch(ctx); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if run == 0 {
			fmt.Fprintf(os.Stderr, "%-12s %-18s", name, sys.name)
		}
		s, err := b.runOnce(ctx, name, sys, run, l, call)
		if sys.stop != nil {
			sys.stop()
		}
		if err != nil {
			return fmt.Errorf("%s on %s: %w", name, sys.name, err)
		}
		samples = append(samples, s)
		busiest = max(busiest, s.background)
		fmt.Fprint(os.Stderr, ".")
	}
	fmt.Fprintln(os.Stderr)
	b.rep.addLoad(name, sys, l, samples, background{BackgroundPercent: busiest, Busy: busiest > b.maxBackground})
	return nil
}

// runOnce runs load l on sys; the first run of a system that can be
// profiled is, when asked, with the profile finished before sys stops.
func (b *bench) runOnce(ctx context.Context, name string, sys *system, run int, l load, call caller) (*sample, error) {
	if run > 0 || b.profileSeconds == 0 || sys.profile == nil {
		return runLoad(ctx, sys, l, call)
	}
	path := filepath.Join(b.profileDir, strings.NewReplacer(" ", "-", "/", "-").Replace(name+"-"+sys.name)+".pprof")
	profiled := make(chan error, 1)
	go func() { profiled <- sys.profile(ctx, b.profileSeconds, path) }()
	s, err := runLoad(ctx, sys, l, call)
	return s, errors.Join(err, <-profiled)
}

// measureSetups opens sessions one after another on a fresh instance of
// the system, each once the system has settled, and reports the set-up
// times: b.setupSessions from warm spares, b.coldSessions where each
// spawns a child or the system has no spares to wait for.
func (b *bench) measureSetups(ctx context.Context, name string, launch launcher) error {
	share, err := quiet(ctx, b.maxBackground)
	if err != nil {
		return err
	}
	sys, err := launch(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if sys.stop != nil {
		defer sys.stop()
	}
	fmt.Fprintf(os.Stderr, "%-12s %-18s", name, sys.name)
	n := b.setupSessions
	if sys.settle == nil {
		n = min(n, b.coldSessions)
	}
	if n == 0 {
		return nil // asked for none: no row, and no target met by nothing
	}
	setups := make([]time.Duration, n)
	for i := range setups {
		if sys.settle != nil {
			if err := sys.settle(ctx); err != nil {
				return err
			}
		}
		start := time.Now()
		cs, err := sys.connect(ctx)
		setups[i] = time.Since(start)
		if err != nil {
			return fmt.Errorf("%s on %s: %w", name, sys.name, err)
		}
		cs.Close()
		fmt.Fprint(os.Stderr, ".")
	}
	fmt.Fprintln(os.Stderr)
	b.rep.addSetups(name, sys, setups, background{BackgroundPercent: share, Busy: share > b.maxBackground})
	return nil
}

// idleCase opens many Streamable HTTP sessions on a shared-mode bridge,
// each holding its GET stream open the way the go-sdk client does, and
// measures the bridge's memory and its CPU while they idle.
func (b *bench) idleCase(ctx context.Context) error {
	if b.idleSessions == 0 {
		return nil
	}
	perChild := max(b.idleSessions/4, 1)
	c, err := b.startCaddy("idle", bridgeSite(b.server, "isolation shared", fmt.Sprintf("sessions_per_process %d", perChild)))
	if err != nil {
		return err
	}
	defer c.stop()
	sys := bridgeSystem(c, c.urls[0], "streamable", 0)
	fmt.Fprintf(os.Stderr, "%-12s %-18s opening %d sessions", "idle", sys.name, b.idleSessions)
	rssBefore, err := memoryKiB(c.pid(), "VmRSS")
	if err != nil {
		return err
	}
	sessions := make([]*mcp.ClientSession, b.idleSessions)
	defer closeAll(sessions)
	start := time.Now()
	err = forEach(len(sessions), 64, func(i int) error {
		cs, err := sys.connect(ctx)
		sessions[i] = cs
		return err
	})
	if err != nil {
		return fmt.Errorf("idle sessions: %w", err)
	}
	opened := time.Since(start)
	// Each client opens its GET stream just after initializing.
	err = poll(ctx, time.Minute, func() error {
		if n := establishedTo(c.ports[0]); n < b.idleSessions {
			return fmt.Errorf("%d of %d GET streams open", n, b.idleSessions)
		}
		return nil
	})
	if err != nil {
		return err
	}
	time.Sleep(5 * time.Second) // let the set-ups' garbage collection finish
	cpu0, rss, err := usage(c.pid())
	if err != nil {
		return err
	}
	runtime, err := c.goMetrics(ctx, "go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes")
	if err != nil {
		return err
	}
	if b.profileSeconds > 0 {
		for _, which := range []string{"heap", "goroutine"} {
			if err := c.savePprof(ctx, which, filepath.Join(b.profileDir, "idle-"+which+".pprof")); err != nil {
				return err
			}
		}
	}
	fmt.Fprintf(os.Stderr, ", watching for %v", b.idleWindow)
	select {
	case <-time.After(b.idleWindow):
	case <-ctx.Done():
		return ctx.Err()
	}
	cpu1, rssAfter, err := usage(c.pid())
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr)
	b.rep.addIdle(sys, idleSample{
		sessions:    b.idleSessions,
		connections: establishedTo(c.ports[0]),
		opened:      opened,
		rssBefore:   rssBefore,
		rss:         max(rss, rssAfter),
		cpuShare:    float64(cpu1-cpu0) / float64(b.idleWindow),
		goroutines:  int(runtime["go_goroutines"]),
		heapInUse:   int64(runtime["go_memstats_heap_inuse_bytes"]) >> 10,
		stackInUse:  int64(runtime["go_memstats_stack_inuse_bytes"]) >> 10,
	})
	return nil
}

// bigResultCase has a fresh bridge pass a large result three times and
// measures how far its peak RSS rises above its RSS before each call.
func (b *bench) bigResultCase(ctx context.Context) error {
	if b.bigResult == 0 {
		return nil
	}
	c, err := b.startCaddy("big", bridgeSite(b.self+" child", "min_idle 1"))
	if err != nil {
		return err
	}
	defer c.stop()
	sys := bridgeSystem(c, c.urls[0], "streamable", 1)
	fmt.Fprintf(os.Stderr, "%-12s %-18s", "big result", sys.name)
	if err := sys.settle(ctx); err != nil {
		return err
	}
	cs, err := sys.connect(ctx)
	if err != nil {
		return err
	}
	defer cs.Close()
	var growth []int64
	for range 3 {
		if err := resetPeakRSS(c.pid()); err != nil {
			return err
		}
		before, err := memoryKiB(c.pid(), "VmRSS")
		if err != nil {
			return err
		}
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "blob", Arguments: map[string]any{"size": b.bigResult}})
		if err != nil {
			return fmt.Errorf("big result: %w", err)
		}
		if text, ok := res.Content[0].(*mcp.TextContent); !ok || len(text.Text) != b.bigResult {
			return fmt.Errorf("big result: got %T content, not %d bytes of text", res.Content[0], b.bigResult)
		}
		peak, err := memoryKiB(c.pid(), "VmHWM")
		if err != nil {
			return err
		}
		growth = append(growth, peak-before)
		fmt.Fprint(os.Stderr, ".")
	}
	fmt.Fprintln(os.Stderr)
	b.rep.addBigResult(sys, b.bigResult, growth)
	return nil
}

// size formats a byte count the way the flags' defaults read: 64KiB, 10MiB.
func size(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
