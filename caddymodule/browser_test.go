package caddymodule

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// browserResult is what testdata/browser/client.js reports to /result.
type browserResult struct {
	OK    bool   `json:"ok"`
	Text  string `json:"text"`
	Error string `json:"error"`
}

// browserTimeout bounds one page load, from starting Chromium to the page's
// report.
const browserTimeout = 30 * time.Second

// TestBrowserCORS loads a page in headless Chromium from an origin other
// than the bridge's. Its script, bundled with esbuild from the official
// TypeScript SDK, calls a tool through the bridge over Streamable HTTP with
// an API key header. From the origin in allowed_origins the call succeeds
// (the browser's CORS checks pass on the bridge's answers); from another
// origin on the same host, the bridge refuses the preflight with 403 and the
// browser fails the call. scripts/test installs Chromium, esbuild and the
// SDK and says where they are.
func TestBrowserCORS(t *testing.T) {
	chromium, esbuild, modules := os.Getenv("MCPBRIDGE_CHROMIUM"), os.Getenv("MCPBRIDGE_ESBUILD"), os.Getenv("MCPBRIDGE_TS_SDK")
	if chromium == "" || esbuild == "" || modules == "" {
		if os.Getenv("MCPBRIDGE_REQUIRE_ALL") != "" {
			t.Fatal("MCPBRIDGE_CHROMIUM, MCPBRIDGE_ESBUILD and MCPBRIDGE_TS_SDK must be set (scripts/test sets them)")
		}
		t.Skip("set MCPBRIDGE_CHROMIUM, MCPBRIDGE_ESBUILD and MCPBRIDGE_TS_SDK, or run scripts/test")
	}
	bundle := bundleBrowserClient(t, esbuild, modules)
	allowed := newPageServer(t, bundle)
	other := newPageServer(t, bundle)

	key := rand.Text()
	// The site's access log records each request's Origin and status.
	c, base, _ := bridgeCaddy(t, fmt.Sprintf("api_key %s\n\t\tallowed_origins %s\n\t\tcors", key, allowed.origin), "log")
	endpoint := base + "/mcp"

	t.Run("allowed origin", func(t *testing.T) {
		r, console := runBrowser(t, chromium, allowed, endpoint, key)
		if !r.OK || r.Text != "This is a simple text response for testing." {
			t.Errorf("from %s: %+v, want test_simple_text's text", allowed.origin, r)
		}
		if blocked := corsBlocked(console); len(blocked) > 0 {
			t.Errorf("chromium blocked a request from the allowed origin: %q", blocked)
		}
		// Preflights were answered and the key was accepted.
		waitAccessLog(t, c.Output, allowed.origin, func(es []accessEntry) error {
			if !slices.ContainsFunc(es, func(e accessEntry) bool { return e.Method == "OPTIONS" && e.Status == http.StatusNoContent }) {
				return errors.New("no preflight answered 204")
			}
			if !slices.ContainsFunc(es, func(e accessEntry) bool { return e.Method == "POST" && e.Status == http.StatusOK }) {
				return errors.New("no POST answered 200")
			}
			return nil
		})
	})

	t.Run("other origin", func(t *testing.T) {
		r, console := runBrowser(t, chromium, other, endpoint, key)
		if r.OK || r.Error == "" {
			t.Errorf("from %s: %+v, want a failed call", other.origin, r)
		}
		t.Logf("the page's error: %s", strings.SplitN(r.Error, "\n", 2)[0])
		// The failure is the browser's CORS check, not some other error.
		if blocked := corsBlocked(console); len(blocked) == 0 {
			t.Errorf("chromium's console does not say CORS blocked the call:\n%s", console)
		} else {
			t.Logf("chromium's console: %s", blocked[0])
		}
		// The bridge refused the origin: every request from it got 403,
		// starting with the preflight, so no POST ever reached it.
		waitAccessLog(t, c.Output, other.origin, func(es []accessEntry) error {
			if len(es) == 0 {
				return errors.New("no request")
			}
			for _, e := range es {
				if e.Status != http.StatusForbidden {
					return fmt.Errorf("%s answered %d, want 403", e.Method, e.Status)
				}
			}
			if es[0].Method != "OPTIONS" {
				return fmt.Errorf("first request was %s, want the preflight", es[0].Method)
			}
			return nil
		})
	})

	refused := refusedOrigins(c.Output())
	if !slices.Contains(refused, other.origin) {
		t.Errorf("caddy did not log refusing %s (refused: %q)", other.origin, refused)
	}
	if slices.Contains(refused, allowed.origin) {
		t.Errorf("caddy refused the allowed origin %s", allowed.origin)
	}
}

