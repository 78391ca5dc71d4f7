package caddymodule

import (
	"path/filepath"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("mcp_bridge", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("mcp_bridge", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	mcp_bridge [<matcher>] {
//		command <program> [<args...>]
//		env <key> <value>
//		env_inherit <name...>|*
//		dir <path>
//		pool {
//			isolation session|shared
//			min_idle <n>
//			sessions_per_process <n>
//			min_processes <n>
//			process_idle_timeout <duration>
//			max_processes <n>|off
//			acquire_timeout <duration>
//			session_idle_timeout <duration>
//			health_check <interval>|off
//			health_check_timeout <duration>
//			request_timeout <duration>
//			share_across_keys
//		}
//		max_message_size <size>
//		max_undelivered <size>
//		allowed_hosts <host...>
//		allowed_origins <origin...>
//		transports streamable|sse|ws...
//		streamable_path <path>
//		sse_path <path>
//		message_path <path>
//		ws_path <path>
//		health_path <path>
//		health_details key|on|off
//		public_base_url <url>
//		keepalive <duration>|off
//		stop_timeout <duration>
//		term_timeout <duration>
//		api_key <key...>
//		named_api_key <name> <key>
//		api_key_file <path>
//		api_key_storage <storage key>
//		api_key_query
//		resource_metadata <url>
//		oauth {
//			issuer <url>
//			audience <url>
//			scopes <scope...>
//			introspection_url <url>
//			client_id <id>
//			client_secret <secret>
//			resource_name <name>
//		}
//		policy <name> {
//			match key|subject|client|scope <value...>
//			tools|prompts|resources allow|deny <pattern...>
//			rate <n>/<period> [burst <n>]
//			tool_rate <tool> <n>/<period> [burst <n>]
//			quota <n>/day|month
//			env <NAME> <value>
//		}
//		cors {
//			allow_credentials
//			max_age <duration>
//			allow_headers <header...>
//		}
//		max_sessions_per_key <n>
//		body_read_timeout <duration>
//		node <id>
//		drain_timeout <duration>
//		stream_close_delay <duration>
//		replay_buffer <events> [<size>]
//		resume_grace <duration>
//		poll_interval <duration>
//	}
//
// command takes the rest of its line; quoting works as in a shell, but no
// shell runs it. env, env_inherit, allowed_hosts, allowed_origins,
// api_key, named_api_key and policy are repeatable; every other option is
// given once; in a policy, match, tools, prompts, resources, tool_rate and
// env are repeatable. The first policy whose match lines (any of them)
// match a request applies; a policy without match applies to all. Pool options
// of the other isolation (min_idle is session's; sessions_per_process,
// min_processes and process_idle_timeout shared's) and two endpoints on
// one path are errors that name their line. env values may use
// placeholders such as {env.API_TOKEN}, and so may api_key. A bare cors
// line turns CORS answers on with defaults. Sizes take units (16MiB);
// durations take Caddy's duration syntax (30s, 30m, 1d).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		h.Name = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	var lines optionLines
	caddyfileDir := ""
	for d.NextBlock(0) {
		if err := lines.note(d, "env", "env_inherit", "allowed_hosts", "allowed_origins", "api_key", "named_api_key", "policy"); err != nil {
			return err
		}
		switch d.Val() {
		case "command":
			args := d.RemainingArgsAsTokens()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.Command = commandLine(args)
			caddyfileDir = filepath.Dir(d.File())
		case "env":
			if err := envArgs(d, &h.Env); err != nil {
				return err
			}
		case "env_inherit":
			names := d.RemainingArgs()
			if len(names) == 0 {
				return d.ArgErr()
			}
			h.EnvInherit = append(h.EnvInherit, names...)
		case "dir":
			if !d.AllArgs(&h.Dir) {
				return d.ArgErr()
			}
		case "pool":
			if d.NextArg() {
				return d.ArgErr()
			}
			if h.Pool == nil {
				h.Pool = new(PoolConfig)
			}
			if err := h.Pool.unmarshalCaddyfile(d, &lines); err != nil {
				return err
			}
		case "max_message_size":
			if err := sizeArg(d, &h.MaxMessageSize); err != nil {
				return err
			}
		case "max_undelivered":
			if err := sizeArg(d, &h.MaxUndelivered); err != nil {
				return err
			}
		case "health_details":
			if !d.AllArgs(&h.HealthDetails) {
				return d.ArgErr()
			}
		case "allowed_hosts":
			hosts := d.RemainingArgs()
			if len(hosts) == 0 {
				return d.ArgErr()
			}
			h.AllowedHosts = append(h.AllowedHosts, hosts...)
		case "allowed_origins":
			origins := d.RemainingArgs()
			if len(origins) == 0 {
				return d.ArgErr()
			}
			h.AllowedOrigins = append(h.AllowedOrigins, origins...)
		case "transports":
			h.Transports = d.RemainingArgs()
			if len(h.Transports) == 0 {
				return d.ArgErr()
			}
		case "streamable_path":
			if !d.AllArgs(&h.StreamablePath) {
				return d.ArgErr()
			}
		case "sse_path":
			if !d.AllArgs(&h.SSEPath) {
				return d.ArgErr()
			}
		case "message_path":
			if !d.AllArgs(&h.MessagePath) {
				return d.ArgErr()
			}
		case "ws_path":
			if !d.AllArgs(&h.WSPath) {
				return d.ArgErr()
			}
		case "health_path":
			if !d.AllArgs(&h.HealthPath) {
				return d.ArgErr()
			}
		case "public_base_url":
			if !d.AllArgs(&h.PublicBaseURL) {
				return d.ArgErr()
			}
		case "keepalive":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			if s == "off" {
				h.Keepalive = -1
				continue
			}
			if dur, err := caddy.ParseDuration(s); err != nil || dur <= 0 {
				return d.Errf("keepalive: want a positive duration, or off to send none, got %q", s)
			} else {
				h.Keepalive = caddy.Duration(dur)
			}
		case "stop_timeout":
			if err := durationArg(d, &h.StopTimeout); err != nil {
				return err
			}
		case "term_timeout":
			if err := durationArg(d, &h.TermTimeout); err != nil {
				return err
			}
		case "api_key":
			keys := d.RemainingArgs()
			if len(keys) == 0 {
				return d.ArgErr()
			}
			h.APIKeys = append(h.APIKeys, keys...)
		case "named_api_key":
			var name, key string
			if !d.AllArgs(&name, &key) {
				return d.ArgErr()
			}
			if h.NamedAPIKeys == nil {
				h.NamedAPIKeys = make(map[string]string)
			}
			if _, dup := h.NamedAPIKeys[name]; dup {
				return d.Errf("named_api_key %s is given twice", name)
			}
			h.NamedAPIKeys[name] = key
		case "oauth":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.OAuth = new(OAuthConfig)
			if err := h.OAuth.unmarshalCaddyfile(d); err != nil {
				return err
			}
		case "policy":
			var p PolicyConfig
			if err := p.unmarshalCaddyfile(d); err != nil {
				return err
			}
			h.Policies = append(h.Policies, p)
		case "api_key_file":
			if !d.AllArgs(&h.APIKeyFile) {
				return d.ArgErr()
			}
		case "api_key_storage":
			if !d.AllArgs(&h.APIKeyStorage) {
				return d.ArgErr()
			}
		case "api_key_query":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.APIKeyQuery = true
		case "resource_metadata":
			if !d.AllArgs(&h.ResourceMetadata) {
				return d.ArgErr()
			}
		case "cors":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.CORS = new(CORSConfig)
			if err := h.CORS.unmarshalCaddyfile(d); err != nil {
				return err
			}
		case "max_sessions_per_key":
			n, err := intArg(d)
			if err != nil {
				return err
			}
			h.MaxSessionsPerKey = n
		case "body_read_timeout":
			if err := durationArg(d, &h.BodyReadTimeout); err != nil {
				return err
			}
		case "node":
			if !d.AllArgs(&h.Node) {
				return d.ArgErr()
			}
		case "drain_timeout":
			if err := durationArg(d, &h.DrainTimeout); err != nil {
				return err
			}
		case "stream_close_delay":
			if err := durationArg(d, &h.StreamCloseDelay); err != nil {
				return err
			}
		case "replay_buffer":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return d.ArgErr()
			}
			events, err := strconv.Atoi(args[0])
			if err != nil || events < 1 {
				return d.Errf("replay_buffer: want a number of events, got %q", args[0])
			}
			h.ReplayBuffer = &ReplayBufferConfig{Events: events}
			if len(args) == 2 {
				size, err := humanize.ParseBytes(args[1])
				if err != nil || size == 0 || size > 1<<30 {
					return d.Errf("replay_buffer: want a size from 1B to 1GiB, got %q", args[1])
				}
				h.ReplayBuffer.Bytes = int(size)
			}
		case "resume_grace":
			if err := durationArg(d, &h.ResumeGrace); err != nil {
				return err
			}
		case "poll_interval":
			if err := durationArg(d, &h.PollInterval); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized mcp_bridge option %q", d.Val())
		}
	}
	h.Command = commandBesideCaddyfile(h.Command, h.Dir, caddyfileDir)
	return lines.errAt(h.checkOptions())
}

func (p *PoolConfig) unmarshalCaddyfile(d *caddyfile.Dispenser, lines *optionLines) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := lines.note(d); err != nil {
			return err
		}
		switch d.Val() {
		case "isolation":
			if !d.AllArgs(&p.Isolation) {
				return d.ArgErr()
			}
		case "min_idle":
			n, err := intArg(d)
			if err != nil {
				return err
			}
			p.MinIdle = &n
		case "sessions_per_process":
			n, err := intArg(d)
			if err != nil {
				return err
			}
			p.SessionsPerProcess = n
		case "min_processes":
			n, err := intArg(d)
			if err != nil {
				return err
			}
			p.MinProcesses = n
		case "process_idle_timeout":
			if err := durationArg(d, &p.ProcessIdleTimeout); err != nil {
				return err
			}
		case "max_processes":
			args := d.RemainingArgs()
			n, err := strconv.Atoi(strings.Join(args, " "))
			switch {
			case len(args) != 1:
				return d.ArgErr()
			case args[0] == "off":
				p.MaxProcesses = -1
			case err != nil || n <= 0:
				return d.Errf("max_processes: want a positive whole number or off, got %q", args[0])
			default:
				p.MaxProcesses = n
			}
		case "acquire_timeout":
			if err := durationArg(d, &p.AcquireTimeout); err != nil {
				return err
			}
		case "session_idle_timeout":
			if err := durationArg(d, &p.SessionIdleTimeout); err != nil {
				return err
			}
		case "health_check":
			args := d.RemainingArgs()
			switch {
			case len(args) != 1:
				return d.ArgErr()
			case args[0] == "off":
				p.HealthCheck = -1
			default:
				if err := parseDuration(d, "health_check", args[0], &p.HealthCheck); err != nil {
					return err
				}
			}
		case "health_check_timeout":
			if err := durationArg(d, &p.HealthCheckTimeout); err != nil {
				return err
			}
		case "request_timeout":
			if err := durationArg(d, &p.RequestTimeout); err != nil {
				return err
			}
		case "share_across_keys":
			if d.NextArg() {
				return d.ArgErr()
			}
			p.ShareAcrossKeys = true
		default:
			return d.Errf("unrecognized pool option %q", d.Val())
		}
	}
	return nil
}

