package child

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"go.uber.org/zap"
)

// Config says how to start one stdio MCP server.
type Config struct {
	// Argv is the program and its arguments. No shell is involved.
	Argv []string
	// Env holds KEY=value entries the child gets, on top of what it
	// inherits.
	Env []string
	// Inherit names variables of the bridge's environment that the child
	// gets besides DefaultInheritedEnv; InheritAll passes them all.
	Inherit []string
	// UnsetEnv names variables of the bridge's environment that the child
	// never inherits, such as those holding API keys.
	UnsetEnv []string
	// Withhold, when set, refuses variables of the bridge's environment
	// whatever Inherit says, such as those whose value is an API key. It
	// is not part of what the configuration means.
	Withhold func(name, value string) bool `json:"-"`
	// Dir is the working directory; empty means the bridge's own.
	Dir string
	// MaxMessageSize caps one line of the child's stdout.
	MaxMessageSize int
	// StdinCloseTimeout is how long a child may take to exit after its stdin
	// is closed before it is asked to terminate (SIGTERM to its group; on
	// Windows, CTRL_BREAK); zero means DefaultStdinCloseTimeout.
	StdinCloseTimeout time.Duration
	// TermTimeout is how long a child may take to exit once asked to
	// terminate before its group is killed (SIGKILL; on Windows, the job
	// is terminated); zero means DefaultTermTimeout.
	TermTimeout time.Duration
}

// Default shutdown timeouts.
const (
	DefaultStdinCloseTimeout = 2 * time.Second
	DefaultTermTimeout       = 3 * time.Second
)

// watchdogEnv marks the bridge's own executable, re-executed, as the
// watchdog (see watchdog_unix.go). It is never passed on to a child: a child
// that links this package, such as a nested bridge, would turn into a
// watchdog.
const watchdogEnv = "MCPBRIDGE_CHILD_WATCHDOG"

// Process is one running stdio MCP server. It leads its own process group
// (on Windows: job object), so that stopping it also stops what it started
// (npx, shell wrappers). How each system does that is in the sys_*.go files.
type Process struct {
	cfg    Config
	cmd    *exec.Cmd
	logger *zap.Logger

	// group is the child's process group. groupMu makes "has the leader
	// exited?" and a signal to the group one step, so that no signal goes
	// out once wait is about to reap the leader and free the group's id.
	group        *group
	groupMu      sync.Mutex
	leaderExited bool

	stdout *os.File
	lines  *jsonrpc.LineReader
	early  [][]byte // read by Ping before Attach, for the session
	stdin  *input

	// When the child's stdout ended, and when the bridge first asked it
	// to stop (unix nanos; 0: not yet), to tell an exit on its own from
	// one the bridge caused, whichever is reaped first.
	eofAt, stopAt atomic.Int64

	marker string // the environment entry its descendants inherit; "" where unused

	attachOnce sync.Once
	done       chan struct{} // closed once the process has exited
	waitErr    error
	started    time.Time
}

