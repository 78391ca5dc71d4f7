//go:build linux

// Command mcp-bench measures what the bridge costs its users. It starts a
// real Caddy built from cmd/caddy in front of a stdio MCP server, drives
// concurrent go-sdk client sessions over each transport, and prints session
// set-up and call latency quantiles, calls per second and the bridge
// process's CPU time per call, as a table and as JSON. The same workloads
// run directly over stdio (the floor) and, when asked, against peers
// (supergateway, mcp-proxy, and the server's own Go HTTP server), in the
// same run, each run on fresh processes.
//
//	mcp-bench [flags]         run the benchmarks
//	mcp-bench url [flags]     run loads against a server started by hand
//	mcp-bench child [flags]   the bench's own MCP server (tools echo and blob)
//
// It runs on Linux only: it reads the CPU time and memory of processes
// from /proc.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

// options are mcp-bench's flags.
type options struct {
	caddy          string
	server         string
	tool           string
	node           string
	supergateway   string
	mcpProxy       string
	native         bool
	nodeEverything string
	loads          []string
	transports     []string
	runs           int
	echoCalls      int
	echoSize       int
	setupSessions  int
	coldSessions   int
	authCalls      int
	idleSessions   int
	idleWindow     time.Duration
	bigResult      int
	jsonPath       string
	profileDir     string
	profileSeconds int
	maxBackground  float64
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "child" {
		if err := runChild(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "mcp-bench child:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var rep *report
	var jsonPath string
	var err error
	if len(os.Args) > 1 && os.Args[1] == "url" {
		rep, jsonPath, err = runURL(ctx, os.Args[2:])
	} else {
		o := parseOptions(os.Args[1:])
		rep, err = run(ctx, o)
		jsonPath = o.jsonPath
	}
	if rep != nil {
		rep.print(os.Stdout)
		if jsonPath != "" {
			if werr := rep.writeJSON(jsonPath); werr != nil && err == nil {
				err = werr
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mcp-bench:", err)
		os.Exit(1)
	}
}

func parseOptions(args []string) *options {
	var o options
	fs := pflag.NewFlagSet("mcp-bench", pflag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprint(os.Stderr, "Usage: mcp-bench [flags]  (also: mcp-bench url --help, mcp-bench child)\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.caddy, "caddy", "bin/caddy", "the Caddy binary with mcp_bridge (go build -o bin/ ./cmd/caddy)")
	fs.StringVar(&o.server, "server", "bin/everything-server", "the stdio MCP server put behind the bridge")
	fs.StringVar(&o.tool, "tool", "test_simple_text", "the server's tool the loads call, with no arguments")
	fs.StringVar(&o.node, "node", "node", "the Node.js binary for the Node peers and --node-everything")
	fs.StringVar(&o.supergateway, "supergateway", "", "supergateway's dist/index.js, to run every workload against it too")
	fs.StringVar(&o.mcpProxy, "mcp-proxy", "", "mcp-proxy's dist/bin/mcp-proxy.mjs, to run every workload against it too")
	fs.BoolVar(&o.native, "native", true, "also run every workload against the server's own HTTP server (its -http and -stateless=false flags), the \"native go\" peer")
	fs.StringVar(&o.nodeEverything, "node-everything", "", "@modelcontextprotocol/server-everything's dist/index.js, for the warm-spare set-up case")
	fs.StringSliceVar(&o.loads, "loads", []string{"1x2000", "8x500", "64x50"}, "the loads: sessions x calls per session")
	fs.StringSliceVar(&o.transports, "transports", bridgeTransports, "the bridge's transports to measure")
	fs.IntVar(&o.runs, "runs", 3, "runs of each load; the report gives each figure's median")
	fs.IntVar(&o.echoCalls, "echo-calls", 300, "calls in the large echo case")
	fs.IntVar(&o.echoSize, "echo-size", 64<<10, "bytes of text each large echo sends and gets back")
	fs.IntVar(&o.setupSessions, "setup-sessions", 10, "sessions opened one after another in the Node set-up case")
	fs.IntVar(&o.coldSessions, "cold-sessions", 3, "of those, how many over stdio and the peers, which have no warm spares")
	fs.IntVar(&o.authCalls, "auth-calls", 2000, "calls of one session with an API key, then with an OAuth JWT, in the authentication case; 0 skips it")
	fs.IntVar(&o.idleSessions, "idle-sessions", 10000, "idle sessions in the shared-mode memory case; 0 skips it")
	fs.DurationVar(&o.idleWindow, "idle-window", 30*time.Second, "how long the idle sessions are watched for CPU; longer than the keepalive")
	fs.IntVar(&o.bigResult, "big-result", 10<<20, "bytes of the large result in the peak memory case; 0 skips it")
	fs.StringVar(&o.jsonPath, "json", "", "also write the report as JSON to this file")
	fs.StringVar(&o.profileDir, "profile-dir", ".", "where --profile-seconds writes its profiles")
	fs.IntVar(&o.profileSeconds, "profile-seconds", 0, "if set, save a CPU profile of the bridge's first so many seconds of each load, and its heap and goroutines with the idle sessions open, from Caddy's admin endpoint")
	addMaxBackground(fs, &o.maxBackground)
	fs.Parse(args)
	return &o
}

// addMaxBackground adds the flag that says how much load of other programs
// a run tolerates before it waits, and flags the case if it stays.
func addMaxBackground(fs *pflag.FlagSet, p *float64) {
	fs.Float64Var(p, "max-background", 15, "the CPU share of the machine (percent, all cores) that other programs may use; above it before a run, the run waits, and a case is flagged !load if the load stays or comes during a run")
}

// run measures every case and returns the report, as far as it got.
func run(ctx context.Context, o *options) (*report, error) {
	loads, err := parseLoads(o.loads)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// The bridges run in directories of their own, so every program's
	// path is made absolute.
	if o.node, err = exec.LookPath(o.node); err != nil && (o.supergateway != "" || o.mcpProxy != "" || o.nodeEverything != "") {
		return nil, err
	}
	for _, p := range []*string{&o.caddy, &o.server, &o.node, &o.supergateway, &o.mcpProxy, &o.nodeEverything} {
		if *p != "" {
			if *p, err = filepath.Abs(*p); err != nil {
				return nil, err
			}
		}
	}
	dir, err := os.MkdirTemp("", "mcp-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	b := &bench{options: o, loads: loads, self: self, dir: dir, rep: newReport(o)}
	for _, step := range []func(context.Context) error{b.callCases, b.authCase, b.idleCase, b.bigResultCase} {
		if err := step(ctx); err != nil {
			return b.rep, err
		}
	}
	b.rep.evaluate()
	return b.rep, nil
}

func parseLoads(specs []string) ([]load, error) {
	var loads []load
	for _, spec := range specs {
		s, c, ok := strings.Cut(spec, "x")
		sessions, err1 := strconv.Atoi(s)
		calls, err2 := strconv.Atoi(c)
		if !ok || err1 != nil || err2 != nil || sessions < 1 || calls < 1 {
			return nil, fmt.Errorf("load %q: want <sessions>x<calls>, such as 8x500", spec)
		}
		loads = append(loads, load{sessions: sessions, calls: calls})
	}
	return loads, nil
}