func (c *CORSConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "allow_credentials":
			if d.NextArg() {
				return d.ArgErr()
			}
			c.AllowCredentials = true
		case "max_age":
			if err := durationArg(d, &c.MaxAge); err != nil {
				return err
			}
		case "allow_headers":
			headers := d.RemainingArgs()
			if len(headers) == 0 {
				return d.ArgErr()
			}
			c.AllowHeaders = append(c.AllowHeaders, headers...)
		default:
			return d.Errf("unrecognized cors option %q", d.Val())
		}
	}
	return nil
}

// sizeArg reads a size from 1B to 1GiB, with units (16MiB).
func sizeArg(d *caddyfile.Dispenser, dst *int) error {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	size, err := humanize.ParseBytes(s)
	if err != nil || size == 0 || size > 1<<30 {
		return d.Errf("%s: want a size from 1B to 1GiB, got %q", name, s)
	}
	*dst = int(size)
	return nil
}

func intArg(d *caddyfile.Dispenser) (int, error) {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return 0, d.ArgErr()
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, d.Errf("%s: want a whole number, got %q", name, s)
	}
	return n, nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	return parseDuration(d, name, s, dst)
}

func parseDuration(d *caddyfile.Dispenser, name, s string, dst *caddy.Duration) error {
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur <= 0 {
		return d.Errf("%s: want a positive duration, got %q", name, s)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// commandLine rebuilds the command line from the tokens of a command
// directive, for the bridge to split with shell rules. Caddy's lexer knows
// double quotes and backticks but not single quotes or backslashes: a token
// it quoted stays one word, and the others go in as written, so that shell
// quoting across them still works.
// commandBesideCaddyfile makes a relative program path (bin/server: a
// path, not a name to look up on the PATH) absolute against the
// Caddyfile's directory, so that a Caddyfile works from wherever Caddy
// runs, unless dir is set (the path is then relative to dir, where the
// child starts). A command with placeholders is left as it is.
func commandBesideCaddyfile(command, dir, caddyfileDir string) string {
	argv, err := bridge.SplitCommand(command)
	if err != nil || len(argv) == 0 || dir != "" || caddyfileDir == "" || strings.Contains(argv[0], "{") ||
		filepath.IsAbs(argv[0]) || !strings.ContainsAny(argv[0], `/\`) || strings.HasPrefix(argv[0], "~") {
		return command
	}
	abs, err := filepath.Abs(filepath.Join(caddyfileDir, argv[0]))
	if err != nil {
		return command
	}
	first, _, _ := strings.Cut(command, " ")
	if first != argv[0] { // quoted: quote the new path too
		return command
	}
	if strings.IndexFunc(abs, needsQuote) >= 0 {
		abs = "'" + strings.ReplaceAll(abs, "'", `'\''`) + "'"
	}
	return abs + command[len(first):]
}

func commandLine(tokens []caddyfile.Token) string {
	words := make([]string, len(tokens))
	for i, tok := range tokens {
		if !tok.Quoted() {
			words[i] = tok.Text
		} else if tok.Text != "" && strings.IndexFunc(tok.Text, needsQuote) < 0 {
			words[i] = tok.Text
		} else {
			words[i] = "'" + strings.ReplaceAll(tok.Text, "'", `'\''`) + "'"
		}
	}
	return strings.Join(words, " ")
}

func needsQuote(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return false
	}
	return !strings.ContainsRune("-_./:=@%+,{}", r)
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)

// envArgs reads "env <NAME> <value>" into env.
func envArgs(d *caddyfile.Dispenser, env *map[string]string) error {
	var key, val string
	if !d.AllArgs(&key, &val) {
		return d.ArgErr()
	}
	if *env == nil {
		*env = make(map[string]string)
	}
	(*env)[key] = val
	return nil
}
