package caddymodule

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
)

// optionError is a mistake in the options that no single option shows:
// Option names the option to point at.
type optionError struct {
	Option string
	Err    error
}

func (e *optionError) Error() string { return e.Err.Error() }

// checkOptions finds the mistakes that Validate reports for any config,
// and the Caddyfile adapter with the line of the option named: paths that
// are not absolute, unknown transports, two endpoints on one path, an
// unknown isolation and pool options of the other one, sizes beyond
// max_processes, CORS credentials for any origin, and a public_base_url
// that is no base URL.
func (h *Handler) checkOptions() error {
	for _, name := range []string{"streamable_path", "sse_path", "message_path", "ws_path", "health_path"} {
		path := map[string]string{
			"streamable_path": h.StreamablePath, "sse_path": h.SSEPath, "message_path": h.MessagePath,
			"ws_path": h.WSPath, "health_path": h.HealthPath,
		}[name]
		if path != "" && !strings.HasPrefix(path, "/") {
			return &optionError{name, fmt.Errorf("%s must start with /: %q", name, path)}
		}
	}
	if _, err := parseTransports(h.Transports); err != nil {
		return &optionError{"transports", err}
	}
	defaults := map[string]string{
		"streamable_path": bridge.DefaultStreamablePath, "sse_path": bridge.DefaultSSEPath,
		"message_path": bridge.DefaultMessagePath, "ws_path": bridge.DefaultWSPath, "health_path": bridge.DefaultHealthPath,
	}
	given := map[string]string{
		"streamable_path": h.StreamablePath, "sse_path": h.SSEPath, "message_path": h.MessagePath,
		"ws_path": h.WSPath, "health_path": h.HealthPath,
	}
	owner := map[string]string{}
	for _, name := range []string{"streamable_path", "sse_path", "message_path", "ws_path", "health_path"} {
		path := given[name]
		if path == "" {
			path = defaults[name]
		}
		if other, taken := owner[path]; taken {
			// Point at the one the config gave, if only one was given.
			option, first := name, other
			if given[name] == "" {
				option, first = other, name
			}
			return &optionError{option, fmt.Errorf("%s %s is also the %s: give each endpoint a path of its own", option, path, first)}
		}
		owner[path] = name
	}
	switch h.HealthDetails {
	case "", healthDetailsKey, healthDetailsOn, healthDetailsOff:
	default:
		return &optionError{"health_details", fmt.Errorf("health_details must be key, on or off, not %q", h.HealthDetails)}
	}
	if h.Node != "" && !strings.Contains(h.Node, "{") { // a placeholder is checked once replaced
		if err := bridge.CheckNode(h.Node); err != nil {
			return &optionError{"node", err}
		}
	}
	if h.APIKeyFile != "" && h.APIKeyStorage != "" {
		return &optionError{"api_key_storage", errors.New("api_key_file and api_key_storage: give one")}
	}
	if h.CORS != nil && h.CORS.AllowCredentials && slices.Contains(h.AllowedOrigins, "*") {
		return &optionError{"cors", fmt.Errorf("cors allow_credentials cannot be combined with allowed_origins *: name the origins")}
	}
	if p := h.Pool; p != nil {
		switch p.Isolation {
		case "", bridge.IsolationSession, bridge.IsolationShared:
		default:
			return &optionError{"isolation", fmt.Errorf("pool: isolation must be session or shared, not %q", p.Isolation)}
		}
		maxProcesses := p.MaxProcesses
		if maxProcesses == 0 {
			maxProcesses = bridge.DefaultMaxProcesses
		}
		if p.MinIdle != nil && maxProcesses > 0 && *p.MinIdle > maxProcesses {
			return &optionError{"min_idle", fmt.Errorf("pool: min_idle (%d) exceeds max_processes (%d)", *p.MinIdle, maxProcesses)}
		}
		if maxProcesses > 0 && p.MinProcesses > maxProcesses {
			return &optionError{"min_processes", fmt.Errorf("pool: min_processes (%d) exceeds max_processes (%d)", p.MinProcesses, maxProcesses)}
		}
		shared := p.Isolation == bridge.IsolationShared
		for _, o := range []struct {
			name      string
			set       bool
			forShared bool
		}{
			{"min_idle", p.MinIdle != nil, false},
			{"sessions_per_process", p.SessionsPerProcess != 0, true},
			{"min_processes", p.MinProcesses != 0, true},
			{"process_idle_timeout", p.ProcessIdleTimeout != 0, true},
		} {
			if o.set && o.forShared != shared {
				want := "session"
				if o.forShared {
					want = "shared"
				}
				return &optionError{o.name, fmt.Errorf("pool: %s applies only to isolation %s", o.name, want)}
			}
		}
	}
	if h.Name != "" {
		if err := checkServerName(h.Name); err != nil {
			return &optionError{"name", err}
		}
	}
	if err := h.checkAuthOptions(); err != nil {
		return err
	}
	if b := h.PublicBaseURL; b != "" && !strings.Contains(b, "{") {
		u, err := url.Parse(b)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return &optionError{"public_base_url", fmt.Errorf("public_base_url %q: want an absolute http(s) URL without query or fragment, such as https://example.com/tools", b)}
		}
	}
	return nil
}

