package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/wsclient"
)

// The policy tests run a real Caddy in front of testdata/teamchild (a
// go-sdk server whose lists come two items a page) with two named keys:
// alice, under no policy, and bob, an intern, who must not see or use the
// admin tool, prompt and resource.

const (
	aliceKey = "alice-key-7f3e91c4"
	bobKey   = "bob-key-2c8d44a0"
	carolKey = "carol-key-95be1d07"
	daveKey  = "dave-key-4417ac2e"
	// teamKeys names alice's and bob's keys.
	teamKeys = "named_api_key alice " + aliceKey + "\n\t\tnamed_api_key bob " + bobKey
	// internPolicy hides what is admin's from bob.
	internPolicy = `policy interns {
			match key bob
			tools deny admin_*
			prompts deny admin_*
			resources allow file:///public.txt
		}`
)

func teamChild(t *testing.T) string {
	return mcptest.Build(t, "github.com/mcpbridge/caddy-mcp-bridge/caddymodule/testdata/teamchild")
}

// teamSites runs a Caddy with two sites in front of teamchild with the
// mcp_bridge options block, one in each isolation (session, shared).
func teamSites(t *testing.T, block string) (*mcptest.Caddy, []string) {
	team := teamChild(t)
	return secCaddy(t,
		secSite{command: team, block: block},
		secSite{command: team, block: block + "\n\t\tpool {\n\t\t\tisolation shared\n\t\t}"},
	)
}

// teamTransport is how a go-sdk client reaches base with key, over one of
// the bridge's transports ("stateless" is Streamable HTTP at the SDK's
// default version, 2026-07-28), and the protocol version to ask for.
func teamTransport(base, transport, key string) (mcp.Transport, string) {
	client := mcptest.Bearer(key).Client()
	switch transport {
	case "sse":
		return &mcp.SSEClientTransport{Endpoint: base + "/sse", HTTPClient: client}, ""
	case "ws":
		return &wsclient.Transport{URL: secWSURL(base), Header: http.Header{"Authorization": {"Bearer " + key}}}, ""
	case "stateless":
		return &mcp.StreamableClientTransport{Endpoint: base + "/mcp", HTTPClient: client}, ""
	}
	return &mcp.StreamableClientTransport{Endpoint: base + "/mcp", HTTPClient: client}, "2025-11-25"
}

// teamConnect connects a go-sdk client that counts the tools/list_changed
// notifications it gets.
func teamConnect(t *testing.T, transport mcp.Transport, version string, listChanged chan<- struct{}) *mcp.ClientSession {
	t.Helper()
	client := mcp.NewClient(&mcp.Implementation{Name: "policy-test", Version: "1"}, &mcp.ClientOptions{
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {
			select {
			case listChanged <- struct{}{}:
			default:
			}
		},
	})
	var opts *mcp.ClientSessionOptions
	if version != "" {
		opts = &mcp.ClientSessionOptions{ProtocolVersion: version}
	}
	cs, err := client.Connect(t.Context(), transport, opts)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// names collects the names an iterator over pages gives.
func names[T any](t *testing.T, seq func(func(T, error) bool), name func(T) string) []string {
	t.Helper()
	var out []string
	for item, err := range seq {
		if err != nil {
			t.Fatalf("listing: %v", err)
		}
		out = append(out, name(item))
	}
	slices.Sort(out)
	return out
}

// checkTeamView checks what one principal sees and may use: the admin
// items only when admin, the rest always, across pages.
func checkTeamView(t *testing.T, cs *mcp.ClientSession, admin bool) {
	ctx := t.Context()
	tools := names(t, cs.Tools(ctx, nil), func(x *mcp.Tool) string { return x.Name })
	prompts := names(t, cs.Prompts(ctx, nil), func(x *mcp.Prompt) string { return x.Name })
	resources := names(t, cs.Resources(ctx, nil), func(x *mcp.Resource) string { return x.URI })
	wantTools := []string{"add_tool", "environment", "search", "whose_token"}
	wantPrompts := []string{"greet"}
	wantResources := []string{"file:///public.txt"}
	if admin {
		wantTools = []string{"add_tool", "admin_reset", "environment", "search", "whose_token"}
		wantPrompts = []string{"admin_prompt", "greet"}
		wantResources = []string{"file:///admin.txt", "file:///public.txt"}
	}
	if !slices.Equal(tools, wantTools) {
		t.Errorf("tools/list = %v, want %v", tools, wantTools)
	}
	if !slices.Equal(prompts, wantPrompts) {
		t.Errorf("prompts/list = %v, want %v", prompts, wantPrompts)
	}
	if !slices.Equal(resources, wantResources) {
		t.Errorf("resources/list = %v, want %v", resources, wantResources)
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "admin_reset", Arguments: map[string]any{}})
	switch {
	case admin && (err != nil || res.IsError):
		t.Errorf("admin_reset: %v %+v", err, res)
	case !admin && (err == nil || !strings.Contains(err.Error(), "Unknown tool: admin_reset")):
		t.Errorf("admin_reset by a principal that may not: %v, want the unknown tool error", err)
	}
	if res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "search", Arguments: map[string]any{}}); err != nil || res.IsError {
		t.Errorf("search: %v", err)
	}
	_, err = cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "admin_prompt"})
	if (err == nil) != admin {
		t.Errorf("prompts/get admin_prompt: %v (admin %v)", err, admin)
	}
	if !admin {
		// Completion of a hidden prompt's arguments is refused too.
		_, err := cs.Complete(ctx, &mcp.CompleteParams{Ref: &mcp.CompleteReference{Type: "ref/prompt", Name: "admin_prompt"}, Argument: mcp.CompleteParamsArgument{Name: "a", Value: "b"}})
		if err == nil || !strings.Contains(err.Error(), "Unknown prompt: admin_prompt") {
			t.Errorf("completion/complete of a hidden prompt: %v", err)
		}
	}
	_, err = cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "file:///admin.txt"})
	if (err == nil) != admin {
		t.Errorf("resources/read file:///admin.txt: %v (admin %v)", err, admin)
	}
}