// Start starts the child. Its stdout is not read until Attach, so a
// warm spare costs only its pipe buffer.
func Start(cfg Config, logger *zap.Logger) (*Process, error) {
	if len(cfg.Argv) == 0 {
		return nil, errors.New("no command to run")
	}
	if cfg.StdinCloseTimeout <= 0 {
		cfg.StdinCloseTimeout = DefaultStdinCloseTimeout
	}
	if cfg.TermTimeout <= 0 {
		cfg.TermTimeout = DefaultTermTimeout
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = jsonrpc.DefaultMaxMessageSize
	}
	cmd := exec.Command(cfg.Argv[0], cfg.Argv[1:]...)
	cmd.Env = childEnv(cfg)
	marker := escapeeMarker(logger)
	if marker != "" {
		cmd.Env = append(cmd.Env, marker)
	}
	cmd.Dir = cfg.Dir
	if err := prepareCmd(cmd); err != nil {
		return nil, err
	}

	// Our own pipes: exec's would be closed by Wait, racing the reader
	// and the writer; with os.Pipe the reader sees EOF by itself, and a
	// stalled write can be ended by closing the pipe.
	var pipes [6]*os.File // stdin, stdout, stderr: read end, write end
	for i := 0; i < len(pipes); i += 2 {
		r, w, err := os.Pipe()
		if err != nil {
			closeAll(pipes[:i])
			return nil, err
		}
		pipes[i], pipes[i+1] = r, w
	}
	stdinR, stdinW, stdoutR, stdoutW, stderrR, stderrW := pipes[0], pipes[1], pipes[2], pipes[3], pipes[4], pipes[5]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, stdoutW, stderrW
	err := cmd.Start()
	closeAll([]*os.File{stdinR, stdoutW, stderrW}) // the child's ends
	if err != nil {
		closeAll([]*os.File{stdinW, stdoutR, stderrR})
		return nil, fmt.Errorf("starting %s: %w", cfg.Argv[0], err)
	}
	p := &Process{
		cfg:     cfg,
		marker:  marker,
		cmd:     cmd,
		logger:  logger.With(zap.Int("pid", cmd.Process.Pid)),
		group:   newGroup(cmd, logger), // before wait can reap the leader
		stdout:  stdoutR,
		lines:   jsonrpc.NewLineReader(stdoutR, cfg.MaxMessageSize),
		stdin:   newInput(stdinW, cfg.MaxMessageSize),
		done:    make(chan struct{}),
		started: time.Now(),
	}
	ownChild(p.Pid(), true)
	go p.logStderr(stderrR)
	go p.wait()
	return p, nil
}

// withoutVar is env without the entries for name; env itself is unchanged.
func withoutVar(env []string, name string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		return strings.HasPrefix(kv, name+"=")
	})
}

func closeAll(files []*os.File) {
	for _, f := range files {
		_ = f.Close()
	}
}

// Pid is the child's process id (and process group id).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Started is when the child was started.
func (p *Process) Started() time.Time { return p.started }

// Done is closed when the child has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitErr is the child's exit status once Done is closed, and nil before:
// the end of its stdout may come before the child has been reaped.
func (p *Process) ExitErr() error {
	select {
	case <-p.done:
		return p.waitErr
	default:
		return nil
	}
}

// ExitedOnItsOwn reports whether the child ended before the bridge asked
// it to (its stdout ended first, or it was never asked): a crash, not a
// stop.
func (p *Process) ExitedOnItsOwn() bool {
	stop := p.stopAt.Load()
	eof := p.eofAt.Load()
	return stop == 0 || eof != 0 && eof <= stop
}

// Exited reports whether the child has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Attach starts delivering the child's stdout messages to onMessage, one at
// a time, on one goroutine; onMessage owns each slice. onOversize gets the
// start of a line that was over the limit. onClose runs once stdout ends.
// Attach may be called once.
func (p *Process) Attach(onMessage func([]byte), onOversize func(prefix []byte), onClose func()) {
	p.attachOnce.Do(func() {
		go p.readStdout(onMessage, onOversize, onClose)
	})
}

func (p *Process) readStdout(onMessage func([]byte), onOversize func([]byte), onClose func()) {
	defer onClose()
	defer p.stdout.Close()
	for _, msg := range p.early {
		onMessage(msg)
	}
	p.early = nil
	lr := p.lines
	for {
		line, err := lr.Next()
		switch {
		case errors.Is(err, jsonrpc.ErrMessageTooLarge):
			p.logger.Warn("child sent a message over max_message_size; dropped",
				zap.Int("max_message_size", lr.Max()))
			onOversize(lr.OversizePrefix())
			continue
		case err != nil:
			p.eofAt.CompareAndSwap(0, time.Now().UnixNano())
			return
		}
		if !jsonrpc.Valid(line) {
			p.logger.Warn("child wrote a line that is not JSON to stdout; dropped",
				zap.ByteString("line", line[:min(len(line), 200)]))
			continue
		}
		onMessage(line)
	}
}

// earlyLimit caps what Ping keeps of a spare's unprompted messages.
const earlyLimit = 64

