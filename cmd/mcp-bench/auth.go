//go:build linux

package main

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpbridge/caddy-mcp-bridge/internal/mcptest"
	"github.com/mcpbridge/caddy-mcp-bridge/internal/testissuer"
)

// authCase measures what authentication costs the bridge: the same load
// on a fresh bridge per run taking a named API key, then on one taking
// OAuth access tokens (JWTs from a real authorization server in this
// process, whose key set the bridge fetches once and caches).
func (b *bench) authCase(ctx context.Context) error {
	if b.authCalls == 0 {
		return nil
	}
	issuer, err := testissuer.New(testissuer.Options{})
	if err != nil {
		return err
	}
	defer issuer.Close()
	key := rand.Text()
	name := fmt.Sprintf("auth 1x%d", b.authCalls)
	for _, credential := range []struct {
		system string
		site   string // the mcp_bridge lines that ask for it
		bearer func(ctx context.Context, url string) (string, error)
	}{
		{"bridge api key", "named_api_key bench " + key, func(context.Context, string) (string, error) { return key, nil }},
		{"bridge jwt", "oauth {\n\t\t\tissuer " + issuer.URL() + "\n\t\t}", func(ctx context.Context, url string) (string, error) {
			return issuer.Token(ctx, "alice", url)
		}},
	} {
		launch := func(ctx context.Context) (*system, error) {
			site := bridgeSite(b.server, "min_idle 1")
			site = site[:len(site)-len("\t}\n")] + "\t\t" + credential.site + "\n\t}\n"
			c, err := b.startCaddy("auth", site)
			if err != nil {
				return nil, err
			}
			sys := bridgeSystem(c, c.urls[0], "streamable", 1)
			sys.name, sys.stop = credential.system, c.stop
			bearer, err := credential.bearer(ctx, c.urls[0]+"/mcp")
			if err == nil {
				err = c.waitSpares(ctx, c.urls[0], 1)
			}
			if err != nil {
				c.stop()
				return nil, err
			}
			client := mcptest.Bearer(bearer).Client()
			sys.connect = connectWith(&mcp.StreamableClientTransport{Endpoint: c.urls[0] + "/mcp", HTTPClient: client, MaxEventSize: -1}, sessionVersion)
			return sys, nil
		}
		if err := b.measureLoad(ctx, name, launch, load{sessions: 1, calls: b.authCalls}, toolCaller(b.tool, nil)); err != nil {
			return err
		}
	}
	return nil
}
