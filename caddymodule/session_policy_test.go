package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// TestSessionSelection checks where lb_policy mcp_session sends requests:
// to the upstream a session's id names (by dial address, or by host),
// and to the fallback (here: the first upstream) when the request names
// no session or a node that is no upstream.
func TestSessionSelection(t *testing.T) {
	pool := reverseproxy.UpstreamPool{
		{Host: new(reverseproxy.Host), Dial: "10.0.0.1:8080"},
		{Host: new(reverseproxy.Host), Dial: "10.0.0.2:8080"},
		{Host: new(reverseproxy.Host), Dial: "bridge-3:8080"},
	}
	s := &SessionSelection{fallback: reverseproxy.FirstSelection{}}
	id := func(node string) string { return "0123456789abcdef0123456789abcdef." + node }
	for _, c := range []struct {
		what   string
		target string
		header http.Header
		want   string
	}{
		{"a new session", "/mcp", nil, "10.0.0.1:8080"},
		{"Mcp-Session-Id naming a dial address", "/mcp", http.Header{"Mcp-Session-Id": {id("10.0.0.2:8080")}}, "10.0.0.2:8080"},
		{"Mcp-Session-Id naming a host", "/mcp", http.Header{"Mcp-Session-Id": {id("bridge-3")}}, "bridge-3:8080"},
		{"a host's name in other case", "/mcp", http.Header{"Mcp-Session-Id": {id("BRIDGE-3")}}, "bridge-3:8080"},
		{"a legacy SSE message", "/message?sessionId=" + id("10.0.0.2%3A8080"), nil, "10.0.0.2:8080"},
		{"a legacy stream resuming", "/sse", http.Header{"Last-Event-Id": {id("bridge-3") + "_1_7"}}, "bridge-3:8080"},
		{"a node that is no upstream", "/mcp", http.Header{"Mcp-Session-Id": {id("10.0.0.9:8080")}}, "10.0.0.1:8080"},
		{"an id with no node", "/mcp", http.Header{"Mcp-Session-Id": {"0123456789abcdef0123456789abcdef"}}, "10.0.0.1:8080"},
		{"an id too short to have one", "/mcp", http.Header{"Mcp-Session-Id": {"abc.10.0.0.2:8080"}}, "10.0.0.1:8080"},
	} {
		r := httptest.NewRequest(http.MethodPost, c.target, nil)
		for k, v := range c.header {
			r.Header[k] = v
		}
		if got := s.Select(pool, r, nil); got == nil || got.Dial != c.want {
			t.Errorf("%s: selected %v, want %s", c.what, got, c.want)
		}
	}
}

// TestSessionSelectionCaddyfile checks the policy's Caddyfile syntax.
func TestSessionSelectionCaddyfile(t *testing.T) {
	for _, c := range []struct {
		in, fallback, err string
	}{
		{"mcp_session", "", ""},
		{"mcp_session {\nfallback least_conn\n}", `{"policy":"least_conn"}`, ""},
		{"mcp_session {\nfallback header X-User\n}", `{"field":"X-User","policy":"header"}`, ""},
		{"mcp_session extra", "", "wrong argument count"},
		{"mcp_session {\nfallback\n}", "", "wrong argument count"},
		{"mcp_session {\nsticky\n}", "", "unrecognized option"},
		{"mcp_session {\nfallback nonesuch\n}", "", "nonesuch"},
	} {
		var s SessionSelection
		err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(c.in))
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%q: %v", c.in, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: error %v, want one saying %q", c.in, err, c.err)
		case c.err == "" && string(s.FallbackRaw) != c.fallback:
			t.Errorf("%q: fallback %s, want %s", c.in, s.FallbackRaw, c.fallback)
		}
	}
}