// Ping asks a child that is not attached yet whether it still answers: it
// sends an MCP ping and waits for any answer to it (an error counts: the
// child is alive). Messages the child sent meanwhile are kept for Attach.
// It must not run concurrently with Attach.
func (p *Process) Ping(timeout time.Duration) error {
	id := `"mcpbridge-ping-` + strconv.FormatInt(time.Now().UnixNano(), 36) + `"`
	if err := p.Send([]byte(`{"jsonrpc":"2.0","id":` + id + `,"method":"ping"}`)); err != nil {
		return err
	}
	if err := p.stdout.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	defer p.stdout.SetReadDeadline(time.Time{})
	for {
		line, err := p.lines.Next()
		switch {
		case errors.Is(err, jsonrpc.ErrMessageTooLarge):
			continue
		case err != nil:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				p.eofAt.CompareAndSwap(0, time.Now().UnixNano())
			}
			return fmt.Errorf("no answer to ping: %w", err)
		}
		if !jsonrpc.Valid(line) {
			continue
		}
		if string(jsonrpc.Member(line, "id")) == id {
			return nil
		}
		if len(p.early) < earlyLimit {
			p.early = append(p.early, line)
		}
	}
}

// Send queues one message and its newline for the child's stdin, and
// fails when the child has not read what was queued before, up to
// max_message_size: it never waits for the child. It takes ownership of
// msg (it may append to it).
func (p *Process) Send(msg []byte) error {
	// stdio frames by line. A client may send pretty-printed JSON, whose
	// line breaks can only be whitespace between tokens: make them spaces.
	if bytes.IndexByte(msg, '\n') >= 0 || bytes.IndexByte(msg, '\r') >= 0 {
		for i, c := range msg {
			if c == '\n' || c == '\r' {
				msg[i] = ' '
			}
		}
	}
	return p.stdin.send(append(msg, '\n'))
}

// InputStalled is how long a write to the child's stdin has been blocked
// on a child that does not read it; zero when none is.
func (p *Process) InputStalled(now time.Time) time.Duration { return p.stdin.stalledFor(now) }

// wait reaps the child. Whatever the child left running in its group goes
// with it: the group is killed while the exited leader still holds its pid
// (on Windows: while the job handle is open), so the group id cannot have
// been reused.
func (p *Process) wait() {
	p.group.waitExited()
	p.groupMu.Lock()
	p.leaderExited = true
	_ = p.group.kill()
	p.groupMu.Unlock()
	p.waitErr = p.cmd.Wait()
	ownChild(p.Pid(), false)
	p.group.release()
	killEscapees(p.marker, p.logger)
	p.stdin.abort() // what is left to write has no reader
	close(p.done)
}

// signal applies f to the child's group, unless the leader has exited: then
// wait has killed the group already, and once it reaps the leader the
// group's id may name someone else's.
func (p *Process) signal(f func(*group) error) error {
	p.groupMu.Lock()
	defer p.groupMu.Unlock()
	if p.leaderExited {
		return nil
	}
	return f(p.group)
}

// Stop ends the child: it closes stdin and waits, then asks the process
// group to terminate (SIGTERM; CTRL_BREAK on Windows) and waits, then kills
// the group. It returns once the child is gone.
func (p *Process) Stop() {
	p.stopAt.CompareAndSwap(0, time.Now().UnixNano())
	p.stdin.close()
	if p.waitFor(p.cfg.StdinCloseTimeout) {
		return
	}
	p.logger.Debug("child did not exit after stdin closed; asking it to terminate", zap.String("signal", terminateSignal))
	switch err := p.signal((*group).terminate); {
	case err != nil:
		// No point waiting TermTimeout for a request that never went out.
		p.logger.Debug("could not ask the child to terminate; killing it", zap.Error(err))
	case p.waitFor(p.cfg.TermTimeout):
		return
	default:
		p.logger.Warn("child did not exit when asked to terminate; killing its process group", zap.String("signal", terminateSignal))
	}
	_ = p.signal((*group).kill)
	<-p.done
}

// Kill ends the child and its process group at once (SIGKILL; on Windows
// the job is terminated).
func (p *Process) Kill() {
	p.stopAt.CompareAndSwap(0, time.Now().UnixNano())
	_ = p.signal((*group).kill)
	<-p.done
}

func (p *Process) waitFor(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}
