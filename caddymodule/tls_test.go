package caddymodule

import (
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
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
)

// TestTLSInternal serves the bridge over HTTPS with Caddy's own CA (`tls
// internal`), as on a LAN host without a public name: a client that trusts
// Caddy's root gets a working session at https://localhost:<port>/mcp,
// one that does not is refused, and plain HTTP is redirected to HTTPS.
func TestTLSInternal(t *testing.T) {
	exe := mcptest.EverythingServer(t)
	dir := t.TempDir()
	admin := fmt.Sprintf("127.0.0.1:%d", mcptest.FreePort(t))
	httpsPort, httpPort := mcptest.FreePort(t), mcptest.FreePort(t)
	cfg := fmt.Sprintf(`{
	admin %s
	http_port %d
	https_port %d
	local_certs
	skip_install_trust
}

https://localhost:%d {
	bind 127.0.0.1
	tls internal
	mcp_bridge {
		command %s
	}
}
`, admin, httpPort, httpsPort, httpsPort, exe)
	httpsAddr := fmt.Sprintf("127.0.0.1:%d", httpsPort)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", httpPort)
	t.Cleanup(func() { mcptest.WaitNoProcesses(t, exe, 10*time.Second) })
	mcptest.StartCaddy(t, dir, cfg, admin, httpsAddr, httpAddr)

	// StartCaddy runs Caddy with XDG_DATA_HOME=<dir>/data.
	rootPath := filepath.Join(dir, "data", "caddy", "pki", "authorities", "local", "root.crt")
	var rootPEM []byte
	mcptest.WaitFor(t, 30*time.Second, "Caddy's root certificate "+rootPath, func() bool {
		rootPEM, _ = os.ReadFile(rootPath)
		return len(rootPEM) > 0
	})
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("no certificate in %s", rootPath)
	}

	// localhost may resolve to ::1 first; Caddy listens on 127.0.0.1 only.
	// The URLs keep the name localhost, for SNI, the certificate and the
	// Host the site matches.
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp4", net.JoinHostPort("127.0.0.1", port))
	}
	client := func(roots *x509.CertPool) *http.Client {
		return &http.Client{
			Transport: &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true},
			// Redirects are for the test to see, not to follow.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	trusting := client(roots)
	httpsURL := fmt.Sprintf("https://localhost:%d/mcp", httpsPort)
	httpURL := fmt.Sprintf("http://localhost:%d/mcp", httpPort)

	// The certificate may come a moment after the listener: wait until a
	// handshake succeeds.
	mcptest.WaitFor(t, 30*time.Second, "a TLS handshake with "+httpsURL, func() bool {
		resp, err := trusting.Get(httpsURL)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})

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
