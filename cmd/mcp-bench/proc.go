//go:build linux

package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cpuTime is the CPU time, user and system, that the threads of process pid
// have used so far. It sums each thread's schedstat (nanoseconds) rather
// than reading /proc/<pid>/stat, whose 10 ms ticks are too coarse for a run
// of a few hundred milliseconds.
func cpuTime(pid int) (time.Duration, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("no threads of process %d", pid)
	}
	var total time.Duration
	for _, task := range tasks {
		data, err := os.ReadFile(task)
		if err != nil {
			continue // the thread exited between the glob and the read
		}
		fields := strings.Fields(string(data))
		if len(fields) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %v", task, err)
		}
		total += time.Duration(ns)
	}
	return total, nil
}

// memoryKiB reads a field of /proc/<pid>/status such as VmRSS or VmHWM
// (the peak RSS), in KiB.
func memoryKiB(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	prefix := []byte(field + ":")
	for sc.Scan() {
		if rest, ok := bytes.CutPrefix(sc.Bytes(), prefix); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(string(rest)), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("process %d: no %s in its status", pid, field)
}

// usage reads the CPU time and the RSS (KiB) of process pid.
func usage(pid int) (cpu time.Duration, rssKiB int64, err error) {
	if cpu, err = cpuTime(pid); err != nil {
		return 0, 0, err
	}
	rssKiB, err = memoryKiB(pid, "VmRSS")
	return cpu, rssKiB, err
}

// resetPeakRSS makes VmHWM start again from the current RSS (clear_refs
// value 5, Linux 4.0 and later).
func resetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// tcpSockets calls fn with the fields of each line of the kernel's TCP
// tables (IPv4 and IPv6) whose local port is port: fields[3] is the state,
// fields[9] the inode.
func tcpSockets(port int, fn func(fields []string)) {
	suffix := fmt.Sprintf(":%04X", port)
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(data)) {
			if fields := strings.Fields(line); len(fields) > 9 && strings.HasSuffix(fields[1], suffix) {
				fn(fields)
			}
		}
	}
}

// establishedTo counts the TCP connections in state ESTABLISHED whose local
// port is port: the server side of the clients' connections.
func establishedTo(port int) int {
	n := 0
	tcpSockets(port, func(fields []string) {
		if fields[3] == "01" {
			n++
		}
	})
	return n
}

// listens reports whether process pid itself has a socket listening on
// TCP port. A port that freePort found free may be taken by another
// program before the process binds it, and a connection that succeeds
// would then be that program's.
func listens(pid, port int) bool {
	sockets := map[string]bool{}
	tcpSockets(port, func(fields []string) {
		if fields[3] == "0A" { // LISTEN
			sockets["socket:["+fields[9]+"]"] = true
		}
	})
	if len(sockets) == 0 {
		return false
	}
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	for _, fd := range fds {
		if link, err := os.Readlink(fd); err == nil && sockets[link] {
			return true
		}
	}
	return false
}