// TestPolicyHidesToolsPerPrincipal: the interns policy hides admin_reset,
// admin_prompt and file:///admin.txt from bob (lists, paged two a time,
// lack them; a call gets the server's unknown-tool error, a get or read
// fails), while alice sees and uses them: over every transport, in both
// isolations.
func TestPolicyHidesToolsPerPrincipal(t *testing.T) {
	_, bases := teamSites(t, teamKeys+"\n\t\t"+internPolicy)
	for i, isolation := range []string{"session", "shared"} {
		for _, transport := range []string{"streamable", "stateless", "sse", "ws"} {
			for _, who := range []struct {
				name, key string
				admin     bool
			}{{"alice", aliceKey, true}, {"bob", bobKey, false}} {
				t.Run(isolation+"/"+transport+"/"+who.name, func(t *testing.T) {
					tr, version := teamTransport(bases[i], transport, who.key)
					cs := teamConnect(t, tr, version, nil)
					if stateless := cs.InitializeResult().ProtocolVersion >= "2026-07-28"; stateless != (transport == "stateless") {
						t.Fatalf("negotiated %s over %s", cs.InitializeResult().ProtocolVersion, transport)
					}
					checkTeamView(t, cs, who.admin)
				})
			}
		}
	}
}

// TestPolicyListChangedStillArrives: a principal whose tools/list is
// filtered still gets notifications/tools/list_changed, and the new tool
// shows while the hidden one stays hidden.
func TestPolicyListChangedStillArrives(t *testing.T) {
	_, bases := teamSites(t, teamKeys+"\n\t\t"+internPolicy)
	for i, isolation := range []string{"session", "shared"} {
		for _, transport := range []string{"streamable", "sse", "ws"} {
			t.Run(isolation+"/"+transport, func(t *testing.T) {
				changed := make(chan struct{}, 1)
				tr, version := teamTransport(bases[i], transport, bobKey)
				cs := teamConnect(t, tr, version, changed)
				res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "add_tool", Arguments: map[string]any{}})
				if err != nil || res.IsError {
					t.Fatalf("add_tool: %v", err)
				}
				added := res.Content[0].(*mcp.TextContent).Text
				select {
				case <-changed:
				case <-time.After(10 * time.Second):
					t.Fatal("no notifications/tools/list_changed")
				}
				tools := names(t, cs.Tools(t.Context(), nil), func(x *mcp.Tool) string { return x.Name })
				if !slices.Contains(tools, added) || slices.Contains(tools, "admin_reset") {
					t.Errorf("tools/list after the change = %v, want %s and no admin_reset", tools, added)
				}
			})
		}
	}
}

// callSearch is a raw tools/call of search in a session.
const callSearch = `{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"search","arguments":{}}}`

