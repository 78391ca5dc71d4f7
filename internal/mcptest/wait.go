package mcptest

import (
	"slices"
	"testing"
	"time"
)

// WaitFor polls cond until it holds and fails the test if it does not
// within timeout, naming what it waited for. Tests wait for a condition
// with it, never for a fixed time: the timeout only bounds a failure.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Running reports whether pid is a live process running the program at
// path.
func Running(path string, pid int) bool {
	return slices.Contains(Processes(path), pid)
}
