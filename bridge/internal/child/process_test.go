package child

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// attachedChild is a started Process whose stdout feeds channels.
type attachedChild struct {
	*Process
	msgs     chan []byte
	oversize chan []byte
	closed   chan struct{}
}

// startChild starts a child and attaches to its stdout; the child is killed
// at cleanup if the test left it running.
func startChild(t *testing.T, cfg Config) *attachedChild {
	t.Helper()
	p, err := Start(cfg, mcptest.Logger(t))
	if err != nil {
		t.Fatalf("StartProcess: %v", err)
	}
	t.Cleanup(func() {
		if !p.Exited() {
			p.Kill()
		}
	})
	c := &attachedChild{Process: p, msgs: make(chan []byte, 100), oversize: make(chan []byte, 10), closed: make(chan struct{})}
	p.Attach(
		func(msg []byte) { c.msgs <- msg },
		func(prefix []byte) { c.oversize <- append([]byte(nil), prefix...) },
		func() { close(c.closed) },
	)
	return c
}

// call sends a request and returns the next message from the child, which
// must be the response to it.
func (c *attachedChild) call(t *testing.T, id int, method string, params any) json.RawMessage {
	t.Helper()
	req := map[string]any{"jsonrpc": "2.0", "id": id, "method": method}
	if params != nil {
		req["params"] = params
	}
	b, _ := json.Marshal(req)
	if err := c.Send(b); err != nil {
		t.Fatalf("Send: %v", err)
	}
	select {
	case msg := <-c.msgs:
		env, err := jsonrpc.ParseEnvelope(msg)
		if err != nil || env.Kind() != jsonrpc.KindResponse || string(env.ID) != strconv.Itoa(id) {
			t.Fatalf("got %s, want the response to request %d", msg, id)
		}
		return env.Result
	case <-c.closed:
		t.Fatalf("child's stdout closed before it answered %s", method)
	case <-time.After(10 * time.Second):
		t.Fatalf("no answer to %s", method)
	}
	return nil
}

// TestStartProcessEnvAndDir checks that the child gets the bridge's
// environment plus the configured entries, and runs in the configured
// directory.
func TestStartProcessEnvAndDir(t *testing.T) {
	exe := mcptest.TestChild(t)
	t.Setenv("MCPBRIDGE_TEST_INHERITED", "from the bridge")
	t.Setenv("MCPBRIDGE_TEST_OVERRIDDEN", "from the bridge")
	t.Setenv("MCPBRIDGE_TEST_SECRET", "an API key")
	withholdKey := func(_, value string) bool { return value == "an API key" }
	own, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	for _, tc := range []struct {
		name     string
		cfg      Config
		wantEnv  []string // entries that must appear, each exactly once per name
		withheld []string // names that must not appear
		wantCwd  string
	}{
		{"only the safe list is inherited", Config{},
			[]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, []string{"MCPBRIDGE_TEST_INHERITED", "MCPBRIDGE_TEST_SECRET"}, own},
		{"inherit passes a variable by name", Config{Inherit: []string{"MCPBRIDGE_TEST_INHERITED"}},
			[]string{"MCPBRIDGE_TEST_INHERITED=from the bridge"}, []string{"MCPBRIDGE_TEST_SECRET"}, own},
		{"inherit * passes everything but what is withheld", Config{Inherit: []string{InheritAll}, Withhold: withholdKey},
			[]string{"MCPBRIDGE_TEST_INHERITED=from the bridge"}, []string{"MCPBRIDGE_TEST_SECRET"}, own},
		{"unset names are never passed", Config{Inherit: []string{InheritAll}, UnsetEnv: []string{"MCPBRIDGE_TEST_INHERITED"}},
			nil, []string{"MCPBRIDGE_TEST_INHERITED"}, own},
		{"entries are added verbatim", Config{Env: []string{"MCPBRIDGE_TEST_A=1", "MCPBRIDGE_TEST_B=with space=and $HOME"}},
			[]string{"MCPBRIDGE_TEST_A=1", "MCPBRIDGE_TEST_B=with space=and $HOME"}, nil, own},
		{"an entry overrides the bridge's variable", Config{Inherit: []string{InheritAll}, Env: []string{"MCPBRIDGE_TEST_OVERRIDDEN=configured"}},
			[]string{"MCPBRIDGE_TEST_OVERRIDDEN=configured"}, nil, own},
		{"dir is the working directory", Config{Dir: tmp}, nil, nil, tmp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Argv = []string{exe, "-print-env"}
			c := startChild(t, cfg)
			defer c.Stop()
			var got struct {
				Env []string `json:"env"`
				Cwd string   `json:"cwd"`
			}
			if err := json.Unmarshal(c.call(t, 1, "env", nil), &got); err != nil {
				t.Fatal(err)
			}
			for _, want := range tc.wantEnv {
				name, _, _ := strings.Cut(want, "=")
				var entries []string
				for _, e := range got.Env {
					if strings.HasPrefix(e, name+"=") {
						entries = append(entries, e)
					}
				}
				if len(entries) != 1 || entries[0] != want {
					t.Errorf("child's environment has %q for %s, want exactly %q", entries, name, want)
				}
			}
			for _, name := range tc.withheld {
				for _, e := range got.Env {
					if strings.HasPrefix(e, name+"=") {
						t.Errorf("child's environment has %q", e)
					}
				}
			}
			wantCwd, _ := filepath.EvalSymlinks(tc.wantCwd)
			if gotCwd, _ := filepath.EvalSymlinks(got.Cwd); gotCwd != wantCwd {
				t.Errorf("child's working directory = %s, want %s", got.Cwd, tc.wantCwd)
			}
		})
	}
}

