package child

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Escaped descendants. A process that a child starts and that leaves the
// child's process group (setsid: a daemon) is out of reach of the group
// kill. On Linux the bridge makes itself a child subreaper, so that such a
// process, once orphaned, becomes the bridge's own child rather than
// init's; and every child's environment carries a marker that what it
// starts inherits. When a child ends, the bridge kills and reaps its own
// children that carry that child's marker. One that exits before that is
// reaped by a scan every few seconds, if the scan saw it alive: only
// processes known to carry a marker are ever reaped here, so that no other
// module's children are. (A daemon that clears its environment is not
// found; nor is one when the bridge itself is killed.)

// childMarkerEnv names the marker variable.
const childMarkerEnv = "MCPBRIDGE_CHILD"

var subreaper sync.Once

// escapeeMarker returns the marker of a new child, as an environment
// entry, having made the bridge a subreaper if it was not yet.
func escapeeMarker(logger *zap.Logger) string {
	subreaper.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			logger.Warn("cannot become a child subreaper: a daemon a child starts may outlive it", zap.Error(err))
		}
	})
	var b [8]byte
	_, _ = rand.Read(b[:])
	return childMarkerEnv + "=" + hex.EncodeToString(b[:])
}

// escapees are the bridge's children seen carrying a marker: the only
// processes the bridge reaps besides its own children, which are listed
// in direct until os/exec has reaped them.
// The scan runs while the bridge has children or knows escapees: its
// goroutine ends when both are gone.
var escapees = struct {
	sync.Mutex
	pids     map[int]bool
	direct   map[int]bool
	scanning chan struct{} // closed to end the scan; nil when none runs
}{pids: make(map[int]bool), direct: make(map[int]bool)}

// ownChild lists or unlists a child the bridge started itself.
func ownChild(pid int, own bool) {
	escapees.Lock()
	defer escapees.Unlock()
	if own {
		escapees.direct[pid] = true
		if escapees.scanning == nil {
			escapees.scanning = make(chan struct{})
			go reapEscapees(escapees.scanning)
		}
		return
	}
	delete(escapees.direct, pid)
	delete(escapees.pids, pid)
	stopScanLocked()
}

// stopScanLocked ends the scan when it has nothing left to watch.
func stopScanLocked() {
	if escapees.scanning != nil && len(escapees.direct) == 0 && len(escapees.pids) == 0 {
		close(escapees.scanning)
		escapees.scanning = nil
	}
}

// killEscapees kills and reaps the bridge's children whose environment
// holds marker: what the child that had it started and left behind.
func killEscapees(marker string, logger *zap.Logger) {
	if marker == "" {
		return
	}
	want := append([]byte{0}, marker+"\x00"...)
	forEachOrphan(func(pid int, zombie bool, env []byte) {
		if zombie || !bytes.Contains(append([]byte{0}, env...), want) {
			return
		}
		logger.Info("killing a process the child left behind outside its process group", zap.Int("escaped_pid", pid))
		_ = unix.Kill(pid, unix.SIGKILL)
		reap(pid)
	})
}

// reapEscapees notes the escapees alive and reaps those that exited,
// every few seconds until stop is closed.
func reapEscapees(stop chan struct{}) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		forEachOrphan(func(pid int, zombie bool, env []byte) {
			escapees.Lock()
			known := escapees.pids[pid]
			if !zombie && !known && bytes.Contains(env, []byte(childMarkerEnv+"=")) {
				escapees.pids[pid] = true
			}
			escapees.Unlock()
			if zombie && known {
				reap(pid)
			}
		})
	}
}

func reap(pid int) {
	var status unix.WaitStatus
	_, _ = unix.Wait4(pid, &status, 0, nil)
	escapees.Lock()
	delete(escapees.pids, pid)
	stopScanLocked()
	escapees.Unlock()
}

// forEachOrphan calls f for each of the bridge's children, with whether
// it is a zombie and its environment (empty for a zombie).
func forEachOrphan(f func(pid int, zombie bool, env []byte)) {
	self := os.Getpid()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, state := statOf(pid)
		escapees.Lock()
		direct := escapees.direct[pid]
		escapees.Unlock()
		if ppid != self || direct {
			continue
		}
		env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		f(pid, state == "Z", env)
	}
}

// statOf is the parent pid and state of pid, from /proc/<pid>/stat; 0
// when unknown.
func statOf(pid int) (ppid int, state string) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, ""
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(fields) < 2 {
		return 0, ""
	}
	ppid, _ = strconv.Atoi(fields[1])
	return ppid, fields[0]
}
