package caddymodule

import (
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Revocation: once a key is no longer accepted (a reload removed it, the
// key file no longer lists it, or its overlap after a rotation ended), the
// sessions last used with it end, and with them their SSE streams and
// WebSockets. Every handler of a site (during a reload, the old and the
// new one) checks the site's sessions twice a second against the keys
// any of them accepts.
const revocationInterval = 500 * time.Millisecond

// siteHandlers are the handlers serving each site (see siteOf), whose keys
// together say which credentials the site accepts.
var siteHandlers = struct {
	sync.Mutex
	bySite map[string]map[*Handler]struct{}
}{bySite: make(map[string]map[*Handler]struct{})}

// watchRevocations starts ending the sessions of revoked keys on the
// sites h serves, until Cleanup stops it.
func (h *Handler) watchRevocations(servers map[*caddyhttp.Server]string) {
	if h.revocations != nil || len(h.keys) == 0 && h.keyFile == nil {
		return // already watching; or a site without keys, whose sessions have no credential
	}
	var sites []string
	for _, site := range servers {
		sites = append(sites, site)
	}
	siteHandlers.Lock()
	for _, site := range sites {
		if siteHandlers.bySite[site] == nil {
			siteHandlers.bySite[site] = make(map[*Handler]struct{})
		}
		siteHandlers.bySite[site][h] = struct{}{}
	}
	siteHandlers.Unlock()
	h.revocations, h.revocationsDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(h.revocationsDone)
		t := time.NewTicker(revocationInterval)
		defer t.Stop()
		for {
			select {
			case <-h.revocations:
				return
			case <-t.C:
			}
			for _, site := range sites {
				accepted := acceptedOn(site)
				for _, p := range h.pools {
					if n := p.backend.EndSessions(site, func(c string) bool { return !accepted[c] }); n > 0 {
						h.logger.Info("ended the sessions of a revoked API key", zap.Int("sessions", n), zap.String("site", site))
					}
				}
			}
		}
	}()
}

// stopRevocations ends what watchRevocations started.
func (h *Handler) stopRevocations() {
	if h.revocations == nil {
		return
	}
	siteHandlers.Lock()
	for site, handlers := range siteHandlers.bySite {
		delete(handlers, h)
		if len(handlers) == 0 {
			delete(siteHandlers.bySite, site)
		}
	}
	siteHandlers.Unlock()
	close(h.revocations)
	<-h.revocationsDone
}

// acceptedOn returns the credentials that some handler of site accepts.
func acceptedOn(site string) map[string]bool {
	siteHandlers.Lock()
	handlers := make([]*Handler, 0, len(siteHandlers.bySite[site]))
	for h := range siteHandlers.bySite[site] {
		handlers = append(handlers, h)
	}
	siteHandlers.Unlock()
	accepted := make(map[string]bool)
	for _, h := range handlers {
		for c := range h.liveCredentials() {
			accepted[c] = true
		}
	}
	return accepted
}
