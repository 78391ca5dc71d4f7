//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// The machine is shared with whatever else runs on it, and a case timed
// while a build takes a core is slower for reasons of its own. So before
// each run the bench measures the load it did not make, waits for it to
// pass, and flags the case when it did not.
const (
	backgroundWindow = 500 * time.Millisecond
	backgroundWait   = 3 * time.Second
	backgroundTries  = 4
)

// quiet waits until the CPU used by other programs than this one (whose
// systems are stopped between runs) is at most max percent of the
// machine, trying backgroundTries times, and returns the last share
// measured.
func quiet(ctx context.Context, max float64) (float64, error) {
	var share float64
	for try := range backgroundTries {
		if try > 0 {
			fmt.Fprintf(os.Stderr, "(load %.0f%%, waiting)", share)
			select {
			case <-time.After(backgroundWait):
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		var err error
		if share, err = foreignShare(ctx, backgroundWindow); err != nil || share <= max {
			return share, err
		}
	}
	return share, nil
}

// foreignShare measures, over window, the share of the machine's CPU time
// (all cores) that was busy with other programs than this one.
func foreignShare(ctx context.Context, window time.Duration) (float64, error) {
	m, err := startMeter(0)
	if err != nil {
		return 0, err
	}
	select {
	case <-time.After(window):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return m.foreign()
}

// A meter measures the share of the machine's CPU time that programs
// other than this one and its descendants (the systems under test and
// their children) use from its start. The process measured, if not 0,
// counts as the bench's own too, with its descendants: a server that
// `mcp-bench url` did not start.
type meter struct {
	measured              int
	busy, total, ownTicks int64
}

func startMeter(measured int) (meter, error) {
	m := meter{measured: measured}
	var err error
	if m.busy, m.total, err = machineTicks(); err == nil {
		m.ownTicks, err = ownTicks(measured)
	}
	return m, err
}

// foreign returns the other programs' share, in percent, since m started.
func (m meter) foreign() (float64, error) {
	busy, total, err := machineTicks()
	if err != nil {
		return 0, err
	}
	own, err := ownTicks(m.measured)
	if err != nil {
		return 0, err
	}
	if total == m.total {
		return 0, nil
	}
	return max(0, 100*float64((busy-m.busy)-(own-m.ownTicks))/float64(total-m.total)), nil
}

// ownTicks is the CPU time, in ticks, that this process and its
// descendants have used, with that of the descendants they have reaped
// (each process's utime, stime, cutime and cstime): a child that exits
// moves its time into its parent's, so the sum only grows. Process
// measured and its descendants count too, if it is not 0.
func ownTicks(measured int) (int64, error) {
	parent, ticks, err := processes()
	if err != nil {
		return 0, err
	}
	self := os.Getpid()
	var total int64
	for pid, t := range ticks {
		if descends(parent, pid, self) || descends(parent, pid, measured) {
			total += t
		}
	}
	return total, nil
}

// descends reports whether pid is ancestor or a descendant of it, in the
// parent map of processes; ancestor 0 has none. The walk is bounded: a pid
// reused between reads could make a cycle.
func descends(parent map[int]int, pid, ancestor int) bool {
	for p, steps := pid, 0; ancestor != 0 && p > 0 && steps < 64; p, steps = parent[p], steps+1 {
		if p == ancestor {
			return true
		}
	}
	return false
}

// processes reads every process's parent and CPU time, in ticks, with that
// of the descendants it reaped (utime, stime, cutime and cstime).
func processes() (parent map[int]int, ticks map[int]int64, err error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, nil, err
	}
	parent = map[int]int{}
	ticks = map[int]int64{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // it exited
		}
		// The fields after the command name, which may hold anything,
		// in parentheses: state ppid … utime stime cutime cstime (the
		// 3rd, 4th, and 14th to 17th fields).
		i := strings.LastIndexByte(string(data), ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(data[i+1:]))
		if len(fields) < 15 {
			continue
		}
		parent[pid], _ = strconv.Atoi(fields[1])
		for _, f := range fields[11:15] {
			n, _ := strconv.ParseInt(f, 10, 64)
			ticks[pid] += n
		}
	}
	return parent, ticks, nil
}

// machineTicks reads the busy and total CPU time of all cores from the
// first line of /proc/stat: user nice system idle iowait irq softirq
// steal (guest time is already counted in user). Interrupt time (irq,
// softirq) is left out of both: no process is charged for it, and most of
// it during a run is the loopback traffic of the bench's own calls.
func machineTicks() (busy, total int64, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, f := range fields[1:9] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %v", err)
		}
		switch i {
		case 5, 6: // irq, softirq
		case 3, 4: // idle, iowait
			total += n
		default:
			total += n
			busy += n
		}
	}
	return busy, total, nil
}
