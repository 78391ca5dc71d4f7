// Package mcptest holds what the project's tests share: a real stdio MCP
// server to bridge (the go-sdk conformance everything-server, built from the
// module), a real MCP client, and a process-table check for orphans.
package mcptest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// EverythingServerPackage is the stdio MCP server the tests put behind the bridge.
const EverythingServerPackage = "github.com/modelcontextprotocol/go-sdk/conformance/everything-server"

var (
	buildDir  string
	buildOnce sync.Once
	built     = map[string]string{}
	buildErr  = map[string]error{}
	buildMu   sync.Mutex
)

// Main runs a package's tests and removes what they built.
func Main(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// Build builds a Go package of this module (or one it requires) once per
// test binary and returns the path of the program.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	buildOnce.Do(func() {
		var err error
		if buildDir, err = os.MkdirTemp("", "mcpbridge-test-bin-"); err != nil {
			panic(err)
		}
	})
	buildMu.Lock()
	defer buildMu.Unlock()
	if path, ok := built[pkg]; ok {
		return path
	}
	if err, ok := buildErr[pkg]; ok {
		t.Fatal(err)
	}
	path := filepath.Join(buildDir, filepath.Base(pkg))
	out, err := exec.Command("go", "build", "-o", path, pkg).CombinedOutput()
	if err != nil {
		buildErr[pkg] = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		t.Fatal(buildErr[pkg])
	}
	built[pkg] = path
	return path
}

// EverythingServer returns the path of the built everything-server.
func EverythingServer(t testing.TB) string {
	return Build(t, EverythingServerPackage)
}

// Processes returns the pids of live processes running the program at path.
func Processes(path string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || strings.TrimSuffix(exe, " (deleted)") != path {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// WaitNoProcesses fails the test if processes of the program at path are
// still alive after timeout: children the bridge should have reaped.
func WaitNoProcesses(t testing.TB, path string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pids := Processes(path)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d processes of %s left behind: %v", len(pids), filepath.Base(path), pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Client is a go-sdk MCP client session with the notifications it received.
type Client struct {
	*mcp.ClientSession
	mu       sync.Mutex
	progress []*mcp.ProgressNotificationParams
}

// Progress returns the progress notifications received so far.
func (c *Client) Progress() []*mcp.ProgressNotificationParams {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*mcp.ProgressNotificationParams(nil), c.progress...)
}

// WaitProgress returns the progress notifications once n have arrived, or
// what arrived within a few seconds. The go-sdk client runs notification
// handlers apart from the call, so the last may land just after its result.
func (c *Client) WaitProgress(n int) []*mcp.ProgressNotificationParams {
	deadline := time.Now().Add(5 * time.Second)
	for {
		p := c.Progress()
		if len(p) >= n || time.Now().After(deadline) {
			return p
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Connect connects a go-sdk client over transport, asking for protocol
// version (empty means the SDK's default). The client answers sampling and
// elicitation requests and records progress.
func Connect(t testing.TB, transport mcp.Transport, version string) *Client {
	t.Helper()
	return ConnectSlowSampler(t, transport, version, 0)
}

// ConnectSlowSampler is Connect with a client that takes samplingDelay to
// answer each sampling request, as one that asks a model would.
func ConnectSlowSampler(t testing.TB, transport mcp.Transport, version string, samplingDelay time.Duration) *Client {
	t.Helper()
	c := &Client{}
	client := mcp.NewClient(&mcp.Implementation{Name: "mcpbridge-test", Version: "1.0.0"}, &mcp.ClientOptions{
		CreateMessageHandler: func(ctx context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
			select {
			case <-time.After(samplingDelay):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			prompt := ""
			if tc, ok := req.Params.Messages[0].Content.(*mcp.TextContent); ok {
				prompt = tc.Text
			}
			return &mcp.CreateMessageResult{Model: "test-model", Role: "assistant", Content: &mcp.TextContent{Text: "echo: " + prompt}}, nil
		},
		ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"username": "tester"}}, nil
		},
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			c.mu.Lock()
			c.progress = append(c.progress, req.Params)
			c.mu.Unlock()
		},
	})
	// The SSE transport's stream lives as long as the connect context, so
	// it is the test's, not one with a timeout.
	ctx := t.Context()
	var opts *mcp.ClientSessionOptions
	if version != "" {
		opts = &mcp.ClientSessionOptions{ProtocolVersion: version}
	}
	session, err := client.Connect(ctx, transport, opts)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	c.ClientSession = session
	return c
}

// CallText calls a tool and returns the text of its first content item.
func (c *Client) CallText(t testing.TB, name string, args map[string]any) string {
	t.Helper()
	params := &mcp.CallToolParams{Name: name, Arguments: args}
	if name == "test_tool_with_progress" {
		params.Meta = mcp.Meta{"progressToken": "progress-" + name}
	}
	return CallToolText(t, c.ClientSession, params)
}

// CallToolText makes a call that must succeed, within a minute, and
// returns the text of its result's first content item.
func CallToolText(t testing.TB, cs *mcp.ClientSession, params *mcp.CallToolParams) string {
	t.Helper()
	name := params.Name
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := cs.CallTool(ctx, params)
	if err != nil {
		t.Fatalf("call %s: %v", name, err)
	}
	if res.IsError || len(res.Content) == 0 {
		t.Fatalf("call %s: error result %+v", name, res)
	}
	tc, ok := res.Content[0].(*mcp.TextContent)
	if !ok {
		t.Fatalf("call %s: content is %T, not text", name, res.Content[0])
	}
	return tc.Text
}
