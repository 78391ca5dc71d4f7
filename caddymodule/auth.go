package caddymodule

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
)

// apiKey is one accepted key, kept as its hash: comparisons then take the
// same time whatever the length of the key presented.
type apiKey struct {
	hash  [sha256.Size]byte
	name  string    // what logs and sessions know the key by
	until time.Time // when it stops being accepted; zero: never
	// credential names the key exactly (sessions record the one they last
	// used, so that a revoked key's sessions end), without revealing it.
	credential string
}

// acceptKey makes the apiKey of key, and records key among the known
// ones, so that no child inherits it from Caddy's environment.
func acceptKey(key, name string, until time.Time) apiKey {
	sum := sha256.Sum256([]byte(key))
	knownKeys.Store(sum, struct{}{})
	return apiKey{hash: sum, name: name, until: until, credential: hex.EncodeToString(sum[:8])}
}

// live reports whether the key is accepted at now.
func (k apiKey) live(now time.Time) bool { return k.until.IsZero() || now.Before(k.until) }

// knownKeys holds the hash of every API key this process has accepted,
// so that no child inherits one from Caddy's environment, whichever
// config read it and however.
var knownKeys sync.Map // [sha256.Size]byte → struct{}

// isKnownKey reports whether value is an API key the bridge accepts or
// has accepted: a child must not inherit it.
func isKnownKey(_, value string) bool {
	_, known := knownKeys.Load(sha256.Sum256([]byte(value)))
	return known
}

// keyName names a key configured inline by a short hash of it: stable when
// the config is reordered, and no use to anyone who reads logs.
func keyName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "key:" + hex.EncodeToString(sum[:4])
}

// authenticate returns the name of the key the request presents, and the
// key itself (empty when there is none, to tell a wrong key from a missing
// one). It checks every key, so that the time taken does not tell which
// matched. fromQuery says that the key came in the URL.
func (h *Handler) authenticate(r *http.Request) (match apiKey, key string, fromQuery, ok bool) {
	key, fromQuery = presentedKey(r, h.APIKeyQuery)
	if key == "" {
		return apiKey{}, "", false, false
	}
	sum := sha256.Sum256([]byte(key))
	now := time.Now()
	for _, keys := range [][]apiKey{h.keys, h.keyFile.current(h.logger)} {
		for i := range keys {
			if subtle.ConstantTimeCompare(sum[:], keys[i].hash[:]) == 1 && keys[i].live(now) {
				match, ok = keys[i], true
			}
		}
	}
	return match, key, fromQuery, ok
}

// liveCredentials are the credentials of the keys accepted now.
func (h *Handler) liveCredentials() map[string]bool {
	live := make(map[string]bool)
	now := time.Now()
	for _, keys := range [][]apiKey{h.keys, h.keyFile.current(h.logger)} {
		for _, k := range keys {
			if k.live(now) {
				live[k.credential] = true
			}
		}
	}
	return live
}

// keyFile holds the keys of an api_key_file (or api_key_storage), and
// reads the file again when it changes, so that a rotation applies without a config reload (which
// Caddy skips when the config itself did not change).
type keyFile struct {
	store   keyStore
	path    string // a path, or a storage key
	shown   string // names the file in principals and logs
	keys    atomic.Pointer[[]apiKey]
	checked atomic.Int64 // unix nanoseconds of the last look at the file
	mu      sync.Mutex
	stamp   time.Time // modification time of what keys holds
	pending string    // a new key for a file that does not exist yet
}

// pendingKeys holds the new key of a key file that does not exist yet,
// until it is written, so that every handler of the file takes the same.
var pendingKeys sync.Map // keyFile.shown → key

// keyFileCheckInterval is how often the file is looked at, at most.
const keyFileCheckInterval = time.Second

// load reads the file. One that does not exist yet gets a new key, which
// create writes once the config has started: caddy validate and caddy
// adapt write no file.
func (k *keyFile) load(logger *zap.Logger) error {
	entries, err := readKeyFile(k.store, k.path, time.Now())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Every handler of the file (several servers may share one) takes
		// the same new key, whichever of them writes it.
		pending, _ := pendingKeys.LoadOrStore(k.shown, newAPIKey())
		k.pending = pending.(string)
		entries = []keyFileEntry{{key: k.pending}}
	case err != nil:
		return err
	case k.store == fileKeys{}: // storage has no permissions to check
		warnIfReadable(k.path, logger)
	}
	k.set(entries)
	k.stamp = keyFileStamp(k.store, k.path)
	k.checked.Store(time.Now().UnixNano())
	return nil
}

