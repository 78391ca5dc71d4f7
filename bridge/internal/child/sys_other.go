//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly || windows)

package child

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"

	"go.uber.org/zap"
)

// On other systems the bridge has no way to stop what a child starts, nor
// to stop the child should the bridge die. Rather than leak processes, it
// starts none.

const terminateSignal = ""

func prepareCmd(*exec.Cmd) error {
	return fmt.Errorf("stdio MCP servers are not supported on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

type group struct{}

func newGroup(*exec.Cmd, *zap.Logger) *group { return &group{} }
func (*group) waitExited()                   {}
func (*group) terminate() error              { return errors.ErrUnsupported }
func (*group) kill() error                   { return errors.ErrUnsupported }
func (*group) release()                      {}
