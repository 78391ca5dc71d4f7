package child

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"go.uber.org/zap"
)

// The watchdog tests run this test binary a second time as the bridge (the
// "parent"), so that they can kill it for real. parentEnv holds the path of
// the test child it is to start.
const parentEnv = "MCPBRIDGE_CHILD_TEST_PARENT"

func TestMain(m *testing.M) {
	if exe := os.Getenv(parentEnv); exe != "" {
		os.Exit(runParent(exe))
	}
	mcptest.Main(m)
}

// started is the parent's answer to "start".
type started struct {
	Child, Grandchild, Watchdog int
}

// runParent plays the bridge. It reads commands from stdin and answers each
// with one JSON line on stdout:
//
//	start   starts a test child with a grandchild; answers a started
//	stop N  stops the N-th child started (from 0); answers {}
//	exit    exits normally, leaving what still runs; so does EOF
func runParent(exe string) int {
	logger, _ := zap.NewDevelopment() // to stderr, which the test shows on failure
	out := json.NewEncoder(os.Stdout)
	var children []*Process
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "start":
			p, err := Start(Config{Argv: []string{exe, "-spawn-grandchild"}}, logger)
			if err != nil {
				logger.Error("start", zap.Error(err))
				return 1
			}
			children = append(children, p)
			gc, err := grandchildPid(p)
			if err != nil {
				logger.Error("grandchild", zap.Error(err))
				return 1
			}
			out.Encode(started{Child: p.Pid(), Grandchild: gc, Watchdog: watchdog.pid})
		case "stop":
			i, _ := strconv.Atoi(arg)
			children[i].Stop()
			out.Encode(struct{}{})
		case "exit":
			return 0
		}
	}
	return 0
}

// grandchildPid asks a test child started with -spawn-grandchild for the
// pid of its grandchild.
func grandchildPid(p *Process) (int, error) {
	msgs := make(chan []byte, 1)
	p.Attach(func(msg []byte) { msgs <- msg }, func([]byte) {}, func() {})
	if err := p.Send([]byte(`{"jsonrpc":"2.0","id":1,"method":"grandchild"}`)); err != nil {
		return 0, err
	}
	select {
	case msg := <-msgs:
		var resp struct{ Result struct{ Pid int } }
		if err := json.Unmarshal(msg, &resp); err != nil || resp.Result.Pid == 0 {
			return 0, fmt.Errorf("answer %s: %v", msg, err)
		}
		return resp.Result.Pid, nil
	case <-time.After(10 * time.Second):
		return 0, fmt.Errorf("no answer")
	}
}

// parent is the test's handle on a running parent.
type parent struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	answer *json.Decoder
	stderr string // the file holding its log
}

// startParent runs this test binary as a parent that starts copies of the
// test child exe. Cleanup kills the parent, if it still runs, and shows its
// log if the test failed.
func startParent(t *testing.T, exe string) *parent {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A file, not a pipe: the watchdog inherits the parent's stderr, and a
	// pipe would keep cmd.Wait waiting for the watchdog too.
	stderr, err := os.CreateTemp(t.TempDir(), "parent-stderr")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), parentEnv+"="+exe)
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() {
			log, _ := os.ReadFile(stderr.Name())
			t.Logf("parent's log:\n%s", log)
		}
		stderr.Close()
	})
	return &parent{cmd: cmd, stdin: stdin, answer: json.NewDecoder(stdout), stderr: stderr.Name()}
}

// do sends the parent a command and decodes its answer into v.
func (p *parent) do(t *testing.T, command string, v any) {
	t.Helper()
	if _, err := fmt.Fprintln(p.stdin, command); err != nil {
		t.Fatalf("%s: %v", command, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- p.answer.Decode(v) }()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("%s: no answer from the parent: %v", command, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no answer from the parent", command) // cleanup kills it
	}
}

// waitGone waits until none of pids runs the program at path.
func waitGone(t *testing.T, path, what string, pids ...int) {
	t.Helper()
	mcptest.WaitFor(t, 10*time.Second, what+" to be gone", func() bool {
		return !slices.ContainsFunc(pids, func(pid int) bool { return mcptest.Running(path, pid) })
	})
}

// mustRun fails the test unless every pid runs the program at path.
func mustRun(t *testing.T, path, what string, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		if !mcptest.Running(path, pid) {
			t.Fatalf("%s (%d) is not running", what, pid)
		}
	}
}