// optionLines records where each option of a Caddyfile block was given,
// so that a mistake found after parsing can name its line.
type optionLines struct {
	file  string
	lines map[string]int
}

// note records the option d is on, and fails if a single-value option is
// given twice.
func (o *optionLines) note(d *caddyfile.Dispenser, repeatable ...string) error {
	name := d.Val()
	if o.lines == nil {
		o.lines = make(map[string]int)
	}
	o.file = d.File()
	if line, twice := o.lines[name]; twice && !slices.Contains(repeatable, name) {
		return d.Errf("%s is given twice (first on line %d): give it once", name, line)
	}
	o.lines[name] = d.Line()
	return nil
}

// errAt puts the line of the option err names on it.
func (o *optionLines) errAt(err error) error {
	oe, ok := err.(*optionError)
	if !ok {
		return err
	}
	if line, found := o.lines[oe.Option]; found {
		return fmt.Errorf("%w, at %s:%d", oe.Err, o.file, line) // as Dispenser.Errf puts it
	}
	return oe.Err
}

// checkAuthOptions checks OAuth, named keys and policies.
func (h *Handler) checkAuthOptions() error {
	if o := h.OAuth; o != nil {
		if o.Issuer == "" {
			return &optionError{"oauth", fmt.Errorf("oauth needs an issuer")}
		}
		if !strings.Contains(o.Issuer, "{") {
			if err := checkIssuer(o.Issuer); err != nil {
				return &optionError{"oauth", err}
			}
		}
		if (o.ClientID == "") != (o.ClientSecret == "") {
			return &optionError{"oauth", fmt.Errorf("oauth: client_id and client_secret go together (the credentials for introspection)")}
		}
		if o.IntrospectionURL != "" && o.ClientID == "" {
			return &optionError{"oauth", fmt.Errorf("oauth: introspection_url needs client_id and client_secret")}
		}
	}
	for name := range h.NamedAPIKeys {
		if name == "" || strings.ContainsAny(name, " \t\n") {
			return &optionError{"named_api_key", fmt.Errorf("named_api_key: the name %q must be a single word", name)}
		}
	}
	seen := map[string]bool{}
	for i := range h.Policies {
		p := &h.Policies[i]
		if err := p.validate(); err != nil {
			return &optionError{"policy", err}
		}
		if seen[p.Name] {
			return &optionError{"policy", fmt.Errorf("two policies are named %s", p.Name)}
		}
		seen[p.Name] = true
	}
	if len(h.Policies) > 0 && len(h.APIKeys) == 0 && len(h.NamedAPIKeys) == 0 && h.APIKeyFile == "" && h.APIKeyStorage == "" && h.OAuth == nil {
		return &optionError{"policy", fmt.Errorf("policies apply to authenticated principals: add named_api_key, api_key, api_key_file, api_key_storage or oauth")}
	}
	return nil
}