// TestStartProcessDropsWatchdogMarker checks that the variable that makes
// a re-executed bridge the watchdog never reaches a child, whether the
// bridge's environment or the configuration holds it: a child that is
// itself a bridge would become a watchdog.
func TestStartProcessDropsWatchdogMarker(t *testing.T) {
	exe := mcptest.TestChild(t)
	t.Setenv(watchdogEnv, "1")
	c := startChild(t, Config{Argv: []string{exe, "-print-env"}, Env: []string{watchdogEnv + "=1", "MCPBRIDGE_TEST_KEPT=1"}})
	defer c.Stop()
	var got struct{ Env []string }
	if err := json.Unmarshal(c.call(t, 1, "env", nil), &got); err != nil {
		t.Fatal(err)
	}
	for _, e := range got.Env {
		if strings.HasPrefix(e, watchdogEnv+"=") {
			t.Errorf("the child's environment has %s", e)
		}
	}
	if !slices.Contains(got.Env, "MCPBRIDGE_TEST_KEPT=1") {
		t.Error("the child's environment lacks the configured MCPBRIDGE_TEST_KEPT=1")
	}
}

// TestProcessStop checks each step of Stop: a well-behaved child exits when
// its stdin closes, one that lingers gets SIGTERM after StdinCloseTimeout,
// and one that ignores SIGTERM gets SIGKILL after TermTimeout too. In every
// case Stop returns and the process is gone.
func TestProcessStop(t *testing.T) {
	exe := mcptest.TestChild(t)
	const short, long = 200 * time.Millisecond, 10 * time.Second
	for _, tc := range []struct {
		name        string
		flags       []string
		stdinClose  time.Duration
		term        time.Duration
		wantSignal  syscall.Signal // 0: a normal exit with status 0
		minDuration time.Duration
		maxDuration time.Duration
	}{
		{"exits when stdin closes", nil, long, long, 0, 0, long},
		{"lingers: SIGTERM after StdinCloseTimeout", []string{"-linger"}, short, long, syscall.SIGTERM, short, long},
		{"ignores SIGTERM: SIGKILL after StdinCloseTimeout+TermTimeout", []string{"-ignore-term"}, short, short, syscall.SIGKILL, 2 * short, long},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startChild(t, Config{
				Argv:              append([]string{exe}, tc.flags...),
				StdinCloseTimeout: tc.stdinClose,
				TermTimeout:       tc.term,
			})
			c.call(t, 1, "ping", nil) // the child is past its setup, SIGTERM handling included
			if !mcptest.Running(exe, c.Pid()) {
				t.Fatalf("child %d is not in the process table", c.Pid())
			}

			start := time.Now()
			stopped := make(chan struct{})
			go func() {
				c.Stop()
				close(stopped)
			}()
			select {
			case <-stopped:
			case <-time.After(tc.maxDuration + 5*time.Second):
				t.Fatal("Stop did not return")
			}
			took := time.Since(start)
			if took < tc.minDuration || took > tc.maxDuration {
				t.Errorf("Stop took %v, want between %v and %v", took, tc.minDuration, tc.maxDuration)
			}
			if mcptest.Running(exe, c.Pid()) {
				t.Errorf("child %d is still in the process table after Stop returned", c.Pid())
			}
			if !c.Exited() {
				t.Error("Exited() = false after Stop")
			}

			err := c.ExitErr()
			var exitErr *exec.ExitError
			switch {
			case tc.wantSignal == 0 && err != nil:
				t.Errorf("exit error %v, want a clean exit", err)
			case tc.wantSignal != 0 && !errors.As(err, &exitErr):
				t.Errorf("exit error %v, want death by %v", err, tc.wantSignal)
			case tc.wantSignal != 0:
				ws := exitErr.Sys().(syscall.WaitStatus)
				if !ws.Signaled() || ws.Signal() != tc.wantSignal {
					t.Errorf("child ended with %v, want death by %v", err, tc.wantSignal)
				}
			}
			select {
			case <-c.closed:
			case <-time.After(5 * time.Second):
				t.Error("onClose did not run after the child exited")
			}
		})
	}
}

