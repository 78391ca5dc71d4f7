package caddymodule

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
)

// PolicyConfig says what the principals it matches may do: which tools,
// prompts and resources they see and use, how often they may call, how
// many calls they have in a day or a month, and with which environment
// their children run. The first policy that matches a request applies;
// a principal no policy matches may do everything.
type PolicyConfig struct {
	// Name names the policy in logs, metrics, the admin API and the
	// storage keys of its quota counters.
	Name string `json:"name"`

	// Match says whom the policy is for. Without it, it is for everyone.
	Match *PolicyMatch `json:"match,omitempty"`

	// Tools says which tools the principal sees in tools/list and may
	// call; a call to any other gets the error a server gives for a tool
	// it does not have.
	Tools *ListRule `json:"tools,omitempty"`

	// Prompts says which prompts the principal sees and may get.
	Prompts *ListRule `json:"prompts,omitempty"`

	// Resources says which resources (by URI) and resource templates (by
	// URI template) the principal sees and may read or subscribe to.
	Resources *ListRule `json:"resources,omitempty"`

	// Rate limits the principal's requests (every JSON-RPC request,
	// initialize included).
	Rate *RateLimit `json:"rate,omitempty"`

	// ToolRates limits the principal's calls of each named tool, on top
	// of Rate.
	ToolRates map[string]RateLimit `json:"tool_rates,omitempty"`

	// Quota caps the principal's tool calls per calendar day or month
	// (UTC). The counts are kept in Caddy's storage (the `storage` global
	// option), so that a restart, or another Caddy instance on the same
	// storage, carries them on.
	Quota *QuotaConfig `json:"quota,omitempty"`

	// Env holds environment variables set for the children of the
	// principals' sessions, on top of the handler's env: a principal's own
	// credentials for the service the MCP server calls. Their sessions get
	// a pool of children of their own, in which a child never carries
	// another principal's session (in shared isolation, a shared child
	// carries one principal's sessions only). Values may use placeholders
	// such as {env.ALICE_TOKEN}.
	Env map[string]string `json:"env,omitempty"`
}

// PolicyMatch selects principals. A request matches when any list holds
// its principal's key name, token subject, client id or one of its
// token's scopes.
type PolicyMatch struct {
	// Keys are names of API keys (named_api_keys).
	Keys []string `json:"keys,omitempty"`
	// Subjects are OAuth token subjects (the sub claim).
	Subjects []string `json:"subjects,omitempty"`
	// Clients are OAuth client ids (client_id, or azp).
	Clients []string `json:"clients,omitempty"`
	// Scopes are OAuth scopes.
	Scopes []string `json:"scopes,omitempty"`
}

// ListRule allows or denies items by name (a resource by its URI), with
// patterns in which * stands for any run of characters, / included
// (search_*, *_admin, file:///public/*); nothing else is special. An item
// is shown when Allow is empty or one of its patterns matches, and none of
// Deny's does.
type ListRule struct {
	// Allow lists the patterns of the items shown; empty: all.
	Allow []string `json:"allow,omitempty"`
	// Deny lists the patterns of the items hidden, whatever Allow says.
	Deny []string `json:"deny,omitempty"`
}

// RateLimit is a token bucket: Requests per Per on average, with bursts
// of up to Burst.
type RateLimit struct {
	// Requests is how many requests the bucket refills per Per.
	Requests int `json:"requests"`
	// Per is the period of Requests. Default: 1s.
	Per caddy.Duration `json:"per,omitempty"`
	// Burst is how many requests may come at once. Default: Requests.
	Burst int `json:"burst,omitempty"`
}

// QuotaConfig caps calls in a calendar window.
type QuotaConfig struct {
	// Calls is how many tools/call requests the window allows.
	Calls int64 `json:"calls"`
	// Per is the window: "day" or "month" (UTC).
	Per string `json:"per"`
}

// validName is what a policy's (or a server's) name may look like: it goes
// into storage keys, URL paths and metric labels.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Error codes of the gate's refusals, in the range JSON-RPC leaves to
// servers.
const (
	codeRateLimited     = -32005
	codeQuotaExhausted  = -32006
	codeResourceUnknown = -32002 // the MCP spec's "resource not found"
)

// policy is a PolicyConfig ready for requests.
type policy struct {
	PolicyConfig
	pool *pool // the children of principals with env; nil: the handler's
	// usageKey names the policy and its limits among usages: a reload that
	// changes its limits starts its principals' buckets afresh.
	usageKey string
}

