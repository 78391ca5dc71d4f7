package bridge

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// spawnCounter counts the children started.
type spawnCounter struct {
	nopObserver
	started atomic.Int32
}

func (o *spawnCounter) ChildStarted(string) { o.started.Add(1) }

// TestCrashLoopBreaker: in front of a command that exits as soon as it
// starts, clients that keep retrying initialize get 503 with Retry-After
// once a few children have died young, and the bridge does not fork one
// child per request; /health says why. In each isolation.
func TestCrashLoopBreaker(t *testing.T) {
	for _, isolation := range []string{IsolationSession, IsolationShared} {
		t.Run(isolation, func(t *testing.T) {
			obs := &spawnCounter{}
			backend := NewBackend(BackendConfig{
				Process:  ProcessConfig{Argv: []string{"sh", "-c", "exit 3"}},
				Pool:     PoolConfig{Isolation: isolation},
				Observer: obs,
			}, mcptest.Logger(t))
			backend.Start()
			srv := httptest.NewServer(NewServer(backend, ServerConfig{}, mcptest.Logger(t)))
			defer func() {
				srv.Close()
				backend.Close()
			}()

			var (
				wg            sync.WaitGroup
				requests      atomic.Int32
				refusedWithRA atomic.Int32
			)
			ctx, stop := context.WithTimeout(t.Context(), 3*time.Second)
			defer stop()
			for range 4 {
				wg.Go(func() {
					for ctx.Err() == nil {
						req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/mcp", strings.NewReader(initializeBody("2025-11-25")))
						req.Header.Set("Content-Type", "application/json")
						req.Header.Set("Accept", "application/json, text/event-stream")
						resp, err := http.DefaultClient.Do(req)
						if err != nil {
							return
						}
						body, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						requests.Add(1)
						if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "" &&
							strings.Contains(string(body), "keeps exiting as soon as it starts") {
							refusedWithRA.Add(1)
						}
					}
				})
			}
			wg.Wait()
			spawns := obs.started.Load()
			t.Logf("%d requests, %d refused with Retry-After, %d children started", requests.Load(), refusedWithRA.Load(), spawns)
			// Three young deaths open the breaker; then one try at a time
			// after 1s, 2s: a few children, where one per request made
			// thousands.
			if spawns > 20 {
				t.Errorf("%d children started for %d requests in 3s: the crash loop is not contained", spawns, requests.Load())
			}
			if refusedWithRA.Load() == 0 || refusedWithRA.Load() < requests.Load()/2 {
				t.Errorf("%d of %d requests refused with 503 and Retry-After, want most", refusedWithRA.Load(), requests.Load())
			}
			if h := backend.Health(); h.Status != "unavailable" || !strings.Contains(h.LastError, "keeps exiting") {
				t.Errorf("health %q, %q; want unavailable, saying the server keeps exiting", h.Status, h.LastError)
			}
		})
	}
}
