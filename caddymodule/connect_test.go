package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/testissuer"
)

// The connector tests launch `caddy mcp-bridge connect` as a desktop
// client does, from a real stdio client (the go-sdk's CommandTransport,
// the TypeScript SDK's StdioClientTransport), in front of a real Caddy
// whose bridge runs the everything-server.

// connectSite is a Caddy serving one bridge, in shared isolation, with an
// API key file, that a test may reload or restart on the same port.
type connectSite struct {
	c                 *mcptest.Caddy
	dir, admin, addr  string
	exe, key, keyFile string
}

// startConnectSite runs the site; extra is more mcp_bridge options.
func startConnectSite(t *testing.T, extra string) *connectSite {
	t.Helper()
	s := &connectSite{
		dir:   t.TempDir(),
		admin: fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t)),
		addr:  fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t)),
		exe:   mcptest.EverythingServer(t),
		key:   newAPIKey(),
	}
	s.keyFile = filepath.Join(s.dir, "api-key")
	if err := os.WriteFile(s.keyFile, []byte("# the key of the connector tests\n"+s.key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Cleanups run last first: this check runs after Caddy has stopped.
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, s.exe, 10*time.Second) })
	s.start(t, extra)
	return s
}

// caddyfile is the site's config with extra mcp_bridge options.
func (s *connectSite) caddyfile(extra string) string {
	return fmt.Sprintf(`{
	admin %s
}

%s {
	bind 127.0.0.1
	mcp_bridge {
		command %s
		api_key_file %s
		%s
		pool {
			isolation shared
		}
	}
}
`, s.admin, s.addr[strings.LastIndex(s.addr, ":"):], s.exe, s.keyFile, extra)
}

// start runs Caddy with the site's config.
func (s *connectSite) start(t *testing.T, extra string) {
	t.Helper()
	s.c = mcptest.StartCaddy(t, s.dir, s.caddyfile(extra), s.admin, s.addr)
}

func (s *connectSite) base() string { return "http://" + s.addr }

// connectCommandFor is `caddy mcp-bridge connect` with args, its stderr
// (the connector's log) kept for a failing test to show.
func connectCommandFor(t *testing.T, args ...string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(mcptest.Build(t, mcptest.CaddyPackage), append([]string{"mcp-bridge", "connect"}, args...)...)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("connector log:\n%s", stderr.String())
		}
	})
	return cmd, stderr
}

// connectClient is a go-sdk client session with what the server sent it:
// log messages and progress. It answers sampling with "echo: <prompt>",
// except for the prompt "block", whose request it holds until the server
// cancels it or the test ends.
type connectClient struct {
	*mcp.ClientSession
	mu       sync.Mutex
	logs     []*mcp.LoggingMessageParams
	progress []float64
	blocked  chan struct{} // closed when the sampling request of "block" came
	once     sync.Once
}

// connectGoSDK connects a go-sdk client over transport at version (""
// for the SDK's default). Cleanup closes it.
func connectGoSDK(t *testing.T, transport mcp.Transport, version string) *connectClient {
	t.Helper()
	cc := &connectClient{blocked: make(chan struct{})}
	client := mcp.NewClient(&mcp.Implementation{Name: "connect-test", Version: "1.0.0"}, &mcp.ClientOptions{
		CreateMessageHandler: func(ctx context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
			prompt := ""
			if tc, ok := req.Params.Messages[0].Content.(*mcp.TextContent); ok {
				prompt = tc.Text
			}
			if prompt == "block" {
				cc.once.Do(func() { close(cc.blocked) })
				select {
				case <-ctx.Done():
					return nil, ctx.Err()
				case <-t.Context().Done():
					return nil, errors.New("the test ended")
				}
			}
			return &mcp.CreateMessageResult{Model: "test-model", Role: "assistant", Content: &mcp.TextContent{Text: "echo: " + prompt}}, nil
		},
		LoggingMessageHandler: func(_ context.Context, req *mcp.LoggingMessageRequest) {
			cc.mu.Lock()
			cc.logs = append(cc.logs, req.Params)
			cc.mu.Unlock()
		},
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			if req.Params.ProgressToken != "connect-progress" {
				t.Errorf("progress for token %v, not the client's", req.Params.ProgressToken)
			}
			cc.mu.Lock()
			cc.progress = append(cc.progress, req.Params.Progress)
			cc.mu.Unlock()
		},
	})
	var opts *mcp.ClientSessionOptions
	if version != "" {
		opts = &mcp.ClientSessionOptions{ProtocolVersion: version}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cs, err := client.Connect(ctx, transport, opts)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	cc.ClientSession = cs
	t.Cleanup(func() { cs.Close() })
	return cc
}

