// Package caddymodule registers the mcp_bridge HTTP handler: Caddy glue
// around the bridge package, which does the work, and who may use it:
// API keys, OAuth access tokens and per-principal policies.
//
// Locks. A goroutine that holds several took them in this order:
//
//	quotaCounter.mu → flusher.mu
//	usages' lock → quotaCounter.mu (its sweep asks counters if they are
//	dirty, with TryLock: it never waits for one reading storage)
//
// All others are leaves (principalUsage.mu, tokenCache.mu, keyFile.mu,
// siteHandlers' lock, configNames' lock, connectOAuth.mu). None is held
// across I/O to a client or a child. Some are held across I/O elsewhere,
// bounded in time: keySet.mu and tokenValidator.metaMu across a request to
// the authorization server (10 s at most), so that one fetch serves every
// request waiting for it; a quotaCounter's mu across a read of Caddy's
// storage (10 s at most), on a principal's first call of a window, so that
// no call is counted before the stored count is known; keyFile.mu across
// a look at the key file (10 s at most per operation on Caddy's storage),
// so that one look serves every request.
package caddymodule
