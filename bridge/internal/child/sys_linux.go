package child

import (
	"errors"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// prepareCmd makes the child lead its own process group, and has the kernel
// SIGKILL it when the bridge dies. Pdeathsig reaches only the child itself,
// not what it starts; the watchdog covers those, and Pdeathsig covers the
// child in the moment before it is registered with the watchdog or should
// the watchdog be gone.
func prepareCmd(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return nil
}

// waitExited returns once the child has exited, without reaping it: until
// cmd.Wait, its pid, and so its group's id, cannot be reused.
func (g *group) waitExited() {
	for {
		err := unix.Waitid(unix.P_PID, g.pgid, nil, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return
		}
	}
}
