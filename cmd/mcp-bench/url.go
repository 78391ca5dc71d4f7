//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/pflag"
)

// runURL runs loads against a Streamable HTTP endpoint that the user
// started by hand, such as a peer, with the same client and measures as
// the full run: `mcp-bench url`, so that anyone can check a figure of the
// table against a process of their own. The CPU per call is that of
// process --pid, if given. It returns the report and where to write it
// as JSON.
func runURL(ctx context.Context, args []string) (*report, string, error) {
	o := &options{}
	var url, name string
	var pid int
	var stateless bool
	fs := pflag.NewFlagSet("mcp-bench url", pflag.ExitOnError)
	fs.StringVar(&url, "url", "", "the Streamable HTTP endpoint, such as http://127.0.0.1:8000/mcp")
	fs.IntVar(&pid, "pid", 0, "the process whose CPU time per call is measured, such as the gateway's; 0 for none")
	fs.StringVar(&name, "name", "url", "the system's name in the report")
	fs.BoolVar(&stateless, "stateless", false, "let the client negotiate the go-sdk's default protocol (2026-07-28 when offered) rather than 2025-11-25 sessions")
	fs.StringVar(&o.tool, "tool", "test_simple_text", "the server's tool the loads call, with no arguments")
	fs.StringSliceVar(&o.loads, "loads", []string{"1x1000"}, "the loads: sessions x calls per session")
	fs.IntVar(&o.runs, "runs", 1, "runs of each load, all against the one process; the report gives each figure's median")
	fs.StringVar(&o.jsonPath, "json", "", "also write the report as JSON to this file")
	addMaxBackground(fs, &o.maxBackground)
	fs.Parse(args)
	if url == "" {
		return nil, "", errors.New("url: --url is required")
	}
	loads, err := parseLoads(o.loads)
	if err != nil {
		return nil, "", err
	}
	version := sessionVersion
	if stateless {
		version = ""
	}
	sys := &system{
		name:    name,
		pid:     pid,
		connect: connectWith(&mcp.StreamableClientTransport{Endpoint: url, HTTPClient: httpClient, MaxEventSize: -1}, version),
	}
	if _, err := sys.cpu(); err != nil {
		return nil, "", fmt.Errorf("url: --pid: %w", err)
	}
	// A server started in the same breath may not listen yet.
	if u, err := neturl.Parse(url); err != nil {
		return nil, "", err
	} else if err := waitListening(u.Host, nil); err != nil {
		return nil, "", fmt.Errorf("url: %s: %w", u.Host, err)
	}
	b := &bench{options: o, loads: loads, rep: newReport(o)}
	launch := func(context.Context) (*system, error) { return sys, nil }
	for _, l := range loads {
		if err := b.measureLoad(ctx, l.String(), launch, l, toolCaller(o.tool, nil)); err != nil {
			return b.rep, o.jsonPath, err
		}
	}
	return b.rep, o.jsonPath, nil
}
