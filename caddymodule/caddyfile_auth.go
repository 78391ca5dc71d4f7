package caddymodule

import (
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// unmarshalCaddyfile reads an oauth block:
//
//	oauth {
//		issuer <url>
//		audience <url>
//		scopes <scope...>
//		introspection_url <url>
//		client_id <id>
//		client_secret <secret>
//		resource_name <name>
//	}
func (o *OAuthConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	var lines optionLines
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := lines.note(d, "scopes"); err != nil {
			return err
		}
		var field *string
		switch d.Val() {
		case "issuer":
			field = &o.Issuer
		case "audience":
			field = &o.Audience
		case "introspection_url":
			field = &o.IntrospectionURL
		case "client_id":
			field = &o.ClientID
		case "client_secret":
			field = &o.ClientSecret
		case "resource_name":
			field = &o.ResourceName
		case "scopes":
			scopes := d.RemainingArgs()
			if len(scopes) == 0 {
				return d.ArgErr()
			}
			o.Scopes = append(o.Scopes, scopes...)
			continue
		default:
			return d.Errf("unknown oauth option %q", d.Val())
		}
		if !d.AllArgs(field) {
			return d.ArgErr()
		}
	}
	if o.Issuer == "" {
		return d.Err("oauth needs an issuer")
	}
	return nil
}

// unmarshalCaddyfile reads a policy block:
//
//	policy <name> {
//		match key|subject|client|scope <value...>
//		tools|prompts|resources allow|deny <pattern...>
//		rate <n>/<period> [burst <n>]
//		tool_rate <tool> <n>/<period> [burst <n>]
//		quota <n>/day|month
//		env <NAME> <value>
//	}
func (p *PolicyConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.Err("policy needs a name: policy <name> { ... }")
	}
	p.Name = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	var lines optionLines
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := lines.note(d, "match", "tools", "prompts", "resources", "tool_rate", "env"); err != nil {
			return err
		}
		switch option := d.Val(); option {
		case "match":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.ArgErr()
			}
			if p.Match == nil {
				p.Match = new(PolicyMatch)
			}
			lists := map[string]*[]string{"key": &p.Match.Keys, "subject": &p.Match.Subjects, "client": &p.Match.Clients, "scope": &p.Match.Scopes}
			list, ok := lists[args[0]]
			if !ok {
				return d.Errf("match %s: want key, subject, client or scope", args[0])
			}
			*list = append(*list, args[1:]...)
		case "tools", "prompts", "resources":
			args := d.RemainingArgs()
			if len(args) < 2 || args[0] != "allow" && args[0] != "deny" {
				return d.Errf("%s: want %s allow|deny <pattern...>", option, option)
			}
			rule := map[string]**ListRule{"tools": &p.Tools, "prompts": &p.Prompts, "resources": &p.Resources}[option]
			if *rule == nil {
				*rule = new(ListRule)
			}
			if args[0] == "allow" {
				(*rule).Allow = append((*rule).Allow, args[1:]...)
			} else {
				(*rule).Deny = append((*rule).Deny, args[1:]...)
			}
		case "rate":
			l, err := rateArgs(d, d.RemainingArgs())
			if err != nil {
				return err
			}
			p.Rate = &l
		case "tool_rate":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.ArgErr()
			}
			l, err := rateArgs(d, args[1:])
			if err != nil {
				return err
			}
			if p.ToolRates == nil {
				p.ToolRates = make(map[string]RateLimit)
			}
			p.ToolRates[args[0]] = l
		case "quota":
			var spec string
			if !d.AllArgs(&spec) {
				return d.ArgErr()
			}
			calls, per, ok := strings.Cut(spec, "/")
			n, err := strconv.ParseInt(calls, 10, 64)
			if !ok || err != nil || n <= 0 || per != "day" && per != "month" {
				return d.Errf("quota %q: want <calls>/day or <calls>/month", spec)
			}
			p.Quota = &QuotaConfig{Calls: n, Per: per}
		case "env":
			if err := envArgs(d, &p.Env); err != nil {
				return err
			}
		default:
			return d.Errf("unknown policy option %q", option)
		}
	}
	return nil
}

// rateArgs reads "<n>/<period> [burst <n>]"; the period is s, m, h, or
// a duration such as 10s.
func rateArgs(d *caddyfile.Dispenser, args []string) (RateLimit, error) {
	if len(args) != 1 && len(args) != 3 || len(args) == 3 && args[1] != "burst" {
		return RateLimit{}, d.Errf("want <n>/<period> [burst <n>], such as 10/s or 100/1m burst 20")
	}
	count, period, ok := strings.Cut(args[0], "/")
	n, err := strconv.Atoi(count)
	if !ok || err != nil || n <= 0 {
		return RateLimit{}, d.Errf("rate %q: want <n>/<period>, such as 10/s", args[0])
	}
	if period == "s" || period == "m" || period == "h" {
		period = "1" + period
	}
	per, err := caddy.ParseDuration(period)
	if err != nil || per <= 0 {
		return RateLimit{}, d.Errf("rate %q: bad period %q", args[0], period)
	}
	l := RateLimit{Requests: n, Per: caddy.Duration(per)}
	if len(args) == 3 {
		if l.Burst, err = strconv.Atoi(args[2]); err != nil || l.Burst <= 0 {
			return RateLimit{}, d.Errf("burst %q: want a positive number", args[2])
		}
	}
	if time.Duration(l.Per) == time.Second {
		l.Per = 0 // the default, spelled out
	}
	return l, nil
}