// create writes the new key that load made for a file that did not exist,
// unless the file exists by now (another instance sharing the storage may
// have written it: the lock keeps two from writing keys of their own);
// then its keys apply at once.
func (k *keyFile) create(logger *zap.Logger) {
	if k == nil || k.pending == "" {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	defer pendingKeys.Delete(k.shown)
	unlock, err := k.store.lock(k.path)
	if err != nil {
		logger.Error("cannot lock the API key file to create it; the key in force is in memory only", zap.String("file", k.shown), zap.Error(err))
		return
	}
	defer unlock()
	if stamp := keyFileStamp(k.store, k.path); !stamp.IsZero() {
		if entries, err := readKeyFile(k.store, k.path, time.Now()); err == nil {
			k.set(entries)
			k.stamp = stamp
		}
		return
	}
	if err := writeKeyFile(k.store, k.path, []keyFileEntry{{key: k.pending}}); err != nil {
		logger.Error("cannot write the API key file; the key in force is in memory only", zap.String("file", k.shown), zap.Error(err))
		return
	}
	k.stamp = keyFileStamp(k.store, k.path)
	logger.Info("generated a new API key; show it with `caddy mcp-bridge key show`", zap.String("file", k.shown))
}

// keyFileStamp is when the key file, or its file of earlier keys, last
// changed.
func keyFileStamp(st keyStore, path string) time.Time {
	var latest time.Time
	for _, p := range []string{path, previousKeysPath(path)} {
		if m := st.modified(p); m.After(latest) {
			latest = m
		}
	}
	return latest
}

func (k *keyFile) set(entries []keyFileEntry) {
	keys := make([]apiKey, len(entries))
	for i, e := range entries {
		// One name for all of the file's keys: sessions survive a rotation.
		keys[i] = acceptKey(e.key, k.shown, e.until)
	}
	k.keys.Store(&keys)
}

// current returns the file's keys, reading the file again if it changed.
// On a read error the keys already loaded stay in force.
func (k *keyFile) current(logger *zap.Logger) []apiKey {
	if k == nil {
		return nil
	}
	now := time.Now()
	if last := k.checked.Load(); now.UnixNano()-last > int64(keyFileCheckInterval) && k.checked.CompareAndSwap(last, now.UnixNano()) {
		k.mu.Lock()
		if stamp := keyFileStamp(k.store, k.path); !stamp.IsZero() && !stamp.Equal(k.stamp) {
			if entries, err := readKeyFile(k.store, k.path, now); err == nil {
				k.set(entries)
				k.stamp = stamp
				logger.Info("API key file changed; its keys now apply", zap.String("file", k.shown))
			} else {
				logger.Error("API key file changed but cannot be read; keeping its previous keys", zap.Error(err))
			}
		}
		k.mu.Unlock()
	}
	return *k.keys.Load()
}

// presentedKey takes the key from `Authorization: Bearer`, `X-API-Key`,
// or, when allowed, the api_key query parameter, which it then removes
// from the URL so that nothing further down sees or logs it.
func presentedKey(r *http.Request, allowQuery bool) (key string, fromQuery bool) {
	if scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(token), false
	}
	if key := r.Header.Get("X-API-Key"); key != "" {
		return key, false
	}
	if key := subprotocolKey(r.Header); key != "" {
		return key, false
	}
	if !allowQuery {
		return "", false
	}
	q := r.URL.Query()
	key = q.Get("api_key")
	if key != "" {
		q.Del("api_key")
		r.URL.RawQuery = q.Encode()
		r.RequestURI = r.URL.RequestURI()
	}
	return key, key != ""
}

// bearerSubprotocol starts a WebSocket subprotocol that carries a key, as
// Kubernetes has clients that cannot set headers (browsers, the
// TypeScript SDK's WebSocket transport) send their bearer token: the rest
// is the key in unpadded base64url. The server never selects it.
const bearerSubprotocol = "base64url.bearer.authorization.k8s.io."

// subprotocolKey is the key a WebSocket handshake offers as a subprotocol.
func subprotocolKey(h http.Header) string {
	for _, p := range subprotocols(h) {
		if enc, ok := strings.CutPrefix(p, bearerSubprotocol); ok {
			if key, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(enc, "=")); err == nil {
				return string(key)
			}
		}
	}
	return ""
}