// TestPolicyRateLimit: bob and carol may each send 5 requests a second,
// dave 2 calls of search a minute. Beyond that, a
// POST gets 429 with Retry-After and a JSON-RPC error -32005 naming the
// policy; a request inside a WebSocket gets the error alone, and the
// connection stays; once the bucket refills, calls pass again. The admin
// API, the metrics and the log show the decisions. alice, under no policy,
// is never limited.
func TestPolicyRateLimit(t *testing.T) {
	team := teamChild(t)
	block := teamKeys + `
		named_api_key carol ` + carolKey + `
		named_api_key dave ` + daveKey + `
		policy interns {
			match key bob carol
			rate 5/s
		}
		policy searchers {
			match key dave
			tool_rate search 2/1m
		}`
	c, bases := secCaddy(t, secSite{command: team, block: block})
	base := bases[0]
	bob := []string{"Authorization", "Bearer " + bobKey}
	sid := secOpen(t, base, bob...)
	session := append([]string{"Mcp-Session-Id", sid}, bob...)
	var ok, limited int
	var retryAfter string
	var refusal []byte
	for i := range 12 {
		resp, body := secDo(t, http.MethodPost, base+"/mcp", fmt.Sprintf(callSearch, 10+i), session...)
		switch resp.StatusCode {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			limited++
			retryAfter, refusal = resp.Header.Get("Retry-After"), body
		default:
			t.Fatalf("call %d: %d %s", i, resp.StatusCode, body)
		}
	}
	t.Logf("12 calls at once: %d passed, %d limited", ok, limited)
	if limited == 0 || ok > 6 {
		t.Errorf("%d calls passed and %d were limited; want at most the burst of 5 (+1 refilled) to pass", ok, limited)
	}
	if n, err := strconv.Atoi(retryAfter); err != nil || n < 1 {
		t.Errorf("Retry-After = %q", retryAfter)
	}
	if code, msg := secRPCError(t, refusal); code != codeRateLimited || !strings.Contains(msg, "policy interns") {
		t.Errorf("429 body: %d %q", code, msg)
	}
	mcptest.WaitFor(t, 5*time.Second, "the bucket to refill", func() bool {
		resp, _ := secDo(t, http.MethodPost, base+"/mcp", fmt.Sprintf(callSearch, 99), session...)
		return resp.StatusCode == http.StatusOK
	})

	// Inside a WebSocket (carol's, with a bucket of her own): errors
	// in-band, the connection lives on.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, secWSURL(base), &websocket.DialOptions{Subprotocols: []string{"mcp"}, HTTPHeader: http.Header{"Authorization": {"Bearer " + carolKey}}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	for i := range 12 {
		msg := fmt.Sprintf(callSearch, 100+i)
		if i == 0 {
			msg = strings.Replace(secInit, `"id":1`, `"id":100`, 1)
		}
		if err := conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	var wsLimited int
	for range 12 {
		_, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("the WebSocket ended: %v", err)
		}
		var m struct {
			Error *struct{ Code int } `json:"error"`
		}
		_ = json.Unmarshal(data, &m)
		if m.Error != nil && m.Error.Code == codeRateLimited {
			wsLimited++
		}
	}
	if wsLimited == 0 {
		t.Error("no request in the WebSocket was limited")
	}
	if err := conn.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf(callSearch, 200))); err != nil {
		t.Errorf("the WebSocket closed after the refusals: %v", err)
	}

	// dave may call search twice a minute, other tools freely.
	dave := []string{"Authorization", "Bearer " + daveKey}
	dsid := secOpen(t, base, dave...)
	inDave := append([]string{"Mcp-Session-Id", dsid}, dave...)
	for i := range 2 {
		if resp, body := secDo(t, http.MethodPost, base+"/mcp", fmt.Sprintf(callSearch, 400+i), inDave...); resp.StatusCode != http.StatusOK {
			t.Fatalf("dave's search %d: %d %s", i, resp.StatusCode, body)
		}
	}
	resp, body := secDo(t, http.MethodPost, base+"/mcp", fmt.Sprintf(callSearch, 402), inDave...)
	if code, msg := secRPCError(t, body); resp.StatusCode != http.StatusTooManyRequests || code != codeRateLimited || !strings.Contains(msg, `for tool "search"`) {
		t.Errorf("dave's third search: %d %d %q", resp.StatusCode, code, msg)
	}
	if resp, body := secDo(t, http.MethodPost, base+"/mcp", `{"jsonrpc":"2.0","id":403,"method":"tools/call","params":{"name":"whose_token","arguments":{}}}`, inDave...); resp.StatusCode != http.StatusOK {
		t.Errorf("dave's whose_token: %d %s", resp.StatusCode, body)
	}

	// What was decided shows in the admin API, the metrics and the log.
	principals := adminPrincipals(t, c)
	if p := principals["key:bob"]; p.Policy != "interns" || p.Sessions != 1 || p.Rate == nil || p.Rate.Limit != "5/1s" {
		t.Errorf("admin API, key:bob: %+v", p)
	}
	fams, _ := opScrape(t, &opCaddy{Caddy: c})
	decisions := func(policy, decision, reason string) float64 {
		return opMetric(fams, "caddy_mcp_bridge_policy_decisions_total", map[string]string{"policy": policy, "decision": decision, "reason": reason})
	}
	if decisions("interns", "denied", "rate_limit") < float64(limited+wsLimited) || decisions("searchers", "denied", "tool_rate_limit") != 1 ||
		decisions("interns", "allowed", "ok") < float64(ok) {
		t.Errorf("policy decisions in the metrics: %v rate-limited, %v tool-rate-limited, %v allowed",
			decisions("interns", "denied", "rate_limit"), decisions("searchers", "denied", "tool_rate_limit"), decisions("interns", "allowed", "ok"))
	}
	if !slices.ContainsFunc(strings.Split(c.Output(), "\n"), func(line string) bool {
		return strings.Contains(line, `"msg":"denied a request by policy"`) && strings.Contains(line, `"policy":"searchers","principal":"key:dave","method":"tools/call","name":"search","reason":"tool_rate_limit"`)
	}) {
		t.Error("the log has no line for dave's denied call")
	}

	// alice: no policy, no limit.
	alice := []string{"Authorization", "Bearer " + aliceKey}
	asid := secOpen(t, base, alice...)
	for i := range 12 {
		if resp, body := secDo(t, http.MethodPost, base+"/mcp", fmt.Sprintf(callSearch, 300+i), append([]string{"Mcp-Session-Id", asid}, alice...)...); resp.StatusCode != http.StatusOK {
			t.Fatalf("alice's call %d: %d %s", i, resp.StatusCode, body)
		}
	}
}