// call calls a tool and returns the text of its result; any failure fails
// the test.
func (cc *connectClient) call(t *testing.T, name string, args map[string]any) string {
	t.Helper()
	params := &mcp.CallToolParams{Name: name, Arguments: args}
	if name == "test_tool_with_progress" {
		params.Meta = mcp.Meta{"progressToken": "connect-progress"}
	}
	return mcptest.CallToolText(t, cc.ClientSession, params)
}

// listTools lists the tools and fails the test unless test_simple_text is
// among them.
func listTools(t *testing.T, cs *mcp.ClientSession) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatalf("tools/list: %v", err)
	}
	for _, tool := range res.Tools {
		if tool.Name == "test_simple_text" {
			return
		}
	}
	t.Fatalf("tools/list: %d tools, without test_simple_text", len(res.Tools))
}

// warnings returns the log messages the connector sent the client.
func (cc *connectClient) warnings() []string {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	var out []string
	for _, l := range cc.logs {
		if l.Logger == "caddy-mcp-bridge connect" && l.Level == "warning" {
			out = append(out, fmt.Sprint(l.Data))
		}
	}
	return out
}

// TestConnectGoSDK: a go-sdk stdio client launches the connector and uses
// the bridge while a go-sdk HTTP client uses it directly, at the same
// moment, on the same shared child: tools, sampling, progress and
// cancellation all work through the connector. Then Caddy reloads, and
// the next call works in the same session; then Caddy restarts, and the
// next call works too, in a new session that the connector opened and
// told the client of. No call fails anywhere.
func TestConnectGoSDK(t *testing.T) {
	s := startConnectSite(t, "")
	endpoint := s.base() + "/mcp"
	cmd, _ := connectCommandFor(t, endpoint, "--api-key-file", s.keyFile)
	cc := connectGoSDK(t, &mcp.CommandTransport{Command: cmd}, opVersion)
	direct := opConnect(t, endpoint, s.key)

	var wg sync.WaitGroup
	for _, use := range []func(){
		func() {
			listTools(t, cc.ClientSession)
			for range 20 {
				if got := cc.call(t, "test_simple_text", nil); !strings.Contains(got, "simple text") {
					t.Errorf("through the connector: %q", got)
				}
			}
		},
		func() {
			listTools(t, direct.ClientSession)
			for range 20 {
				if got := direct.CallText(t, "test_simple_text", nil); !strings.Contains(got, "simple text") {
					t.Errorf("direct: %q", got)
				}
			}
		},
	} {
		wg.Go(use)
	}
	wg.Wait()
	if got := cc.call(t, "test_sampling", map[string]any{"prompt": "hi"}); got != "LLM response: echo: hi" {
		t.Errorf("sampling through the connector: %q", got)
	}
	// The tool answers with the progress token it got, which a shared
	// child gets rewritten (the bridge tells its sessions' tokens apart):
	// what matters is that the notifications come back with the client's.
	cc.call(t, "test_tool_with_progress", nil)
	mcptest.WaitFor(t, 10*time.Second, "the three progress notifications", func() bool {
		cc.mu.Lock()
		defer cc.mu.Unlock()
		return len(cc.progress) == 3
	})
	direct.Close()

	// Cancellation: the call's context ends while the server waits for
	// the client's sampling answer; the next call works.
	ctx, cancel := context.WithCancel(t.Context())
	cancelled := make(chan error, 1)
	go func() {
		_, err := cc.CallTool(ctx, &mcp.CallToolParams{Name: "test_sampling", Arguments: map[string]any{"prompt": "block"}})
		cancelled <- err
	}()
	select {
	case <-cc.blocked:
	case <-time.After(time.Minute):
		t.Fatal("the sampling request of the call to cancel never came")
	}
	cancel()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Errorf("the cancelled call returned %v", err)
	}
	if got := cc.call(t, "test_simple_text", nil); !strings.Contains(got, "simple text") {
		t.Errorf("after a cancelled call: %q", got)
	}

	// A reload that keeps the pool keeps the session.
	s.c.Reload(t, s.caddyfile("keepalive 20s"))
	if got := cc.call(t, "test_simple_text", nil); !strings.Contains(got, "simple text") {
		t.Errorf("after a reload: %q", got)
	}
	if w := cc.warnings(); len(w) != 0 {
		t.Errorf("the client was told %q after a reload that kept its session", w)
	}

	// A restart loses the session: the connector opens a new one.
	s.c.Stop(t)
	s.start(t, "keepalive 20s")
	if got := cc.call(t, "test_simple_text", nil); !strings.Contains(got, "simple text") {
		t.Errorf("after a restart: %q", got)
	}
	mcptest.WaitFor(t, 10*time.Second, "the connector's warning that the session was opened again", func() bool { return len(cc.warnings()) == 1 })
	if w := cc.warnings()[0]; !strings.Contains(w, "new one was opened") || !strings.Contains(w, "subscriptions") {
		t.Errorf("the warning: %q", w)
	}
	if got := cc.call(t, "test_sampling", map[string]any{"prompt": "again"}); got != "LLM response: echo: again" {
		t.Errorf("sampling in the new session: %q", got)
	}
}

