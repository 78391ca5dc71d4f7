//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// A peer is another way of putting a stdio MCP server on the network,
// measured on the same workloads as the bridge: each serves Streamable
// HTTP with sessions at /mcp.
type peer struct {
	name    string
	version string
	// args is the command line that serves command (a stdio server's
	// command line) on 127.0.0.1:port.
	args func(command string, port int) []string
}

// supergatewayPeer runs supergateway's dist/index.js with node, stateful,
// with a child per session, logging nothing (it logs every message by
// default).
func supergatewayPeer(node, script string) peer {
	return peer{name: "supergateway", version: packageVersion(script), args: func(command string, port int) []string {
		return []string{node, script, "--stdio", command, "--outputTransport", "streamableHttp",
			"--stateful", "--port", strconv.Itoa(port), "--logLevel", "none"}
	}}
}

// mcpProxyPeer runs punkpeye's mcp-proxy (its dist/bin/mcp-proxy.mjs)
// with node, in its defaults but the address: every session shares the
// one child it spawns.
func mcpProxyPeer(node, script string) peer {
	return peer{name: "mcp-proxy", version: packageVersion(script), args: func(command string, port int) []string {
		return append([]string{node, script, "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--"}, strings.Fields(command)...)
	}}
}

// nativePeer has the server serve Streamable HTTP itself, with sessions,
// through the go-sdk's handler: no bridge at all, the lower bound. Both
// Go servers of the bench take the flags: the conformance everything-server
// and `mcp-bench child`.
func nativePeer() peer {
	return peer{name: "native go", version: "go-sdk " + goSDKVersion(), args: func(command string, port int) []string {
		return append(strings.Fields(command), "-http", fmt.Sprintf("127.0.0.1:%d", port), "-stateless=false")
	}}
}

// launcher starts a fresh instance of the peer in front of command for one
// run: no session, child or garbage of an earlier run or case is left in
// the process measured.
func (p peer) launcher(command string) launcher {
	return func(ctx context.Context) (*system, error) {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		proc, err := startProcess(p.args(command, port), port)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		return &system{
			name:    p.name,
			pid:     proc.cmd.Process.Pid,
			connect: connectWith(&mcp.StreamableClientTransport{Endpoint: fmt.Sprintf("http://127.0.0.1:%d/mcp", port), HTTPClient: httpClient, MaxEventSize: -1}, sessionVersion),
			stop:    proc.stop,
		}, nil
	}
}

// process is a peer running in a process group of its own, so that
// stopping it also stops the children it spawned; stop finds those it
// put in groups of their own too.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startProcess runs args and waits until it listens on port itself.
func startProcess(args []string, port int) (*process, error) {
	p := &process{cmd: exec.Command(args[0], args[1:]...), done: make(chan struct{})}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	err := waitRunning(p.done, func() error {
		if !listens(p.cmd.Process.Pid, port) {
			return fmt.Errorf("not listening on port %d", port)
		}
		return nil
	})
	if err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

func (p *process) stop() {
	// A peer may start its children in process groups of their own
	// (supergateway does): they are found now, while they are still its.
	var children []int
	if parent, _, err := processes(); err == nil {
		for pid := range parent {
			if pid != p.cmd.Process.Pid && descends(parent, pid, p.cmd.Process.Pid) {
				children = append(children, pid)
			}
		}
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	// Children that outlived their parent go, with the group and alone.
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	for _, pid := range children {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// packageVersion reads the version of the npm package that file belongs
// to, from the nearest package.json above it, or "" if there is none.
func packageVersion(file string) string {
	for dir := filepath.Dir(file); dir != filepath.Dir(dir); dir = filepath.Dir(dir) {
		data, err := os.ReadFile(filepath.Join(dir, "package.json"))
		if err != nil {
			continue
		}
		var pkg struct{ Version string }
		json.Unmarshal(data, &pkg)
		return pkg.Version
	}
	return ""
}

// goSDKVersion is the go-sdk version this program was built with, which
// go.mod gives the everything-server too.
func goSDKVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/modelcontextprotocol/go-sdk" {
				return dep.Version
			}
		}
	}
	return "?"
}