// TestPolicyQuotaSurvivesRestart: bob may make 3 tool calls a day. The
// fourth gets 429 with a JSON-RPC error -32006 that names the quota and
// when it resets (next midnight UTC), and Retry-After until then; other
// requests (tools/list) still pass. Caddy restarts on the same storage:
// bob's next call is still refused, while alice, under no quota, calls on.
// The count is in storage, where an operator can read it.
func TestPolicyQuotaSurvivesRestart(t *testing.T) {
	team := teamChild(t)
	dir := t.TempDir()
	storage := filepath.Join(dir, "storage")
	admin := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	port := mcptest.FreePort(t)
	cfg := fmt.Sprintf(`{
	admin %s
	storage file_system %s
}

:%d {
	bind 127.0.0.1
	mcp_bridge {
		command %s
		%s
		policy interns {
			match key bob
			quota 3/day
		}
	}
}
`, admin, storage, port, team, teamKeys)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, team, 10*time.Second) })
	start := func() *mcptest.Caddy {
		return mcptest.StartCaddy(t, dir, cfg, admin, strings.TrimPrefix(base, "http://"))
	}
	bob := []string{"Authorization", "Bearer " + bobKey}
	call := func(id int) (*http.Response, []byte) {
		sid := secOpen(t, base, bob...)
		return secDo(t, http.MethodPost, base+"/mcp", fmt.Sprintf(callSearch, id), append([]string{"Mcp-Session-Id", sid}, bob...)...)
	}
	checkRefused := func(resp *http.Response, body []byte) {
		t.Helper()
		_, midnight := windowOf(time.Now(), "day")
		code, msg := secRPCError(t, body)
		retry, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != http.StatusTooManyRequests || code != codeQuotaExhausted ||
			!strings.Contains(msg, "quota of policy interns used up: 3 tool calls per day") || !strings.Contains(msg, midnight.Format(time.RFC3339)) ||
			retry < 1 || time.Duration(retry)*time.Second > time.Until(midnight)+2*time.Second {
			t.Errorf("the call over quota: %d, Retry-After %q, %d %q", resp.StatusCode, resp.Header.Get("Retry-After"), code, msg)
		}
	}

	c := start()
	for i := range 3 {
		if resp, body := call(i); resp.StatusCode != http.StatusOK {
			t.Fatalf("call %d: %d %s", i, resp.StatusCode, body)
		}
	}
	checkRefused(call(3))
	sid := secOpen(t, base, bob...)
	if resp, body := secDo(t, http.MethodPost, base+"/mcp", secToolsList, append([]string{"Mcp-Session-Id", sid}, bob...)...); resp.StatusCode != http.StatusOK {
		t.Errorf("tools/list over quota: %d %s", resp.StatusCode, body)
	}
	c.Stop(t)

	c2 := start()
	checkRefused(call(4))
	alice := []string{"Authorization", "Bearer " + aliceKey}
	asid := secOpen(t, base, alice...)
	if resp, body := secDo(t, http.MethodPost, base+"/mcp", fmt.Sprintf(callSearch, 5), append([]string{"Mcp-Session-Id", asid}, alice...)...); resp.StatusCode != http.StatusOK {
		t.Errorf("alice: %d %s", resp.StatusCode, body)
	}
	if q := adminPrincipals(t, c2)["key:bob"].Quota; q == nil || q.Used != 3 || q.Limit != 3 || q.Per != "day" {
		t.Errorf("admin API, key:bob's quota: %+v", q)
	}
	files, _ := filepath.Glob(filepath.Join(storage, "mcp_bridge", "quota", "*", "interns", "*", time.Now().UTC().Format("2006-01-02")))
	if len(files) != 1 {
		t.Fatalf("quota files: %v", files)
	}
	data, _ := os.ReadFile(files[0])
	if string(data) != `{"principal":"key:bob","calls":3}` {
		t.Errorf("stored count: %s", data)
	}
}