// TestConnectTypeScript: the TypeScript SDK's stdio client launches the
// connector, lists tools and calls a tool and one that samples.
func TestConnectTypeScript(t *testing.T) {
	tools := toolsFrom(t, "MCPBRIDGE_NODE", "MCPBRIDGE_TS_SDK")
	node, dir := tools[0], tsScriptDir(t, tools[1], filepath.Join("testdata", "tsclient", "stdio.mjs"))
	s := startConnectSite(t, "")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "stdio.mjs", mcptest.Build(t, mcptest.CaddyPackage), s.base()+"/mcp", s.keyFile)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node stdio.mjs: %v\nstdout: %s\nstderr: %s", err, out, stderr.String())
	}
	var r struct {
		Error            string   `json:"error"`
		ServerName       string   `json:"serverName"`
		Tools            int      `json:"tools"`
		SimpleText       string   `json:"simpleText"`
		Sampling         string   `json:"sampling"`
		SamplingRequests []string `json:"samplingRequests"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("client output: %v\n%s", err, out)
	}
	if r.Error != "" || r.ServerName != "mcp-conformance-test-server" || r.Tools == 0 ||
		!strings.Contains(r.SimpleText, "simple text") || r.Sampling != "LLM response: echo: hi" ||
		len(r.SamplingRequests) != 1 || r.SamplingRequests[0] != "hi" {
		t.Errorf("the TypeScript client through the connector: %+v\nstderr: %s", r, stderr.String())
	}
}

// TestConnectLegacySSE: the connector reaches the bridge's legacy SSE
// endpoint, when told to and by falling back on its own (a POST there is
// refused with 405).
func TestConnectLegacySSE(t *testing.T) {
	s := startConnectSite(t, "")
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"told", []string{"--transport", "sse"}},
		{"fallback", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, stderr := connectCommandFor(t, append([]string{s.base() + "/sse", "--api-key-file", s.keyFile}, tc.args...)...)
			cc := connectGoSDK(t, &mcp.CommandTransport{Command: cmd}, "")
			listTools(t, cc.ClientSession)
			if got := cc.call(t, "test_sampling", map[string]any{"prompt": "legacy"}); got != "LLM response: echo: legacy" {
				t.Errorf("sampling over legacy SSE: %q", got)
			}
			cc.Close()
			if tc.args == nil && !strings.Contains(stderr.String(), "using the legacy SSE transport") {
				t.Errorf("the connector did not say it fell back to legacy SSE:\n%s", stderr.String())
			}
		})
	}
}

// TestConnectStateless: a go-sdk client at its default protocol
// (2026-07-28) reaches the bridge statelessly through the connector: no
// session, every request alone.
func TestConnectStateless(t *testing.T) {
	s := startConnectSite(t, "")
	cmd, _ := connectCommandFor(t, s.base()+"/mcp", "--api-key-file", s.keyFile)
	cc := connectGoSDK(t, &mcp.CommandTransport{Command: cmd}, "")
	if v := cc.InitializeResult().ProtocolVersion; v != "2026-07-28" {
		t.Errorf("negotiated %q through the connector, want the stateless 2026-07-28", v)
	}
	listTools(t, cc.ClientSession)
	if got := cc.call(t, "test_simple_text", nil); !strings.Contains(got, "simple text") {
		t.Errorf("stateless call: %q", got)
	}
	mcptest.WaitFor(t, 10*time.Second, "no session on the bridge", func() bool { return adminSessions(t, s.admin) == 0 })
}

// TestConnectBadInput: without a key, the connector still starts, and
// each request gets an error that says the remote answered 401 and why;
// a URL that is no URL ends it at once, with a message that says so.
func TestConnectBadInput(t *testing.T) {
	s := startConnectSite(t, "")
	cmd, _ := connectCommandFor(t, s.base()+"/mcp")
	cmd.Env = append(os.Environ(), connectKeyEnv+"=")
	transport := &mcp.CommandTransport{Command: cmd}
	client := mcp.NewClient(&mcp.Implementation{Name: "connect-test", Version: "1.0.0"}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err := client.Connect(ctx, transport, &mcp.ClientSessionOptions{ProtocolVersion: opVersion})
	if err == nil || !strings.Contains(err.Error(), "401 Unauthorized") || !strings.Contains(err.Error(), "missing API key") ||
		!strings.Contains(err.Error(), "--api-key-file") {
		t.Errorf("initialize without a key: %v, want an error naming 401, the missing key and how to give one", err)
	}

	cmd, stderr := connectCommandFor(t, "mcp.example.com/mcp")
	var stdout strings.Builder
	cmd.Stdout = &stdout
	err = cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Errorf("connect to a URL that is no URL: %v, want a non-zero exit", err)
	}
	if !strings.Contains(stderr.String(), `"mcp.example.com/mcp" is not an http:// or https:// URL`) || stdout.Len() != 0 {
		t.Errorf("connect to a URL that is no URL: stdout %q, stderr %q", stdout.String(), stderr.String())
	}
}

