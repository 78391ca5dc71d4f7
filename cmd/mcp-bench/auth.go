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
// on two sites of one fresh bridge, one taking a named API key, the other
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
	keySite := bridgeSite(b.server, "min_idle 1")
	keySite = keySite[:len(keySite)-len("\t}\n")] + "\t\tnamed_api_key bench " + key + "\n\t}\n"
	jwtSite := bridgeSite(b.server, "min_idle 1")
	jwtSite = jwtSite[:len(jwtSite)-len("\t}\n")] + "\t\toauth {\n\t\t\tissuer " + issuer.URL() + "\n\t\t}\n\t}\n"
	c, err := b.startCaddy("auth", keySite, jwtSite)
	if err != nil {
		return err
	}
	defer c.stop()
	token, err := issuer.Token(ctx, "alice", c.urls[1]+"/mcp")
	if err != nil {
		return err
	}
	name := fmt.Sprintf("auth 1x%d", b.authCalls)
	for i, credential := range []struct{ system, bearer string }{{"bridge api key", key}, {"bridge jwt", token}} {
		sys := bridgeSystem(c, c.urls[i], "streamable", 1)
		sys.name = credential.system
		client := mcptest.Bearer(credential.bearer).Client()
		sys.connect = connectWith(&mcp.StreamableClientTransport{Endpoint: c.urls[i] + "/mcp", HTTPClient: client, MaxEventSize: -1}, sessionVersion)
		if err := b.measureLoad(ctx, name, sys, load{sessions: 1, calls: b.authCalls}, toolCaller(b.tool, nil)); err != nil {
			return err
		}
	}
	return nil
}