// TestPolicyEnvPerPrincipal: alice's and bob's policies give the server
// each one's own TEAM_TOKEN (alice's from Caddy's environment, which no
// other child inherits, even with env_inherit *), and whose_token shows
// each their own, in both isolations; carol, under no policy, gets none.
func TestPolicyEnvPerPrincipal(t *testing.T) {
	t.Setenv("MCPBRIDGE_TEST_ALICE_TOKEN", "alice-upstream-61c2")
	block := teamKeys + `
		named_api_key carol ` + carolKey + `
		env_inherit *
		policy alice {
			match key alice
			env TEAM_TOKEN {env.MCPBRIDGE_TEST_ALICE_TOKEN}
		}
		policy bob {
			match key bob
			env TEAM_TOKEN bob-upstream-0d9a
		}`
	c, bases := teamSites(t, block)
	for i, isolation := range []string{"session", "shared"} {
		for _, who := range []struct{ name, key, want string }{
			{"alice", aliceKey, "TEAM_TOKEN=alice-upstream-61c2"},
			{"bob", bobKey, "TEAM_TOKEN=bob-upstream-0d9a"},
			{"carol", carolKey, "TEAM_TOKEN="},
		} {
			t.Run(isolation+"/"+who.name, func(t *testing.T) {
				tr, version := teamTransport(bases[i], "streamable", who.key)
				cs := teamConnect(t, tr, version, nil)
				res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "whose_token", Arguments: map[string]any{}})
				if err != nil || res.IsError {
					t.Fatalf("whose_token: %v", err)
				}
				if got := res.Content[0].(*mcp.TextContent).Text; got != who.want {
					t.Errorf("whose_token = %q, want %q", got, who.want)
				}
				res, err = cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "environment", Arguments: map[string]any{}})
				if err != nil || res.IsError {
					t.Fatalf("environment: %v", err)
				}
				if env := res.Content[0].(*mcp.TextContent).Text; who.name != "alice" && strings.Contains(env, "alice-upstream") {
					t.Errorf("%s's child has alice's token in its environment", who.name)
				}
			})
		}
	}
	// Each policy with env has pools of its own, beside the sites' own.
	resp, err := c.AdminGet("/mcp_bridge/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var status struct {
		Pools []json.RawMessage `json:"pools"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&status); err != nil || len(status.Pools) != 6 {
		t.Errorf("%d pools, want 6 (2 sites × the site's, alice's and bob's): %v", len(status.Pools), err)
	}
}

func TestGlobMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"search", "search", true},
		{"search", "search_code", false},
		{"search_*", "search_code", true},
		{"*_admin", "reset_admin", true},
		{"*_admin", "admin", false},
		{"*", "", true},
		{"file:///public/*", "file:///public/a/b.txt", true},
		{"file:///public/*", "file:///private/a.txt", false},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"delete_?", "delete_x", false}, // ? is not special
	} {
		if got := globMatch(c.pattern, c.name); got != c.want {
			t.Errorf("globMatch(%q, %q) = %v", c.pattern, c.name, got)
		}
	}
}

// adminPrincipals returns the principals the admin API lists, by name.
func adminPrincipals(t *testing.T, c *mcptest.Caddy) map[string]principalStatus {
	t.Helper()
	resp, err := c.AdminGet("/mcp_bridge/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var status struct {
		Principals []principalStatus `json:"principals"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&status); err != nil {
		t.Fatal(err)
	}
	out := map[string]principalStatus{}
	for _, p := range status.Principals {
		out[p.Principal] = p
	}
	return out
}
