//go:build darwin || freebsd || netbsd || openbsd || dragonfly

package child

import (
	"errors"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// prepareCmd makes the child lead its own process group. These systems have
// no Pdeathsig: the watchdog alone kills the group if the bridge dies.
func prepareCmd(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return nil
}

// waitExited returns once the child has exited, without reaping it: until
// cmd.Wait, its pid, and so its group's id, cannot be reused. A kqueue
// reports the exit (x/sys offers no waitid with WNOWAIT here).
func (g *group) waitExited() {
	for {
		exited, _ := waitExit(g.pgid)
		if exited {
			return
		}
		// Only a shortage of descriptors or memory gets here. Waiting on
		// is better than killing the group of a child that may still run.
		time.Sleep(100 * time.Millisecond)
	}
}

// waitExit blocks until the process pid, a child not yet reaped, has exited.
// It reports false if it could not wait.
func waitExit(pid int) (bool, error) {
	kq, err := unix.Kqueue()
	if err != nil {
		return false, err
	}
	defer unix.Close(kq)
	changes := make([]unix.Kevent_t, 1)
	unix.SetKevent(&changes[0], pid, unix.EVFILT_PROC, unix.EV_ADD)
	changes[0].Fflags = unix.NOTE_EXIT
	events := make([]unix.Kevent_t, 1)
	for {
		// Adding the same event again after EINTR is harmless.
		n, err := unix.Kevent(kq, changes, events, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ESRCH):
			// macOS, OpenBSD and NetBSD refuse to watch a zombie: the
			// child exited before the event was added.
			return true, nil
		case err != nil:
			return false, err
		case n == 1 && events[0].Flags&unix.EV_ERROR != 0:
			if errno := syscall.Errno(events[0].Data); errno != unix.ESRCH {
				return false, errno
			}
			return true, nil
		case n == 1 && events[0].Fflags&unix.NOTE_EXIT != 0:
			return true, nil
		}
	}
}