func subprotocols(h http.Header) []string {
	var out []string
	for _, v := range h.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// stripCredentials removes the client's credentials from the request, so
// that nothing below the edge, and never the child, sees them.
func stripCredentials(r *http.Request) {
	r.Header.Del("Authorization")
	r.Header.Del("X-API-Key")
	r.Header.Del("Cookie")
	if protocols := subprotocols(r.Header); len(protocols) > 0 {
		kept := slices.DeleteFunc(protocols, func(p string) bool { return strings.HasPrefix(p, bearerSubprotocol) })
		r.Header.Del("Sec-WebSocket-Protocol")
		if len(kept) > 0 {
			r.Header.Set("Sec-WebSocket-Protocol", strings.Join(kept, ", "))
		}
	}
}

// A caller is who a request comes from, as authentication found: a
// named API key, or an OAuth access token's subject and client.
type caller struct {
	// principal names the caller to the bridge, whose sessions belong to
	// it, and to status and logs: "key:alice" for a named key, the hash
	// name of an inline key, "file:<path>" for a key file's keys, and
	// for OAuth the subject and client, quoted.
	principal string
	// user names whom rate limits and quotas count: the principal, but
	// for OAuth the subject alone, so that a client registered anew does
	// not bring its user fresh limits.
	user    string
	keyName string // the key's name, for an API key
	subject string // the token's subject, for OAuth
	client  string // the token's client, for OAuth
	scopes  []string
	// credential names the very key presented, so that its revocation
	// ends the sessions that used it; empty for OAuth, whose tokens end
	// by expiring.
	credential string
	fromQuery  bool      // the key came in the URL
	key        string    // the key itself, when it came in the URL
	expires    time.Time // when the token expires; zero for a key
}

// An authFailure is why a request was refused before the bridge.
type authFailure struct {
	status      int    // 401, 403 or 503
	errorCode   string // RFC 6750 error code: invalid_token, insufficient_scope; none for a missing credential
	description string // for the client and the log
}

// requiresAuth reports whether requests need a key or a token.
func (h *Handler) requiresAuth() bool {
	return len(h.keys) > 0 || h.keyFile != nil || h.tokens != nil
}

// identify authenticates a request: an API key first, then, when OAuth is
// configured, an access token.
func (h *Handler) identify(r *http.Request) (caller, *authFailure) {
	if h.keyFile != nil || len(h.keys) > 0 {
		match, key, fromQuery, ok := h.authenticate(r)
		if ok {
			c := caller{principal: match.name, user: match.name, keyName: strings.TrimPrefix(match.name, "key:"), credential: match.credential, fromQuery: fromQuery}
			if fromQuery {
				c.key = key
			}
			return c, nil
		}
		if h.tokens == nil {
			if key == "" {
				return caller{}, &authFailure{status: http.StatusUnauthorized, description: "missing API key"}
			}
			return caller{}, &authFailure{status: http.StatusUnauthorized, errorCode: "invalid_token", description: "wrong API key"}
		}
	}
	token, _ := presentedKey(r, false)
	if token == "" {
		return caller{}, &authFailure{status: http.StatusUnauthorized, description: "missing access token"}
	}
	info, err := h.tokens.validate(r.Context(), token)
	switch {
	case errors.Is(err, errAuthServer):
		h.logger.Error("cannot validate an access token", zap.Error(err))
		return caller{}, &authFailure{status: http.StatusServiceUnavailable, description: "the access token cannot be checked now; retry"}
	case err != nil:
		return caller{}, &authFailure{status: http.StatusUnauthorized, errorCode: "invalid_token", description: "invalid access token: " + err.Error()}
	case !h.audienceAccepted(r, info.Audience):
		description := "the access token is not for this resource, " + h.resourceFor(r, h.endpointOf(r))
		if h.OAuth.Audience == "" && !h.ownHost(r) {
			description = "the request's Host is not this server's own address, so no token passes unless oauth audience names the resource"
		}
		return caller{}, &authFailure{status: http.StatusUnauthorized, errorCode: "invalid_token", description: description}
	}
	for _, need := range h.OAuth.Scopes {
		if !slices.Contains(info.Scopes, need) {
			return caller{}, &authFailure{status: http.StatusForbidden, errorCode: "insufficient_scope", description: "the access token lacks the scope " + strconv.Quote(need)}
		}
	}
	return caller{
		principal: "oauth:" + strconv.Quote(info.Subject) + " via " + strconv.Quote(info.Client),
		user:      "oauth:" + strconv.Quote(info.Subject),
		subject:   info.Subject,
		client:    info.Client,
		scopes:    info.Scopes,
		expires:   info.Expiry,
	}, nil
}

// refuse answers a request that authentication refused.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, f *authFailure) {
	switch {
	case h.OAuth != nil && f.status != http.StatusServiceUnavailable:
		w.Header().Set("WWW-Authenticate", h.challenge(r, f.errorCode, f.description))
	case h.ResourceMetadata != "":
		w.Header().Set("WWW-Authenticate", `Bearer resource_metadata="`+h.ResourceMetadata+`"`)
	case f.status == http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", "Bearer")
	}
	if f.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	h.logger.Info("refused a request: "+f.description, zap.String("remote_addr", r.RemoteAddr), zap.String("path", r.URL.Path))
	code := bridge.CodeUnauthorized
	if f.status == http.StatusServiceUnavailable {
		code = bridge.CodeServerBusy
	}
	bridge.WriteError(w, f.status, code, strings.ToLower(http.StatusText(f.status))+": "+f.description)
}

