package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

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
caddy reverse-proxy does for HTTP servers.

By default it listens on 127.0.0.1:8765 (this machine only) and requires
an API key: the one in --api-key-file, or in $MCP_BRIDGE_API_KEY, or else
in ~/.llmc/mcp-api-key when that file exists, or else in
$XDG_CONFIG_HOME/caddy-mcp-bridge/api-key (~/.config/…), created with a
new key when missing. It prints the endpoint and how a client sends the
key. --no-auth serves without a key.

--host and --port (or $MCP_BRIDGE_HOST and $MCP_BRIDGE_PORT; flags win)
choose where it listens; --listen host:port sets both. With --domain,
Caddy gets a certificate for it and serves HTTPS on port 443 (HTTP
redirects). Caddy's admin endpoint stays on localhost:2019, so caddy
mcp-bridge status and caddy stop work.
`,
		RunE: runServe,
	}
	f := cmd.Flags()
	f.String("stdio", "", "the stdio MCP server's command line (required)")
	f.String("host", "127.0.0.1", "address to listen on, without --domain ($MCP_BRIDGE_HOST)")
	f.Int("port", 8765, "port to listen on, without --domain ($MCP_BRIDGE_PORT)")
	f.String("listen", "", "host:port to listen on, instead of --host and --port")
	f.String("domain", "", "serve HTTPS for this domain name, with a certificate from Let's Encrypt or ZeroSSL")
	f.String("api-key-file", "", "require the API key in this file (created if missing)")
	f.Bool("no-auth", false, "serve without an API key: anyone who can connect can use the server")
	f.StringArray("cors", nil, "allow this browser origin, with CORS answers (repeatable)")
	f.String("isolation", "session", "session: a child per session; shared: sessions share children")
	return cmd
}

// serveSettings is what serve runs, from its flags and the environment.
type serveSettings struct {
	listen  string // host:port, without --domain
	domain  string
	keyFile string // the API key file, if any
	keyEnv  bool   // the key is $MCP_BRIDGE_API_KEY
	noAuth  bool
}

// settings reads the flags, the environment variables they stand for
// (flags win) and the default key file.
func serveSettingsOf(cmd *cobra.Command) (serveSettings, error) {
	f := cmd.Flags()
	var st serveSettings
	st.domain, _ = f.GetString("domain")
	st.noAuth, _ = f.GetBool("no-auth")
	host, _ := f.GetString("host")
	port, _ := f.GetInt("port")
	if !f.Changed("host") {
		if v := os.Getenv("MCP_BRIDGE_HOST"); v != "" {
			host = v
		}
	}
	if !f.Changed("port") {
		if v := os.Getenv("MCP_BRIDGE_PORT"); v != "" {
			p, err := strconv.Atoi(v)
			if err != nil {
				return st, fmt.Errorf("MCP_BRIDGE_PORT=%q: want a port number", v)
			}
			port = p
		}
	}
	st.listen = net.JoinHostPort(host, strconv.Itoa(port))
	if listen, _ := f.GetString("listen"); listen != "" {
		if _, _, err := net.SplitHostPort(listen); err != nil {
			return st, fmt.Errorf("--listen %q: %v", listen, err)
		}
		st.listen = listen
	}
	st.keyFile, _ = f.GetString("api-key-file")
	st.keyFile = expandPath(st.keyFile)
	switch {
	case st.noAuth && st.keyFile != "":
		return st, errors.New("--no-auth and --api-key-file contradict each other")
	case st.noAuth, st.keyFile != "":
	case os.Getenv("MCP_BRIDGE_API_KEY") != "":
		st.keyEnv = true
	default:
		st.keyFile = defaultKeyFile()
	}
	return st, nil
}

// defaultKeyFile is the design's ~/.llmc/mcp-api-key when it exists, else
// caddy-mcp-bridge/api-key in the user's config directory.
func defaultKeyFile() string {
	if llmc := expandPath("~/.llmc/mcp-api-key"); fileExists(llmc) {
		return llmc
	}
	if dir, err := os.UserConfigDir(); err == nil {
		return filepath.Join(dir, "caddy-mcp-bridge", "api-key")
	}
	return expandPath("~/.llmc/mcp-api-key")
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// serveConfig builds the Caddy config that serve runs.
func serveConfig(cmd *cobra.Command, st serveSettings) (*caddy.Config, error) {
	f := cmd.Flags()
	stdio, _ := f.GetString("stdio")
	cors, _ := f.GetStringArray("cors")
	isolation, _ := f.GetString("isolation")
	if stdio == "" {
		return nil, errors.New("--stdio is required: the command line of the MCP server")
	}
	handler := Handler{
		Command:        stdio,
		APIKeyFile:     st.keyFile,
		AllowedOrigins: cors,
		Pool:           &PoolConfig{Isolation: isolation},
	}
	if st.keyEnv {
		handler.APIKeys = []string{"{env.MCP_BRIDGE_API_KEY}"}
	}
	if len(cors) > 0 {
		handler.CORS = new(CORSConfig)
	}
	if err := handler.Validate(); err != nil {
		return nil, err
	}
	route := caddyhttp.Route{HandlersRaw: []json.RawMessage{caddyconfig.JSONModuleObject(handler, "handler", "mcp_bridge", nil)}}
	server := &caddyhttp.Server{Routes: caddyhttp.RouteList{route}}
	if st.domain != "" {
		route.MatcherSetsRaw = []caddy.ModuleMap{{"host": caddyconfig.JSON(caddyhttp.MatchHost{st.domain}, nil)}}
		server.Routes = caddyhttp.RouteList{route}
		server.Listen = []string{":443"}
	} else {
		server.Listen = []string{st.listen}
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
	st, err := serveSettingsOf(cmd)
	if err != nil {
		return err
	}
	cfg, err := serveConfig(cmd, st)
	if err != nil {
		return err
	}
	if err := caddy.Run(cfg); err != nil {
		return err
	}
	stdio, _ := cmd.Flags().GetString("stdio")
	endpoint := "http://" + st.listen + "/mcp"
	if host, port, _ := net.SplitHostPort(st.listen); host == "" || host == "0.0.0.0" || host == "::" {
		endpoint = "http://" + net.JoinHostPort("127.0.0.1", port) + "/mcp" // it listens there too
	}
	if st.domain != "" {
		endpoint = "https://" + st.domain + "/mcp"
	}
	log := caddy.Log()
	log.Info("serving a stdio MCP server", zap.String("command", stdio), zap.String("endpoint", endpoint))
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "MCP endpoint: %s (also /sse and /ws)\n", endpoint)
	switch {
	case st.noAuth:
		fmt.Fprintln(out, "no API key: anyone who can connect can use the server")
		if host, _, _ := net.SplitHostPort(st.listen); st.domain != "" || !isLoopbackHost(host) {
			log.Warn("serving without an API key beyond this machine: anyone who can reach it can run its tools", zap.String("listen", st.listen))
		}
	case st.keyEnv:
		fmt.Fprintln(out, "API key: the value of $MCP_BRIDGE_API_KEY; clients send it as Authorization: Bearer <key>")
	default:
		fmt.Fprintf(out, "API key: in %s; clients send it as\n  API_KEY=$(cat %s)\n  Authorization: Bearer $API_KEY   (or X-API-Key: $API_KEY)\n", st.keyFile, st.keyFile)
	}
	select {}
}