// TestWatchdogKillsGroupsWhenBridgeIsKilled kills the bridge with SIGKILL
// and checks that the children it left, and what they started, die too.
// The grandchild ignores SIGTERM, is not the bridge's child and outlives
// its parent: only the watchdog can kill it. A child stopped before must
// not upset the watchdog.
func TestWatchdogKillsGroupsWhenBridgeIsKilled(t *testing.T) {
	exe := mcptest.TestChild(t)
	self, _ := os.Executable()
	par := startParent(t, exe)
	var first, second started
	par.do(t, "start", &first)
	par.do(t, "start", &second)
	if first.Watchdog == 0 || second.Watchdog != first.Watchdog {
		t.Fatalf("watchdog pids %d and %d, want one watchdog", first.Watchdog, second.Watchdog)
	}
	mustRun(t, exe, "a child or grandchild", first.Child, first.Grandchild, second.Child, second.Grandchild)

	par.do(t, "stop 0", &struct{}{})
	waitGone(t, exe, "the stopped child's group", first.Child, first.Grandchild)
	mustRun(t, self, "the watchdog, after a Stop,", first.Watchdog)
	mustRun(t, exe, "the other child or grandchild", second.Child, second.Grandchild)

	if err := par.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	par.cmd.Wait()
	waitGone(t, exe, "the child and grandchild left by the killed bridge", second.Child, second.Grandchild)
	waitGone(t, self, "the watchdog", first.Watchdog)
}

// TestWatchdogEndsWithBridge checks that the watchdog keeps running after a
// child is stopped, and that once the bridge exits normally no watchdog is
// left, nor the child the bridge did not stop, nor what that child started.
func TestWatchdogEndsWithBridge(t *testing.T) {
	exe := mcptest.TestChild(t)
	self, _ := os.Executable()
	par := startParent(t, exe)
	var first, second started
	par.do(t, "start", &first)
	par.do(t, "stop 0", &struct{}{})
	waitGone(t, exe, "the stopped child's group", first.Child, first.Grandchild)
	mustRun(t, self, "the watchdog, after a Stop,", first.Watchdog)

	par.do(t, "start", &second)
	mustRun(t, exe, "the new child or grandchild", second.Child, second.Grandchild)
	if _, err := fmt.Fprintln(par.stdin, "exit"); err != nil {
		t.Fatal(err)
	}
	if err := par.cmd.Wait(); err != nil {
		t.Fatalf("parent: %v", err)
	}
	waitGone(t, self, "the watchdog", first.Watchdog)
	waitGone(t, exe, "the child and grandchild the bridge did not stop", second.Child, second.Grandchild)
}

// TestWatchdogDeathIsSurvived kills the watchdog and checks that the bridge
// carries on without it: children still start and stop, and the loss is
// logged once, not at every registration.
func TestWatchdogDeathIsSurvived(t *testing.T) {
	exe := mcptest.TestChild(t)
	self, _ := os.Executable()
	par := startParent(t, exe)
	var first, second, third started
	par.do(t, "start", &first)
	if err := syscall.Kill(first.Watchdog, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, self, "the killed watchdog", first.Watchdog)
	par.do(t, "start", &second) // its registration finds the watchdog gone
	par.do(t, "start", &third)
	mustRun(t, exe, "a child or grandchild started without a watchdog", second.Child, second.Grandchild, third.Child, third.Grandchild)
	for i, s := range []started{first, second, third} {
		par.do(t, "stop "+strconv.Itoa(i), &struct{}{})
		waitGone(t, exe, "the stopped child's group", s.Child, s.Grandchild)
	}
	if _, err := fmt.Fprintln(par.stdin, "exit"); err != nil {
		t.Fatal(err)
	}
	if err := par.cmd.Wait(); err != nil {
		t.Fatalf("parent: %v", err)
	}
	log, err := os.ReadFile(par.stderr)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), "the child watchdog is gone"); n != 1 {
		t.Errorf("the watchdog's loss was logged %d times, want once", n)
	}
}

// TestWatchdogWatch checks the registration bookkeeping: on EOF it kills
// the groups registered more often than unregistered, each once, and skips
// lines it cannot use, above all pgids 0 and 1, which kill(2) would read as
// "my own group" and "init".
func TestWatchdogWatch(t *testing.T) {
	in := strings.Join([]string{
		"+100", "+200", "-100", // 100 reaped
		"+300", "+300", "-300", // 300 reused by a new child before the old one's "-"
		"+0", "+1", "+-5", "+", "x400", "+abc", "", "+500",
	}, "\n") + "\n"
	var killed []int
	if err := watch(strings.NewReader(in), func(pgid int) { killed = append(killed, pgid) }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(killed)
	if want := []int{200, 300, 500}; !slices.Equal(killed, want) {
		t.Errorf("killed %v, want %v", killed, want)
	}
}