func newPolicy(pc PolicyConfig) *policy {
	return &policy{PolicyConfig: pc, usageKey: fmt.Sprintf("%s\x00%v\x00%v\x00%v", pc.Name, pc.Rate, pc.ToolRates, pc.Quota)}
}

// validate checks a policy's config.
func (p *PolicyConfig) validate() error {
	if !validName.MatchString(p.Name) {
		return fmt.Errorf("policy name %q: use letters, digits, '.', '_' and '-' (it names the policy's storage keys)", p.Name)
	}
	for _, rule := range []*ListRule{p.Tools, p.Prompts, p.Resources} {
		if rule != nil && slices.Contains(append(slices.Clone(rule.Allow), rule.Deny...), "") {
			return fmt.Errorf("policy %s: an empty pattern", p.Name)
		}
	}
	limits := map[string]RateLimit{}
	if p.Rate != nil {
		limits["rate"] = *p.Rate
	}
	for tool, l := range p.ToolRates {
		limits["tool_rate "+tool] = l
	}
	for what, l := range limits {
		if l.Requests <= 0 || l.Per < 0 || l.Burst < 0 {
			return fmt.Errorf("policy %s: %s needs a positive number of requests per period", p.Name, what)
		}
	}
	if q := p.Quota; q != nil && (q.Calls <= 0 || q.Per != "day" && q.Per != "month") {
		return fmt.Errorf("policy %s: quota needs a positive number of calls per day or month", p.Name)
	}
	return nil
}

// matches reports whether the policy is for c.
func (p *policy) matches(c *caller) bool {
	m := p.Match
	if m == nil {
		return true
	}
	return c.keyName != "" && slices.Contains(m.Keys, c.keyName) ||
		c.subject != "" && slices.Contains(m.Subjects, c.subject) ||
		c.client != "" && slices.Contains(m.Clients, c.client) ||
		slices.ContainsFunc(c.scopes, func(s string) bool { return slices.Contains(m.Scopes, s) })
}

// shows reports whether the rule lets the principal see name.
func (rule *ListRule) shows(name string) bool {
	if rule == nil {
		return true
	}
	match := func(pattern string) bool { return globMatch(pattern, name) }
	return (len(rule.Allow) == 0 || slices.ContainsFunc(rule.Allow, match)) && !slices.ContainsFunc(rule.Deny, match)
}