// bundleBrowserClient bundles testdata/browser/client.js and the SDK it
// imports into one ES module for the browser, and returns its path. esbuild
// finds the SDK in a node_modules beside the script, a link to modules.
func bundleBrowserClient(t *testing.T, esbuild, modules string) string {
	t.Helper()
	src := tsScriptDir(t, modules, filepath.Join("testdata", "browser", "client.js"))
	var err error
	if esbuild, err = filepath.Abs(esbuild); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "client.bundle.js")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, esbuild, "client.js", "--bundle", "--format=esm", "--platform=browser", "--log-level=warning", "--outfile="+out)
	cmd.Dir = src
	start := time.Now()
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("esbuild: %v\n%s", err, output)
	} else if len(output) > 0 {
		t.Logf("esbuild: %s", output)
	}
	t.Logf("esbuild bundled client.js in %v", time.Since(start).Round(time.Millisecond))
	return out
}

// pageServer serves the test page and its bundled script from its own
// origin, and takes the page's report at /result.
type pageServer struct {
	origin string
	result chan browserResult
}

func newPageServer(t *testing.T, bundle string) *pageServer {
	t.Helper()
	page, err := os.ReadFile(filepath.Join("testdata", "browser", "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	p := &pageServer{result: make(chan browserResult, 1)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(page)
	})
	mux.HandleFunc("GET /client.bundle.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Write(script)
	})
	mux.HandleFunc("POST /result", func(w http.ResponseWriter, r *http.Request) {
		var res browserResult
		if err := json.NewDecoder(r.Body).Decode(&res); err != nil {
			res = browserResult{Error: "undecodable report: " + err.Error()}
		}
		select {
		case p.result <- res:
		default:
		}
		w.WriteHeader(http.StatusNoContent)
	})
	srv := httptest.NewServer(mux) // on 127.0.0.1, a port of its own
	t.Cleanup(srv.Close)
	p.origin = srv.URL
	return p
}

