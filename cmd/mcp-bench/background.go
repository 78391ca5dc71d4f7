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
	busy0, total0, err := machineTicks()
	if err != nil {
		return 0, err
	}
	self0, err := cpuTime(os.Getpid())
	if err != nil {
		return 0, err
	}
	select {
	case <-time.After(window):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	busy1, total1, err := machineTicks()
	if err != nil {
		return 0, err
	}
	self1, err := cpuTime(os.Getpid())
	if err != nil {
		return 0, err
	}
	if total1 == total0 {
		return 0, nil
	}
	// /proc/stat counts in USER_HZ ticks, 100 a second on Linux.
	foreign := float64(busy1-busy0) - (self1-self0).Seconds()*100
	return max(0, 100*foreign/float64(total1-total0)), nil
}

// machineTicks reads the busy and total CPU time of all cores from the
// first line of /proc/stat: user nice system idle iowait irq softirq
// steal (guest time is already counted in user).
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
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total, nil
}
