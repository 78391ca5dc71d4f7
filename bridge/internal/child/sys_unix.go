//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package child

import (
	"os/exec"
	"syscall"

	"go.uber.org/zap"
)

// terminateSignal names, for the logs, what Stop sends before it kills.
const terminateSignal = "SIGTERM"

// group is a child's process group. The child leads it (prepareCmd sets
// Setpgid), so its id is the child's pid.
type group struct {
	pgid   int
	logger *zap.Logger
}

// newGroup is called once the child has started, before anything can reap
// it. It registers the group with the watchdog, which kills it should the
// bridge die.
func newGroup(cmd *exec.Cmd, logger *zap.Logger) *group {
	g := &group{pgid: cmd.Process.Pid, logger: logger}
	watchdogSend('+', g.pgid, logger)
	return g
}

// terminate asks every process in the group to exit.
func (g *group) terminate() error { return syscall.Kill(-g.pgid, syscall.SIGTERM) }

// kill ends every process in the group.
func (g *group) kill() error { return syscall.Kill(-g.pgid, syscall.SIGKILL) }

// release is called once the leader has been reaped: the watchdog forgets
// the group, whose id is free for reuse.
func (g *group) release() { watchdogSend('-', g.pgid, g.logger) }
