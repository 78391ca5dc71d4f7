package bridge

import (
	"encoding/binary"
	"errors"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

const parkingSupported = true

// poller watches parked streams' sockets with one epoll instance and one
// goroutine for the process, which exits when it watches none: the last
// stream's forget tells it through an eventfd (key 0).
var poller struct {
	mu      sync.Mutex
	running bool
	epfd    int
	efd     int
	next    uint64
	byKey   map[uint64]*parking
}

// watch has the poller report the socket's next input or hang-up, once.
func (pk *parking) watch() error {
	poller.mu.Lock()
	defer poller.mu.Unlock()
	if !poller.running {
		if err := startPoller(); err != nil {
			return err
		}
	}
	op, key := unix.EPOLL_CTL_MOD, pk.key
	if !pk.watched {
		op, key = unix.EPOLL_CTL_ADD, poller.next+1
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(key), Pad: int32(key >> 32)}
	if err := unix.EpollCtl(poller.epfd, op, pk.fd, &ev); err != nil {
		if len(poller.byKey) == 0 {
			tellPoller() // it may have started for this stream alone
		}
		return err
	}
	if !pk.watched {
		poller.next = key
		pk.key, pk.watched = key, true
		poller.byKey[key] = pk
	}
	return nil
}

// startPoller makes the epoll instance and its eventfd, and starts the
// poller's goroutine; the poller's lock is held.
func startPoller() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err == nil {
		err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &unix.EpollEvent{Events: unix.EPOLLIN})
		if err != nil {
			unix.Close(efd)
		}
	}
	if err != nil {
		unix.Close(epfd)
		return err
	}
	poller.running, poller.epfd, poller.efd, poller.byKey = true, epfd, efd, make(map[uint64]*parking)
	go pollParked(epfd, efd)
	return nil
}

// tellPoller wakes the poller to see whether it still watches anything;
// the poller's lock is held.
func tellPoller() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(poller.efd, one[:])
}

// forget stops watching the socket.
func (pk *parking) forget() {
	poller.mu.Lock()
	defer poller.mu.Unlock()
	if pk.watched {
		_ = unix.EpollCtl(poller.epfd, unix.EPOLL_CTL_DEL, pk.fd, nil)
		delete(poller.byKey, pk.key)
		pk.watched = false
		if len(poller.byKey) == 0 {
			tellPoller()
		}
	}
}

// pollParked wakes the streams whose sockets epfd reports, until it
// watches none.
func pollParked(epfd, efd int) {
	events := make([]unix.EpollEvent, 128)
	var woken []*parking
	for {
		n, err := unix.EpollWait(epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		poller.mu.Lock()
		told := false
		for _, ev := range events[:max(n, 0)] {
			key := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if key == 0 {
				told = true
				var b [8]byte
				_, _ = unix.Read(efd, b[:])
			} else if pk := poller.byKey[key]; pk != nil {
				woken = append(woken, pk)
			}
		}
		done := err != nil || (told && len(poller.byKey) == 0)
		if done {
			// Done (or broken, which no valid epfd is): every stream still
			// watched looks at its connection, and watches anew.
			for _, pk := range poller.byKey {
				pk.watched = false
				woken = append(woken, pk)
			}
			clear(poller.byKey)
			unix.Close(efd)
			unix.Close(epfd)
			poller.running = false
		}
		poller.mu.Unlock()
		for _, pk := range woken {
			pk.readable.Store(true)
			pk.wake()
		}
		if done {
			return
		}
		clear(woken)
		woken = woken[:0]
	}
}

// peek looks at a socket's input without taking it. (Control, not Read:
// a Read would first see the read deadline that wakers set in the past.)
func peek(raw syscall.RawConn) peekResult {
	var (
		b   [1]byte
		n   int
		err error
	)
	if raw.Control(func(fd uintptr) {
		n, _, err = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	}) != nil {
		return peekClosed
	}
	switch {
	case err == nil && n > 0:
		return peekData
	case err == nil, errors.Is(err, unix.ECONNRESET), errors.Is(err, unix.ENOTCONN), errors.Is(err, unix.EPIPE), errors.Is(err, unix.ETIMEDOUT):
		return peekClosed // EOF, or the connection failed
	}
	return peekNothing // EAGAIN: nothing to read; a passing error is no news
}
