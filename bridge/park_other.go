//go:build !linux

package bridge

import (
	"errors"
	"syscall"
)

// Only Linux has a poller for parked streams (epoll); elsewhere a
// detached stream's writer waits in its connection's Read.
const parkingSupported = false

var errNoPoller = errors.New("no poller for parked streams on this OS")

func (pk *parking) watch() error { return errNoPoller }

func (pk *parking) forget() {}

func peek(syscall.RawConn) peekResult { return peekClosed }