// TestConnectInsecure: against a Caddy with its own CA (`tls internal`),
// the connector refuses the certificate, at once and saying why, unless
// told --insecure.
func TestConnectInsecure(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	c := startTLSCaddy(t, "mcp_bridge {\n\t\tcommand "+exe+"\n\t}")

	cmd, _ := connectCommandFor(t, c.url("/mcp"))
	client := mcp.NewClient(&mcp.Implementation{Name: "connect-test", Version: "1.0.0"}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err := client.Connect(ctx, &mcp.CommandTransport{Command: cmd}, &mcp.ClientSessionOptions{ProtocolVersion: opVersion})
	if err == nil || !strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "tried for") {
		t.Errorf("an untrusted certificate: %v, want an error about the certificate, not retried", err)
	}

	cmd, _ = connectCommandFor(t, c.url("/mcp"), "--insecure")
	cc := connectGoSDK(t, &mcp.CommandTransport{Command: cmd}, opVersion)
	if got := cc.call(t, "test_simple_text", nil); !strings.Contains(got, "simple text") {
		t.Errorf("with --insecure: %q", got)
	}
}

// connectAuthURL matches the sign-in URL the connector prints.
var connectAuthURL = regexp.MustCompile(`(?m)^  (http\S+)$`)

// TestConnectOAuth: against a bridge that takes OAuth tokens from a real
// authorization server, `connect --oauth` prints a sign-in URL; once the
// user signs in there (the test is the browser), the request that was
// refused goes through, and the tokens are kept in the user's config
// directory, readable by the user alone. The next start signs in with no
// browser, and refreshes an access token that expired.
func TestConnectOAuth(t *testing.T) {
	issuer := testissuer.Start(t, testissuer.Options{Scopes: []string{oauthScope}})
	base, _ := oauthCaddy(t, issuer, "")
	configDir := t.TempDir()
	start := func() (*exec.Cmd, *lockedBuffer) {
		cmd, stderr := connectCommandFor(t, base+"/mcp", "--oauth", "--no-browser")
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+configDir, connectKeyEnv+"=")
		return cmd, stderr
	}
	use := func(cmd *exec.Cmd) {
		t.Helper()
		cs := connectGoSDK(t, &mcp.CommandTransport{Command: cmd}, opVersion)
		res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "search", Arguments: map[string]any{}})
		if err != nil || res.IsError {
			t.Fatalf("search: %v %+v", err, res)
		}
		cs.Close()
	}
	tokens := func() connectTokens {
		t.Helper()
		files, _ := filepath.Glob(filepath.Join(configDir, "caddy-mcp-bridge", "tokens", "*.json"))
		if len(files) != 1 {
			t.Fatalf("token files: %v, want one", files)
		}
		var saved connectTokens
		readJSON(t, files[0], &saved)
		return saved
	}

	cmd, stderr := start()
	browser := make(chan error, 1)
	go func() { browser <- connectSignIn(t.Context(), issuer, stderr, "alice") }()
	use(cmd)
	if err := <-browser; err != nil {
		t.Fatal(err)
	}
	first := tokens()
	if first.URL != base+"/mcp" || first.Token.AccessToken == "" || first.Token.RefreshToken == "" || first.ClientID == "" {
		t.Errorf("the token file holds %+v", first)
	}
	if sub := tokenClaim(t, first.Token.AccessToken, "sub"); sub != "alice" {
		t.Errorf("the token is %v's", sub)
	}
	dir := filepath.Join(configDir, "caddy-mcp-bridge", "tokens")
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	for path, want := range map[string]os.FileMode{dir: 0o700, files[0]: 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, mode %v, want %v", path, err, fi.Mode().Perm(), want)
		}
	}

	// The next start uses the tokens kept.
	cmd, stderr = start()
	use(cmd)
	if strings.Contains(stderr.String(), "sign in") {
		t.Errorf("a start with tokens kept asked to sign in:\n%s", stderr.String())
	}

	// An access token that expired is refreshed, and the new one kept.
	first.Token.Expiry = time.Now().Add(-time.Hour)
	data, _ := json.Marshal(first)
	if err := os.WriteFile(files[0], data, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd, stderr = start()
	use(cmd)
	if strings.Contains(stderr.String(), "sign in") {
		t.Errorf("a start with an expired access token asked to sign in:\n%s", stderr.String())
	}
	if refreshed := tokens(); refreshed.Token.AccessToken == first.Token.AccessToken || !refreshed.Token.Expiry.After(time.Now()) {
		t.Errorf("the token kept after a refresh: %+v", refreshed.Token)
	}
}

// connectSignIn is the user's browser: it waits for the connector to print
// its sign-in URL, signs in there as user, and follows the redirect back
// to the connector.
func connectSignIn(ctx context.Context, issuer *testissuer.Issuer, log *lockedBuffer, user string) error {
	deadline := time.Now().Add(time.Minute)
	var m []string
	for m == nil {
		if time.Now().After(deadline) {
			return fmt.Errorf("no sign-in URL within a minute:\n%s", log.String())
		}
		time.Sleep(10 * time.Millisecond)
		m = connectAuthURL.FindStringSubmatch(log.String())
	}
	authURL, err := url.Parse(m[1])
	if err != nil {
		return err
	}
	back, err := issuer.Authorize(ctx, m[1], user, authURL.Query().Get("redirect_uri"))
	if err != nil {
		return err
	}
	resp, err := http.Get(back.String())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "Signed in") {
		return fmt.Errorf("the redirect back: %s %s", resp.Status, body)
	}
	return nil
}
