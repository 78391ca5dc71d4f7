package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
)

func serveCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve --stdio <command> | --stdio <name>=<command>...",
		Short: "Serve stdio MCP servers over HTTP, in one command",
		Long: `
Serves a stdio MCP server at /mcp (Streamable HTTP), /sse and /ws, like
caddy reverse-proxy does for HTTP servers. Several servers, each given as
--stdio <name>=<command>, are served side by side, each under /<name>/
(/<name>/mcp, /<name>/sse, /<name>/ws), and known by their names in
caddy mcp-bridge status <name>, the admin API, metrics and logs.

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
	f.StringArray("stdio", nil, "the stdio MCP server's command line, or <name>=<command> (repeatable, with names)")
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

// stdioServer is one --stdio: a command, and its name when it has one.
type stdioServer struct {
	name, command string
}

// mount is where the server's endpoints are: / for a lone unnamed server,
// /<name>/ for named ones.
func (s stdioServer) mount() string {
	if s.name == "" {
		return "/"
	}
	return "/" + s.name + "/"
}

// stdioServers reads the --stdio flags: one command, or name=command
// pairs (a word of a server name's characters before the first =).
func stdioServers(values []string) ([]stdioServer, error) {
	if len(values) == 0 {
		return nil, errors.New("--stdio is required: the command line of the MCP server")
	}
	var servers []stdioServer
	seen := map[string]bool{}
	for _, v := range values {
		var s stdioServer
		if name, command, ok := strings.Cut(v, "="); ok && validName.MatchString(name) {
			s = stdioServer{name: name, command: command}
		} else {
			s = stdioServer{command: v}
		}
		switch {
		case s.name == "" && len(values) > 1:
			return nil, fmt.Errorf("--stdio %q: with several servers, give each a name: --stdio <name>=<command>", v)
		case s.name != "" && checkServerName(s.name) != nil:
			return nil, fmt.Errorf("--stdio %q: %v", v, checkServerName(s.name))
		case seen[s.name]:
			return nil, fmt.Errorf("--stdio %q: two servers are named %s", v, s.name)
		case strings.TrimSpace(s.command) == "":
			return nil, fmt.Errorf("--stdio %q: no command", v)
		}
		seen[s.name] = true
		servers = append(servers, s)
	}
	return servers, nil
}

// serveConfig builds the Caddy config that serve runs.
func serveConfig(cmd *cobra.Command, st serveSettings) (*caddy.Config, error) {
	f := cmd.Flags()
	values, _ := f.GetStringArray("stdio")
	cors, _ := f.GetStringArray("cors")
	isolation, _ := f.GetString("isolation")
	servers, err := stdioServers(values)
	if err != nil {
		return nil, err
	}
	var routes caddyhttp.RouteList
	for _, s := range servers {
		handler := Handler{
			Name:           s.name,
			Command:        s.command,
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
		matchers := caddy.ModuleMap{}
		if s.name != "" {
			// As handle_path does: the handler sees the path below /<name>.
			matchers["path"] = caddyconfig.JSON(caddyhttp.MatchPath{s.mount() + "*"}, nil)
			strip := caddyconfig.JSONModuleObject(map[string]string{"strip_path_prefix": strings.TrimSuffix(s.mount(), "/")}, "handler", "rewrite", nil)
			route.HandlersRaw = append([]json.RawMessage{strip}, route.HandlersRaw...)
		}
		if st.domain != "" {
			matchers["host"] = caddyconfig.JSON(caddyhttp.MatchHost{st.domain}, nil)
		}
		if len(matchers) > 0 {
			route.MatcherSetsRaw = []caddy.ModuleMap{matchers}
		}
		routes = append(routes, route)
	}
	server := &caddyhttp.Server{Routes: routes}
	if st.domain != "" {
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
	values, _ := cmd.Flags().GetStringArray("stdio")
	servers, _ := stdioServers(values) // serveConfig checked them
	base := "http://" + st.listen
	if host, port, _ := net.SplitHostPort(st.listen); host == "" || host == "0.0.0.0" || host == "::" {
		base = "http://" + net.JoinHostPort("127.0.0.1", port) // it listens there too
	}
	if st.domain != "" {
		base = "https://" + st.domain
	}
	log := caddy.Log()
	out := cmd.OutOrStdout()
	for _, s := range servers {
		endpoint := base + s.mount() + "mcp"
		log.Info("serving a stdio MCP server", zap.String("server", s.name), zap.String("command", s.command), zap.String("endpoint", endpoint))
		if s.name == "" {
			fmt.Fprintf(out, "MCP endpoint: %s (also /sse and /ws)\n", endpoint)
		} else {
			fmt.Fprintf(out, "MCP endpoint of %s: %s (also %ssse and %sws)\n", s.name, endpoint, s.mount(), s.mount())
		}
	}
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
