package child

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/windows"
)

// On Windows a child and everything it starts share a job object that
// kills them all when its last handle closes. Only the bridge holds that
// handle, so when the bridge exits, however it exits, Windows kills the
// job: no watchdog is needed.
//
// The child runs for a moment before it is put in its job (os/exec offers
// no way to create it suspended, or inside a job): whatever it starts in
// that moment stays outside the job, and if the bridge dies right then the
// child outlives it. A child this fast to spawn is unlikely: its runtime
// has barely loaded by then.

// terminateSignal names, for the logs, what Stop sends before it kills.
const terminateSignal = "CTRL_BREAK"

// prepareCmd starts the child in a new console process group: CTRL_BREAK
// can then be sent to it and what it starts, and a Ctrl+C in the bridge's
// console does not reach it (the bridge stops its children itself).
func prepareCmd(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{CreationFlags: windows.CREATE_NEW_PROCESS_GROUP}
	return nil
}

// group is a child's job object and console process group.
type group struct {
	proc *os.Process
	job  windows.Handle // zero if the child could not be put in a job
}

// newGroup puts the started child in a new job object. If that fails the
// child still runs, but only the child itself can be killed.
func newGroup(cmd *exec.Cmd, logger *zap.Logger) *group {
	g := &group{proc: cmd.Process}
	job, err := newJob()
	if err == nil {
		if err = assignToJob(job, cmd.Process); err != nil {
			_ = windows.CloseHandle(job)
		}
	}
	if err != nil {
		logger.Warn("could not put the child in a job object: what it starts will not be stopped with it, and it may outlive the bridge",
			zap.Int("pid", cmd.Process.Pid), zap.Error(err))
		return g
	}
	g.job = job
	return g
}

// newJob creates a job object whose processes are killed when its last
// handle closes. The handle is not inheritable: no child may keep it open.
func newJob() (windows.Handle, error) {
	job, err := windows.CreateJobObject(nil, nil)
	if err != nil {
		return 0, err
	}
	var info windows.JOBOBJECT_EXTENDED_LIMIT_INFORMATION
	info.BasicLimitInformation.LimitFlags = windows.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
	_, err = windows.SetInformationJobObject(job, windows.JobObjectExtendedLimitInformation,
		uintptr(unsafe.Pointer(&info)), uint32(unsafe.Sizeof(info)))
	if err != nil {
		_ = windows.CloseHandle(job)
		return 0, err
	}
	return job, nil
}

// assignToJob puts p in job. It uses the handle os/exec got from
// CreateProcess, rather than opening the pid, which names p for sure.
func assignToJob(job windows.Handle, p *os.Process) error {
	err := errors.New("no process handle")
	if herr := p.WithHandle(func(h uintptr) {
		err = windows.AssignProcessToJobObject(job, windows.Handle(h))
	}); herr != nil {
		return herr
	}
	return err
}

// waitExited returns once the child has exited, without reaping it.
func (g *group) waitExited() {
	_ = g.proc.WithHandle(func(h uintptr) {
		_, _ = windows.WaitForSingleObject(windows.Handle(h), windows.INFINITE)
	})
}

// terminate sends CTRL_BREAK to the child's console process group, which
// most runtimes take as a request to exit. It fails when the bridge has no
// console (a service, for one); Stop then kills at once.
func (g *group) terminate() error {
	return windows.GenerateConsoleCtrlEvent(windows.CTRL_BREAK_EVENT, uint32(g.proc.Pid))
}

// kill ends every process in the child's job, or the child alone if it has
// no job.
func (g *group) kill() error {
	if g.job == 0 {
		return g.proc.Kill()
	}
	return windows.TerminateJobObject(g.job, 1)
}

// release is called once the child has been reaped. Closing the job's last
// handle kills whatever is still in it.
func (g *group) release() {
	if g.job != 0 {
		_ = windows.CloseHandle(g.job)
		g.job = 0
	}
}
