package caddymodule

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// tlsCaddy is a Caddy serving one bridge over HTTPS with its own CA (`tls
// internal`) at https://localhost:<port>, as on a LAN host without a
// public name.
type tlsCaddy struct {
	*mcptest.Caddy
	admin               string
	httpsPort, httpPort int
	roots               *x509.CertPool // Caddy's root, for clients that trust it
}

// caddyfile is the config with bridge as the site's only handler.
func (c *tlsCaddy) caddyfile(bridge string) string {
	return fmt.Sprintf(`{
	admin %s
	http_port %d
	https_port %d
	local_certs
	skip_install_trust
}

https://localhost:%d {
	bind 127.0.0.1
	tls internal
	%s
}
`, c.admin, c.httpPort, c.httpsPort, c.httpsPort, bridge)
}

// startTLSCaddy starts Caddy with bridge and waits until a client that
// trusts its root completes a TLS handshake.
func startTLSCaddy(t *testing.T, bridge string) *tlsCaddy {
	t.Helper()
	dir := t.TempDir()
	c := &tlsCaddy{admin: fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t)), httpsPort: mcptest.FreePort(t), httpPort: mcptest.FreePort(t)}
	c.Caddy = mcptest.StartCaddy(t, dir, c.caddyfile(bridge), c.admin,
		fmt.Sprintf("127.0.0.1:%d", c.httpsPort), fmt.Sprintf("127.0.0.1:%d", c.httpPort))

	// StartCaddy runs Caddy with XDG_DATA_HOME=<dir>/data.
	rootPath := filepath.Join(dir, "data", "caddy", "pki", "authorities", "local", "root.crt")
	var rootPEM []byte
	mcptest.WaitFor(t, 30*time.Second, "Caddy's root certificate "+rootPath, func() bool {
		rootPEM, _ = os.ReadFile(rootPath)
		return len(rootPEM) > 0
	})
	c.roots = x509.NewCertPool()
	if !c.roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("no certificate in %s", rootPath)
	}
	// The certificate may come a moment after the listener: wait until a
	// handshake succeeds.
	trusting := c.client(c.roots)
	mcptest.WaitFor(t, 30*time.Second, "a TLS handshake with "+c.url("/mcp"), func() bool {
		resp, err := trusting.Get(c.url("/mcp"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	return c
}

// url is the HTTPS URL of path.
func (c *tlsCaddy) url(path string) string {
	return fmt.Sprintf("https://localhost:%d%s", c.httpsPort, path)
}

// transport trusts roots and dials 127.0.0.1: localhost may resolve to
// ::1 first, and Caddy listens on 127.0.0.1 only. The URLs keep the name
// localhost, for SNI, the certificate and the Host the site matches.
func (c *tlsCaddy) transport(roots *x509.CertPool) *http.Transport {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp4", net.JoinHostPort("127.0.0.1", port))
	}
	return &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}
}

// client trusts roots and does not follow redirects: they are for the
// tests to see.
func (c *tlsCaddy) client(roots *x509.CertPool) *http.Client {
	return &http.Client{
		Transport:     c.transport(roots),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// TestTLSInternal serves the bridge over HTTPS with Caddy's own CA (`tls
// internal`), as on a LAN host without a public name: a client that trusts
// Caddy's root gets a working session at https://localhost:<port>/mcp,
// one that does not is refused, and plain HTTP is redirected to HTTPS.
func TestTLSInternal(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	c := startTLSCaddy(t, "mcp_bridge {\n\t\tcommand "+exe+"\n\t}")
	trusting := c.client(c.roots)
	client := c.client
	httpsURL := c.url("/mcp")
	httpURL := fmt.Sprintf("http://localhost:%d/mcp", c.httpPort)

	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"go-sdk client trusting Caddy's root: a working session", func(t *testing.T) {
			c := mcptest.Connect(t, &mcp.StreamableClientTransport{Endpoint: httpsURL, HTTPClient: trusting}, "")
			defer c.Close()
			if got := c.CallText(t, "test_simple_text", nil); got != "This is a simple text response for testing." {
				t.Errorf("test_simple_text = %q", got)
			}
		}},
		{"served over HTTP/2 and TLS with a certificate for localhost from Caddy's CA", func(t *testing.T) {
			resp, err := trusting.Get(httpsURL)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
				t.Fatal("no TLS connection state")
			}
			if resp.ProtoMajor != 2 {
				t.Errorf("protocol %s, want HTTP/2", resp.Proto)
			}
			leaf := resp.TLS.PeerCertificates[0]
			if err := leaf.VerifyHostname("localhost"); err != nil {
				t.Error(err)
			}
			if !strings.Contains(leaf.Issuer.CommonName, "Caddy Local Authority") {
				t.Errorf("certificate issued by %q", leaf.Issuer.CommonName)
			}
		}},
		{"HTTP/1.1 over TLS: an idle GET stream parks, carries news, and ends when the client leaves", func(t *testing.T) {
			tr := c.transport(c.roots)
			tr.ForceAttemptHTTP2 = false
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			h1 := &http.Client{Transport: tr}
			post := func(session, body string) *http.Response {
				req, _ := http.NewRequest(http.MethodPost, httpsURL, strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				req.Header.Set("MCP-Protocol-Version", "2025-11-25")
				if session != "" {
					req.Header.Set("Mcp-Session-Id", session)
				}
				resp, err := h1.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { resp.Body.Close() })
				return resp
			}
			resp := post("", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`)
			session := resp.Header.Get("Mcp-Session-Id")
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 || session == "" {
				t.Fatalf("initialize: %s over %s, session %q", resp.Status, resp.Proto, session)
			}
			io.Copy(io.Discard, resp.Body)
			post(session, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)

			conn, err := tls.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", c.httpsPort), &tls.Config{ServerName: "localhost", RootCAs: c.roots, NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "GET /mcp HTTP/1.1\r\nHost: localhost:%d\r\nAccept: text/event-stream\r\nMcp-Session-Id: %s\r\nMCP-Protocol-Version: 2025-11-25\r\n\r\n", c.httpsPort, session)
			get, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil || get.StatusCode != http.StatusOK {
				t.Fatalf("GET: %v %v", get, err)
			}
			events := mcptest.NewSSEReader(get.Body)
			if ev := events.MustNext(t); ev.ID == "" || ev.Data != "" {
				t.Fatalf("GET stream opened with %+v, want a priming event", ev)
			}
			if runtime.GOOS == "linux" {
				mcptest.WaitFor(t, 10*time.Second, "no goroutine writing a stream (it parked)", func() bool {
					return goroutinesIn(t, c.admin, "bridge.(*pump).run(") == 0
				})
			}
			io.Copy(io.Discard, post(session, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"test_trigger_tool_change"}}`).Body)
			if ev := events.MustNext(t); !strings.Contains(ev.Data, "notifications/tools/list_changed") {
				t.Fatalf("the parked GET stream got %+v, want the list_changed notification", ev)
			}

			// The client leaves (close_notify, then FIN): Caddy closes its end
			// too, rather than keep a socket in CLOSE_WAIT.
			if n := closeWaits(t, c.httpsPort); n != 0 {
				t.Fatalf("%d sockets in CLOSE_WAIT before the client left", n)
			}
			conn.Close()
			mcptest.WaitFor(t, 10*time.Second, "Caddy to close the stream's connection", func() bool {
				return closeWaits(t, c.httpsPort) == 0 && goroutinesIn(t, c.admin, "bridge.(*pump).run(") == 0
			})
		}},
		{"a client that does not trust Caddy's root is refused", func(t *testing.T) {
			_, err := client(x509.NewCertPool()).Get(httpsURL)
			var unknown x509.UnknownAuthorityError
			if !errors.As(err, &unknown) {
				t.Errorf("got %v, want an unknown-authority error", err)
			}
		}},
		{"plain HTTP is redirected to HTTPS", func(t *testing.T) {
			resp, err := trusting.Get(httpURL)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
			default:
				t.Fatalf("GET %s: %d, want a redirect", httpURL, resp.StatusCode)
			}
			// Caddy leaves the port out when the site's port is the
			// https_port, assuming a port mapping to 443 in front of it.
			loc, err := url.Parse(resp.Header.Get("Location"))
			if err != nil || loc.Scheme != "https" || loc.Hostname() != "localhost" || loc.Path != "/mcp" {
				t.Errorf("Location %q, want https://localhost[:port]/mcp", resp.Header.Get("Location"))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.run)
	}
}

// goroutinesIn counts the goroutines of a Caddy (from its admin endpoint's
// pprof) that are in fn.
func goroutinesIn(t *testing.T, admin, fn string) int {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/debug/pprof/goroutine?debug=2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dump, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(dump), fn)
}

// closeWaits counts the sockets on port (local) that the peer closed and
// this end has not: CLOSE_WAIT, state 08 in /proc/net/tcp.
func closeWaits(t *testing.T, port int) int {
	t.Helper()
	table, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && strings.HasSuffix(f[1], fmt.Sprintf(":%04X", port)) && f[3] == "08" {
			n++
		}
	}
	return n
}
