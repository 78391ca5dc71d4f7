//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package child

// The watchdog kills the children's process groups when the bridge dies,
// however it dies, kill -9 included. Process groups alone do not do it: a
// group outlives the process that created it, Pdeathsig (Linux only) reaches
// only the direct child, and macOS and the BSDs have nothing like it.
//
// The first time a child starts, the bridge runs its own executable again
// with watchdogEnv set; this package's init sees it and runs the watchdog
// instead of the program. The watchdog reads registrations from a pipe whose
// write end only the bridge holds: "+<pgid>" when a child's group starts and
// "-<pgid>" once its leader has been reaped. When the pipe reaches EOF, the
// bridge is gone, whether it exited or was killed: the watchdog kills every
// group still registered and exits. It never outlives the bridge.
//
// Limits: a process that leaves its group (setsid, a daemon) escapes, as it
// escapes Stop. A child is registered just after it starts; if the bridge
// dies in between, only Pdeathsig (Linux) covers it. If the watchdog itself
// is killed, the bridge logs it once and goes on without.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// watchdogFd is the watchdog's end of the registration pipe: ExtraFiles[0].
const watchdogFd = 3

// watchdogWriteTimeout bounds a registration. A watchdog that reads never
// makes the bridge wait (the pipe holds thousands of registrations), so
// only a stuck one hits it.
const watchdogWriteTimeout = time.Second

// watchdog is the bridge's side of the watchdog.
var watchdog struct {
	once   sync.Once
	w      *os.File // the registration pipe; nil if there is no watchdog
	cmd    *exec.Cmd
	pid    int
	broken atomic.Bool // registrations stopped; it has been logged
}

func init() {
	if os.Getenv(watchdogEnv) != "1" {
		return
	}
	// Never return to the program's main: this process is the watchdog.
	os.Exit(runWatchdog())
}

// runWatchdog is the watchdog process. It ignores the signals a terminal or
// service manager sends to stop the bridge, so that it is there to clean up
// after the bridge; only EOF on the pipe ends it.
func runWatchdog() int {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	err := watch(os.NewFile(watchdogFd, "watchdog registrations"), func(pgid int) {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "mcp bridge child watchdog:", err)
		return 1
	}
	return 0
}

// watch reads registrations until r ends, then kills every group still
// registered. It counts rather than flags: a pgid freed by a reaped child
// may be taken by a new child before the old one's "-" is written.
func watch(r io.Reader, kill func(pgid int)) error {
	live := map[int]int{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if len(line) < 2 {
			continue
		}
		// 0 and 1 would turn kill(-pgid) into "my own group" and "init's".
		pgid, err := strconv.Atoi(line[1:])
		if err != nil || pgid <= 1 {
			continue
		}
		switch line[0] {
		case '+':
			live[pgid]++
		case '-':
			if live[pgid]--; live[pgid] <= 0 {
				delete(live, pgid)
			}
		}
	}
	for pgid := range live {
		kill(pgid)
	}
	return sc.Err()
}

// watchdogSend registers (op '+') or unregisters (op '-') a group with the
// watchdog, starting the watchdog the first time. It never blocks for
// long: a failed registration (the watchdog died or is stuck) is logged
// once and registrations stop; the children keep running.
func watchdogSend(op byte, pgid int, logger *zap.Logger) {
	// Concurrent first calls wait for the start: they need the pipe.
	watchdog.once.Do(func() { startWatchdog(logger) })
	w := watchdog.w
	if w == nil || watchdog.broken.Load() {
		return
	}
	// One write of a few bytes to a pipe is atomic: concurrent writers need
	// no lock, and a timed-out write leaves no partial line.
	_ = w.SetWriteDeadline(time.Now().Add(watchdogWriteTimeout))
	_, err := w.Write(fmt.Appendf(nil, "%c%d\n", op, pgid))
	if err == nil || !watchdog.broken.CompareAndSwap(false, true) {
		return
	}
	logger.Warn("the child watchdog is gone: if the bridge is killed, what its children started will outlive it", zap.Error(err))
	if errors.Is(err, syscall.EPIPE) {
		// Nobody reads the pipe: the watchdog has exited. Reap it. (No
		// goroutine waits on it all along: one that lives as long as the
		// bridge would count as leaked in goroutine-leak tests.)
		_ = watchdog.cmd.Wait()
	}
}

// startWatchdog starts the watchdog process. On failure it logs and the
// bridge goes on without one.
func startWatchdog(logger *zap.Logger) {
	exe, err := os.Executable()
	if err != nil {
		logger.Warn("cannot find the bridge's executable to start the child watchdog: if the bridge is killed, what its children started will outlive it", zap.Error(err))
		return
	}
	r, w, err := os.Pipe()
	if err != nil {
		logger.Warn("cannot start the child watchdog", zap.Error(err))
		return
	}
	// The argument only names the process in ps; watchdogEnv is the marker.
	cmd := exec.Command(exe, "mcp-bridge-child-watchdog")
	cmd.Env = append(withoutVar(os.Environ(), watchdogEnv), watchdogEnv+"=1")
	cmd.ExtraFiles = []*os.File{r}
	cmd.Dir = "/" // hold no directory busy
	cmd.Stderr = os.Stderr
	// Its own group: a Ctrl+C, or a signal to the bridge's group, must not
	// reach it. No Pdeathsig: it has to outlive the bridge, briefly.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	r.Close() // the watchdog must see EOF once the bridge's end closes
	if err != nil {
		w.Close()
		logger.Warn("cannot start the child watchdog: if the bridge is killed, what its children started will outlive it", zap.Error(err))
		return
	}
	watchdog.w, watchdog.cmd, watchdog.pid = w, cmd, cmd.Process.Pid
	logger.Debug("started the child watchdog", zap.Int("watchdog_pid", watchdog.pid))
}