// failureReason labels an authentication failure in metrics.
func failureReason(f *authFailure) string {
	switch {
	case f.status == http.StatusServiceUnavailable:
		return "auth_server_unavailable"
	case f.errorCode != "":
		return f.errorCode
	}
	return "missing_credential"
}

// provisionAuth sets up OAuth and the policies; a policy that gives its
// principals an environment gets a pool of children of its own.
func (h *Handler) provisionAuth(ctx caddy.Context, cfg bridge.BackendConfig, transports bridge.Transports) error {
	repl := caddy.NewReplacer()
	if h.OAuth != nil {
		oc := *h.OAuth
		for _, f := range []*string{&oc.Issuer, &oc.Audience, &oc.IntrospectionURL, &oc.ClientID, &oc.ClientSecret} {
			*f = repl.ReplaceAll(*f, "")
		}
		h.OAuth = &oc
		v, err := newTokenValidator(oc)
		if err != nil {
			return err
		}
		h.tokens = v
	}
	quotas := false
	for _, pc := range h.Policies {
		p := newPolicy(pc)
		if len(pc.Env) > 0 {
			own := cfg
			own.Process.Env = mergeEnv(cfg.Process.Env, pc.envPairs(func(v string) string { return repl.ReplaceAll(v, "") }))
			own.Pool.ShareAcrossKeys = false
			if own.Pool.MinIdle == nil {
				// No spares with one principal's credentials waiting for
				// a session that may never come.
				own.Pool.MinIdle = new(int)
			}
			pl, err := h.provisionPool(ctx, own, transports)
			if err != nil {
				return fmt.Errorf("policy %s: %v", pc.Name, err)
			}
			p.pool = pl
		}
		quotas = quotas || pc.Quota != nil
		h.policies = append(h.policies, p)
	}
	h.warnIfPoliciesOpen()
	if quotas {
		h.storage = ctx.Storage()
		quotaFlusher.hold()
		h.holdsQuotas = true
	}
	return nil
}

// mergeEnv returns base with over's NAME=value pairs set, sorted.
func mergeEnv(base, over []string) []string {
	merged := make(map[string]string, len(base)+len(over))
	for _, list := range [][]string{base, over} {
		for _, kv := range list {
			name, _, _ := strings.Cut(kv, "=")
			merged[name] = kv
		}
	}
	return slices.Sorted(maps.Values(merged))
}

// quotaStorage is where quota counts are kept.
func (h *Handler) quotaStorage() certmagic.Storage { return h.storage }

// warnIfPoliciesOpen logs a warning when policies restrict some
// principals but none applies to the rest, who then may do everything:
// a principal escapes a policy matched by scope or client just by not
// asking for that scope, or registering another client.
func (h *Handler) warnIfPoliciesOpen() {
	restricts := false
	for _, p := range h.policies {
		if p.Match == nil {
			return // a catch-all: everyone is under some policy
		}
		restricts = restricts || p.Tools != nil || p.Prompts != nil || p.Resources != nil || p.Rate != nil || len(p.ToolRates) > 0 || p.Quota != nil
	}
	if restricts {
		h.logger.Warn("policies restrict the principals they match, but a principal no policy matches may do everything; " +
			"end with a policy without match to restrict everyone else, and match the privileged by key or subject")
	}
}