// runBrowser opens the page in headless Chromium, pointed at the bridge
// endpoint with key, and returns what the page reports and Chromium's log
// (which holds the page's console). Chromium runs in a process group of its
// own, with a fresh profile and HOME; the group is killed once the report
// is in, and runBrowser fails the test if any Chromium process outlives it.
func runBrowser(t *testing.T, chromium string, p *pageServer, endpoint, key string) (browserResult, string) {
	t.Helper()
	home := t.TempDir() // crash reports and the like go under $HOME
	profile := filepath.Join(home, "profile")
	pageURL := p.origin + "/?" + url.Values{"bridge": {endpoint}, "key": {key}}.Encode()
	ctx, cancel := context.WithTimeout(t.Context(), browserTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0",
		"--user-data-dir="+profile, pageURL)
	cmd.Env = append(os.Environ(), "HOME="+home)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr chromiumOutput
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	pgid := cmd.Process.Pid
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()

	// Whichever way it fails, the test shows what Chromium said.
	defer func() {
		if t.Failed() {
			t.Logf("chromium output:\n%s", stderr.String())
		}
	}()

	var res browserResult
	select {
	case res = <-p.result:
		t.Logf("the page reported after %v", time.Since(start).Round(time.Millisecond))
	case <-exited:
		t.Errorf("chromium exited before the page reported: %v", waitErr)
	case <-ctx.Done():
		t.Errorf("no report from the page within %v", browserTimeout)
	}

	// Kill the group, and any process of this Chromium that left it.
	procs := chromiumProcesses(pgid, home)
	syscall.Kill(-pgid, syscall.SIGKILL)
	for _, pid := range procs {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	<-exited
	mcptest.WaitFor(t, 10*time.Second, "chromium's processes to exit", func() bool {
		return len(chromiumProcesses(pgid, home)) == 0
	})
	if t.Failed() {
		t.FailNow()
	}
	return res, stderr.String()
}

// corsBlocked returns the console messages in Chromium's log that say the
// browser's CORS check blocked a request.
func corsBlocked(log string) []string {
	var msgs []string
	for _, line := range strings.Split(log, "\n") {
		// [pid:tid:time:INFO:CONSOLE:line] "message", source: URL (line)
		if _, msg, ok := strings.Cut(line, ":CONSOLE"); ok && strings.Contains(msg, "blocked by CORS policy") {
			_, msg, _ = strings.Cut(msg, "] ")
			msg, _, _ = strings.Cut(msg, ", source: ") // the page URL, with the key
			msgs = append(msgs, msg)
		}
	}
	return msgs
}

// chromiumProcesses returns the live processes that belong to a Chromium
// started as the leader of process group pgid with HOME and profile under
// dir: those in the group, those naming dir on their command line (such as
// a crash handler that left the group), and their descendants.
func chromiumProcesses(pgid int, dir string) []int {
	type proc struct{ ppid, pgrp int }
	procs := map[int]proc{}
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" { // zombies are dead
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgrp, _ := strconv.Atoi(f[2])
		procs[pid] = proc{ppid, pgrp}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if pgrp == pgid || pid == pgid || bytes.Contains(cmdline, []byte(dir)) {
			pids = append(pids, pid)
		}
	}
	for grew := true; grew; {
		grew = false
		for pid, p := range procs {
			if !slices.Contains(pids, pid) && slices.Contains(pids, p.ppid) {
				pids = append(pids, pid)
				grew = true
			}
		}
	}
	slices.Sort(pids)
	return pids
}

// chromiumOutput collects Chromium's output, which the test may read while
// Chromium writes it.
type chromiumOutput struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *chromiumOutput) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *chromiumOutput) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// accessEntry is one request in Caddy's access log.
type accessEntry struct {
	Method string
	Status int
}

// originAccessLog returns the requests in Caddy's access log, in order, that
// came with the Origin header origin.
func originAccessLog(output, origin string) []accessEntry {
	var es []accessEntry
	for _, line := range strings.Split(output, "\n") {
		var e struct {
			Logger  string `json:"logger"`
			Request struct {
				Method  string              `json:"method"`
				Headers map[string][]string `json:"headers"`
			} `json:"request"`
			Status int `json:"status"`
		}
		if json.Unmarshal([]byte(line), &e) != nil || !strings.HasPrefix(e.Logger, "http.log.access") {
			continue
		}
		if slices.Contains(e.Request.Headers["Origin"], origin) {
			es = append(es, accessEntry{e.Request.Method, e.Status})
		}
	}
	return es
}

// waitAccessLog waits until check accepts the access log's entries for
// origin (Caddy writes an entry as it finishes the response, so it may come
// a moment after the browser has the answer).
func waitAccessLog(t *testing.T, output func() string, origin string, check func([]accessEntry) error) {
	t.Helper()
	var es []accessEntry
	var err error
	// WaitFor ends the test on a timeout; this says what check last saw.
	defer func() {
		if err != nil {
			t.Logf("caddy's access log for %s: %v; %v", origin, es, err)
		}
	}()
	mcptest.WaitFor(t, 5*time.Second, "caddy's access log for "+origin+" to pass the check", func() bool {
		es = originAccessLog(output(), origin)
		err = check(es)
		return err == nil
	})
	t.Logf("caddy's access log for %s: %v", origin, es)
}

// refusedOrigins returns the origins the bridge logged refusing.
func refusedOrigins(output string) []string {
	var origins []string
	for _, line := range strings.Split(output, "\n") {
		var e struct {
			Msg    string `json:"msg"`
			Origin string `json:"origin"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.Msg == "refused a request from a disallowed origin" {
			origins = append(origins, e.Origin)
		}
	}
	return origins
}