// globMatch reports whether name matches pattern, in which each * stands
// for any run of characters. After a mismatch it backtracks to the last *
// only: linear in practice, with no recursion.
func globMatch(pattern, name string) bool {
	p, n := 0, 0
	star, mark := -1, 0
	for n < len(name) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, n
			p++
		case p < len(pattern) && pattern[p] == name[n]:
			p++
			n++
		case star >= 0:
			p, mark = star+1, mark+1
			n = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// policyFor returns the first policy that is for c, or nil.
func (h *Handler) policyFor(c *caller) *policy {
	for _, p := range h.policies {
		if p.matches(c) {
			return p
		}
	}
	return nil
}

// policyGate is a policy applied to one principal on one site: the
// bridge.Gate its requests pass.
type policyGate struct {
	h         *Handler
	p         *policy // nil: no policy, only the token's expiry applies
	principal string
	usage     *principalUsage // nil without a policy
	expires   time.Time       // the token's expiry; zero for a key
}

var _ bridge.Gate = (*policyGate)(nil)

// gateFor returns the gate of c's requests under p, nil when nothing
// applies (no policy, and a key, which does not expire).
func (h *Handler) gateFor(p *policy, c *caller, site string) bridge.Gate {
	g := &policyGate{h: h, p: p, principal: c.principal, expires: c.expires}
	switch {
	case p != nil:
		g.usage = usageOf(p, h.serverName, site, c.user)
	case c.expires.IsZero():
		return nil
	}
	return g
}

// Shown returns the filter of a list that the policy restricts.
func (g *policyGate) Shown(list string) func(string) bool {
	if g.p == nil {
		return nil
	}
	var rule *ListRule
	switch list {
	case "tools":
		rule = g.p.Tools
	case "prompts":
		rule = g.p.Prompts
	case "resources", "resourceTemplates":
		rule = g.p.Resources
	}
	if rule == nil {
		return nil
	}
	return rule.shows
}

// Admit lets a request through, or says why not: a hidden tool, prompt
// or resource, then the rate limits, then the quota (only calls that
// would reach the server count against it).
func (g *policyGate) Admit(method, name string) *bridge.Refusal {
	p := g.p
	now := time.Now()
	if !g.expires.IsZero() && now.After(g.expires.Add(clockSkew)) {
		// A WebSocket outlives the token of its handshake.
		return g.deny(method, name, "token_expired", &bridge.Refusal{Code: bridge.CodeUnauthorized,
			Message: "the access token this connection opened with has expired: connect again with a new one"})
	}
	if p == nil {
		return nil
	}
	g.usage.lastUsed.Store(now.UnixNano())
	hidden := func(reason string, code int, message string) *bridge.Refusal {
		return g.deny(method, name, reason, &bridge.Refusal{Code: code, Message: message})
	}
	switch method {
	case "tools/call":
		if !p.Tools.shows(name) {
			return hidden("tool_hidden", -32602, "Unknown tool: "+name)
		}
	case "prompts/get":
		if !p.Prompts.shows(name) {
			return hidden("prompt_hidden", -32602, "Unknown prompt: "+name)
		}
	case "resources/read", "resources/subscribe", "resources/unsubscribe":
		if !p.Resources.shows(name) {
			return hidden("resource_hidden", codeResourceUnknown, "Resource not found: "+name)
		}
	case "completion/complete":
		if prompt, ok := strings.CutPrefix(name, "prompt:"); ok && !p.Prompts.shows(prompt) {
			return hidden("prompt_hidden", -32602, "Unknown prompt: "+prompt)
		}
		if template, ok := strings.CutPrefix(name, "resource:"); ok && !p.Resources.shows(template) {
			return hidden("resource_hidden", codeResourceUnknown, "Resource not found: "+template)
		}
	}
	if wait, limited := g.usage.rate.take(now); limited {
		return g.deny(method, name, "rate_limit", &bridge.Refusal{
			Code: codeRateLimited, Status: http.StatusTooManyRequests, RetryAfter: wait,
			Message: fmt.Sprintf("rate limit of policy %s reached (%s); retry in %s", p.Name, p.Rate, roundUp(wait)),
		})
	}
	if method == "tools/call" {
		if limit, ok := p.ToolRates[name]; ok {
			if wait, limited := g.usage.toolRate(name, limit).take(now); limited {
				return g.deny(method, name, "tool_rate_limit", &bridge.Refusal{
					Code: codeRateLimited, Status: http.StatusTooManyRequests, RetryAfter: wait,
					Message: fmt.Sprintf("rate limit of policy %s for tool %q reached (%s); retry in %s", p.Name, name, limit, roundUp(wait)),
				})
			}
		}
		if q := g.usage.quota; q != nil {
			if resets, exhausted := q.take(now, g.h.quotaStorage(), g.h.logger); exhausted {
				return g.deny(method, name, "quota", &bridge.Refusal{
					Code: codeQuotaExhausted, Status: http.StatusTooManyRequests, RetryAfter: resets.Sub(now),
					Message: fmt.Sprintf("quota of policy %s used up: %d tool calls per %s; it resets at %s", p.Name, p.Quota.Calls, p.Quota.Per, resets.Format(time.RFC3339)),
				})
			}
		}
	}
	policyDecisions.WithLabelValues(p.Name, "allowed", "ok").Inc()
	return nil
}

// deny counts and logs a refusal.
func (g *policyGate) deny(method, name, reason string, r *bridge.Refusal) *bridge.Refusal {
	policy := ""
	if g.p != nil {
		policy = g.p.Name
	}
	policyDecisions.WithLabelValues(policy, "denied", reason).Inc()
	g.h.logger.Info("denied a request by policy",
		zap.String("policy", policy), zap.String("principal", g.principal),
		zap.String("method", method), zap.String("name", name), zap.String("reason", reason))
	return r
}

// roundUp is a wait as clients are told it: whole seconds, at least one.
func roundUp(d time.Duration) time.Duration {
	return max(d.Round(time.Second), time.Second)
}

// String is a rate as the config gives it.
func (l RateLimit) String() string {
	s := strconv.Itoa(l.Requests) + "/" + time.Duration(l.per()).String()
	if l.Burst > 0 {
		s += " burst " + strconv.Itoa(l.Burst)
	}
	return s
}

func (l RateLimit) per() time.Duration {
	if l.Per <= 0 {
		return time.Second
	}
	return time.Duration(l.Per)
}

// envKeys lists a policy's env as sorted NAME=value pairs, placeholders
// replaced.
func (p *PolicyConfig) envPairs(replace func(string) string) []string {
	env := make([]string, 0, len(p.Env))
	for k, v := range p.Env {
		env = append(env, k+"="+replace(v))
	}
	slices.Sort(env)
	return env
}
