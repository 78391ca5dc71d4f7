package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
)

func serveCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve --stdio <command>",
		Short: "Serve a stdio MCP server over HTTP, in one command",
		Long: `
Serves a stdio MCP server at /mcp (Streamable HTTP), /sse and /ws, like
caddy reverse-proxy does for HTTP servers. With --domain, Caddy gets a
certificate for it and serves HTTPS on port 443 (HTTP redirects); without,
it serves plain HTTP on --listen. Caddy's admin endpoint stays on
localhost:2019, so caddy mcp-bridge status and caddy stop work.
`,
		RunE: runServe,
	}
	f := cmd.Flags()
	f.String("stdio", "", "the stdio MCP server's command line (required)")
	f.String("listen", ":8765", "address to serve plain HTTP on, without --domain")
	f.String("domain", "", "serve HTTPS for this domain name, with a certificate from Let's Encrypt or ZeroSSL")
	f.String("api-key-file", "", "require the API key in this file (created if missing)")
	f.StringArray("cors", nil, "allow this browser origin, with CORS answers (repeatable)")
	f.String("isolation", "session", "session: a child per session; shared: sessions share children")
	return cmd
}

// serveConfig builds the Caddy config that serve runs.
func serveConfig(cmd *cobra.Command) (*caddy.Config, error) {
	f := cmd.Flags()
	stdio, _ := f.GetString("stdio")
	listen, _ := f.GetString("listen")
	domain, _ := f.GetString("domain")
	keyFile, _ := f.GetString("api-key-file")
	cors, _ := f.GetStringArray("cors")
	isolation, _ := f.GetString("isolation")
	if stdio == "" {
		return nil, errors.New("--stdio is required: the command line of the MCP server")
	}
	handler := Handler{
		Command:        stdio,
		APIKeyFile:     keyFile,
		AllowedOrigins: cors,
		Pool:           &PoolConfig{Isolation: isolation},
	}
	if len(cors) > 0 {
		handler.CORS = new(CORSConfig)
	}
	if err := handler.Validate(); err != nil {
		return nil, err
	}
	route := caddyhttp.Route{HandlersRaw: []json.RawMessage{caddyconfig.JSONModuleObject(handler, "handler", "mcp_bridge", nil)}}
	server := &caddyhttp.Server{Routes: caddyhttp.RouteList{route}}
	if domain != "" {
		route.MatcherSetsRaw = []caddy.ModuleMap{{"host": caddyconfig.JSON(caddyhttp.MatchHost{domain}, nil)}}
		server.Routes = caddyhttp.RouteList{route}
		server.Listen = []string{":443"}
	} else {
		if _, _, err := net.SplitHostPort(listen); err != nil {
			return nil, fmt.Errorf("--listen %q: %v", listen, err)
		}
		server.Listen = []string{listen}
		server.AutoHTTPS = &caddyhttp.AutoHTTPSConfig{Disabled: true}
	}
	httpApp := caddyhttp.App{Servers: map[string]*caddyhttp.Server{"mcp_bridge": server}}
	persist := false
	return &caddy.Config{
		Admin:   &caddy.AdminConfig{Config: &caddy.ConfigSettings{Persist: &persist}},
		AppsRaw: caddy.ModuleMap{"http": caddyconfig.JSON(httpApp, nil)},
	}, nil
}

func runServe(cmd *cobra.Command, _ []string) error {
	cfg, err := serveConfig(cmd)
	if err != nil {
		return err
	}
	if err := caddy.Run(cfg); err != nil {
		return err
	}
	stdio, _ := cmd.Flags().GetString("stdio")
	endpoint := "http://" + cmd.Flag("listen").Value.String() + "/mcp"
	if domain, _ := cmd.Flags().GetString("domain"); domain != "" {
		endpoint = "https://" + domain + "/mcp"
	}
	caddy.Log().Info("serving a stdio MCP server", zap.String("command", stdio), zap.String("endpoint", endpoint))
	select {}
}
