package bridge

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// rssBytes is this process's resident set size.
func rssBytes(t *testing.T) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// peakRSS samples the RSS until stop is closed and returns the highest.
func peakRSS(t *testing.T, stop <-chan struct{}) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		peak := rssBytes(t)
		for {
			select {
			case <-stop:
				out <- peak
				return
			case <-time.After(20 * time.Millisecond):
				peak = max(peak, rssBytes(t))
			}
		}
	}()
	return out
}

// slowGet opens a GET stream and reads it at about 1 KB/s.
func slowGet(t *testing.T, url string, s *muxSession) (stop func()) {
	resp := resumeGet(t, url, s, "")
	done := make(chan struct{})
	go func() {
		defer resp.Body.Close()
		r := bufio.NewReaderSize(resp.Body, 1024)
		buf := make([]byte, 1024)
		for {
			if _, err := r.Read(buf); err != nil {
				return
			}
			select {
			case <-done:
				return
			case <-time.After(time.Second):
			}
		}
	}()
	return func() { close(done) }
}

const (
	floodCount = 5000
	floodSize  = 10 << 10 // 5000 × 10 KiB: 50 MB of notifications
)

// rssBound is the RSS growth a bounded bridge stays under while flooding a
// slow client; the race detector's shadow memory multiplies it.
func rssBound() int64 {
	if raceEnabled {
		return 8 * 40 << 20
	}
	return 40 << 20
}

// TestSlowClientShared: on a shared child, a client that reads 1 KB/s while
// the child sends it 50 MB is ended as too slow, memory stays bounded, and
// the other sessions on the child keep being served.
func TestSlowClientShared(t *testing.T) {
	srv, backend, _ := startMuxBridge(t, PoolConfig{Isolation: IsolationShared, MinProcesses: 1, MaxProcesses: 1, SessionsPerProcess: 64}, mcptest.Logger(t))
	url := srv.URL + "/mcp"
	slow, _, err := muxOpen(t.Context(), url, "0", "2025-11-25")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := slow.rpc(t.Context(), "resources/subscribe", `{"uri":"test://flood"}`); err != nil {
		t.Fatal(err)
	}
	defer slowGet(t, url, slow)()
	others := make([]*muxSession, 10)
	for i := range others {
		if others[i], _, err = muxOpen(t.Context(), url, "0", "2025-11-25"); err != nil {
			t.Fatal(err)
		}
	}
	latency := func() time.Duration { // the median of a round of calls by the others
		var ds []time.Duration
		for _, s := range others {
			start := time.Now()
			if m, err := s.rpc(t.Context(), "echo", `{}`); err != nil || m.Error != nil {
				t.Fatalf("another session's call failed: %v %v", m, err)
			}
			ds = append(ds, time.Since(start))
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	before := latency()
	baseline := rssBytes(t)
	stop := make(chan struct{})
	peak := peakRSS(t, stop)
	if _, err := slow.rpc(t.Context(), "flood", fmt.Sprintf(`{"uri":"test://flood","count":%d,"size":%d}`, floodCount, floodSize)); err != nil {
		t.Fatal(err)
	}
	var during []time.Duration
	deadline := time.Now().Add(30 * time.Second)
	for backend.findSession(slow.id, principal{}) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the slow session was never ended")
		}
		during = append(during, latency())
	}
	for range 5 {
		during = append(during, latency())
	}
	close(stop)
	growth := <-peak - baseline
	t.Logf("others' median latency: %v before, %v while the slow client was flooded (rounds: %v)", before, slices.Max(during), len(during))
	t.Logf("peak RSS growth while flooding 50 MB at a slow client: %.1f MiB", float64(growth)/(1<<20))
	if growth > rssBound() {
		t.Errorf("RSS grew by %d MiB for a slow client: not bounded", growth>>20)
	}
	// Its client is told: the next request gets 404.
	resp, err := muxPost(t.Context(), url, slow.id, slow.version, `{"jsonrpc":"2.0","id":9,"method":"echo"}`)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("the ended slow session answered %s, want 404", resp.Status)
		}
	}
}

// TestSlowClientIsolated: with a child of its own, a slow client holds
// back its child (the bridge stops reading its stdout) instead of the
// bridge buffering 50 MB.
func TestSlowClientIsolated(t *testing.T) {
	srv := startResumeBridge(t, ServerConfig{})
	url := srv.URL + "/mcp"
	s, _, err := muxOpen(t.Context(), url, "0", "2025-11-25")
	if err != nil {
		t.Fatal(err)
	}
	stopReading := slowGet(t, url, s)
	defer stopReading()
	baseline := rssBytes(t)
	stop := make(chan struct{})
	peak := peakRSS(t, stop)
	if _, err := s.rpc(t.Context(), "flood", fmt.Sprintf(`{"uri":"test://flood","count":%d,"size":%d}`, floodCount, floodSize)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // the child writes only as fast as the client reads
	close(stop)
	growth := <-peak - baseline
	t.Logf("peak RSS growth in 3 s of a 50 MB flood at a slow client: %.1f MiB", float64(growth)/(1<<20))
	if growth > rssBound() {
		t.Errorf("RSS grew by %d MiB for a slow client: the bridge buffers instead of holding the child back", growth>>20)
	}
}