// TestProcessGroupKilled checks that what a child started goes with it,
// whichever way the child ends: the grandchild ignores SIGTERM and would
// otherwise live on.
func TestProcessGroupKilled(t *testing.T) {
	exe := mcptest.TestChild(t)
	for _, tc := range []struct {
		name  string
		flags []string
		end   func(*Process)
	}{
		{"child exits when stdin closes", nil, (*Process).Stop},
		{"child ignores SIGTERM and is killed", []string{"-ignore-term"}, (*Process).Stop},
		{"Kill", nil, (*Process).Kill},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startChild(t, Config{
				Argv:              append([]string{exe, "-spawn-grandchild"}, tc.flags...),
				StdinCloseTimeout: 100 * time.Millisecond,
				TermTimeout:       100 * time.Millisecond,
			})
			var gc struct{ Pid int }
			if err := json.Unmarshal(c.call(t, 1, "grandchild", nil), &gc); err != nil || gc.Pid == 0 {
				t.Fatalf("grandchild pid: %v", err)
			}
			for _, pid := range []int{c.Pid(), gc.Pid} {
				if !mcptest.Running(exe, pid) {
					t.Fatalf("process %d is not running before the stop", pid)
				}
			}
			tc.end(c.Process)
			if mcptest.Running(exe, c.Pid()) {
				t.Errorf("child %d still runs after the stop returned", c.Pid())
			}
			mcptest.WaitFor(t, 5*time.Second, "the grandchild to exit", func() bool { return !mcptest.Running(exe, gc.Pid) })
		})
	}
}

// TestProcessDropsGarbage checks that lines on stdout that are not JSON are
// dropped and every valid message still arrives, in order, and that stderr
// output (including lines over the stderr reader's limit, many times the
// pipe's capacity in all) neither blocks the child nor reaches the messages.
func TestProcessDropsGarbage(t *testing.T) {
	exe := mcptest.TestChild(t)
	c := startChild(t, Config{Argv: []string{exe, "-garbage"}})
	defer c.Stop()
	const n = 30 // each answer comes with 80 KiB of stderr
	for i := 1; i <= n; i++ {
		var got struct{ Echo struct{ I int } }
		if err := json.Unmarshal(c.call(t, i, "tools/call", map[string]int{"i": i}), &got); err != nil || got.Echo.I != i {
			t.Fatalf("answer %d: %+v, %v", i, got, err)
		}
	}
	select {
	case msg := <-c.msgs:
		t.Errorf("unexpected message after the last answer: %q", msg)
	default:
	}
}

// TestProcessOversize checks that a line over MaxMessageSize is dropped
// with its start handed to onOversize, where its id can still be read, and
// that the child's next message still arrives.
func TestProcessOversize(t *testing.T) {
	exe := mcptest.TestChild(t)
	c := startChild(t, Config{Argv: []string{exe, "-huge", "100000"}, MaxMessageSize: 10000})
	defer c.Stop()
	if err := c.Send([]byte(`{"jsonrpc":"2.0","id":"big","method":"huge"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case prefix := <-c.oversize:
		if id := jsonrpc.Member(prefix, "id"); string(id) != `"big"` {
			t.Errorf("id in the oversize prefix = %s, want \"big\" (prefix %.80s)", id, prefix)
		}
		if len(prefix) > jsonrpc.OversizePrefixSize {
			t.Errorf("prefix is %d bytes, want at most %d", len(prefix), jsonrpc.OversizePrefixSize)
		}
	case msg := <-c.msgs:
		t.Fatalf("got a %d-byte message, want it refused as too large", len(msg))
	case <-time.After(10 * time.Second):
		t.Fatal("onOversize was not called")
	}
	c.call(t, 2, "ping", nil)
}

// TestStartProcessErrors checks that StartProcess itself fails, rather than
// a child that dies at once, for every command that cannot run.
func TestStartProcessErrors(t *testing.T) {
	exe := mcptest.TestChild(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no argv", Config{}},
		{"absolute path that does not exist", Config{Argv: []string{filepath.Join(dir, "no-such-server")}}},
		{"name not on PATH", Config{Argv: []string{"mcpbridge-no-such-program-on-path"}}},
		{"empty program name", Config{Argv: []string{""}}},
		{"a directory", Config{Argv: []string{dir}}},
		{"a file that is not executable", Config{Argv: []string{writeFile(t, dir, "not-executable", 0o644)}}},
		{"working directory that does not exist", Config{Argv: []string{exe}, Dir: filepath.Join(dir, "missing")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Start(tc.cfg, mcptest.Logger(t))
			if err == nil {
				p.Kill()
				t.Fatal("StartProcess succeeded, want an error")
			}
			t.Logf("error: %v", err)
		})
	}
}

func writeFile(t *testing.T, dir, name string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"), mode); err != nil {
		t.Fatal(err)
	}
	return path
}
