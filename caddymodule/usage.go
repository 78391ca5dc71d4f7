package caddymodule

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Usage: the rate buckets and quota counters of each principal under each
// policy, on each site. They live in the process, not in a handler, so
// that a reload that keeps a policy keeps its principals' buckets and
// counts; a policy whose limits change starts afresh (its quota counts,
// being in storage, carry on).

// principalUsage is one principal's use under one policy on one site.
type principalUsage struct {
	policy    string
	site      string
	principal string
	rate      *bucket // nil: no rate limit

	mu    sync.Mutex
	tools map[string]*bucket // per-tool buckets, made on first call

	quota    *quotaCounter // nil: no quota
	lastUsed atomic.Int64  // unix nanoseconds
}

// bucket is a token bucket.
type bucket struct {
	limit   RateLimit
	limiter *rate.Limiter
}

func newBucket(l RateLimit) *bucket {
	burst := l.Burst
	if burst == 0 {
		burst = l.Requests
	}
	return &bucket{limit: l, limiter: rate.NewLimiter(rate.Limit(float64(l.Requests)/l.per().Seconds()), burst)}
}

// take takes a token, or says how long until one is there.
func (b *bucket) take(now time.Time) (wait time.Duration, limited bool) {
	if b == nil {
		return 0, false
	}
	r := b.limiter.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, true
	}
	return 0, false
}

// toolRate returns the bucket of one tool's calls.
func (u *principalUsage) toolRate(tool string, l RateLimit) *bucket {
	u.mu.Lock()
	defer u.mu.Unlock()
	b := u.tools[tool]
	if b == nil {
		if u.tools == nil {
			u.tools = make(map[string]*bucket)
		}
		b = newBucket(l)
		u.tools[tool] = b
	}
	return b
}

// usages holds every principal's usage, by policy, its limits, site and
// principal. Entries unused for usageIdle are dropped once there are many.
var usages = struct {
	sync.Mutex
	m map[string]*principalUsage
}{m: make(map[string]*principalUsage)}

const (
	usageSweepSize = 10000
	usageIdle      = time.Hour
)

// usageOf returns the usage of principal under p on site of server.
func usageOf(p *policy, server, site, principal string) *principalUsage {
	key := p.usageKey + "\x00" + server + "\x00" + site + "\x00" + principal
	now := time.Now()
	usages.Lock()
	u := usages.m[key]
	if u == nil {
		if len(usages.m) >= usageSweepSize {
			for k, old := range usages.m {
				if now.UnixNano()-old.lastUsed.Load() > int64(usageIdle) && !old.quota.dirty() {
					delete(usages.m, k)
				}
			}
		}
		u = &principalUsage{policy: p.Name, site: site, principal: principal}
		if p.Rate != nil {
			u.rate = newBucket(*p.Rate)
		}
		if p.Quota != nil {
			u.quota = newQuotaCounter(p.Name, server, principal, *p.Quota)
		}
		usages.m[key] = u
	}
	usages.Unlock()
	u.lastUsed.Store(now.UnixNano())
	return u
}

// principalStatus is one principal's use in the admin API.
type principalStatus struct {
	Principal string `json:"principal"`
	Site      string `json:"site,omitempty"`
	Policy    string `json:"policy"`
	// Sessions is how many sessions the principal has open on the site.
	Sessions int `json:"sessions"`
	// Rate is the request rate limit, and the requests it would let
	// through at once now.
	Rate *rateStatus `json:"rate,omitempty"`
	// Quota is the tool-call quota and its use in the current window.
	Quota    *quotaStatus `json:"quota,omitempty"`
	LastSeen time.Time    `json:"last_seen"`
}

type rateStatus struct {
	Limit     string  `json:"limit"`
	Available float64 `json:"available"`
}

type quotaStatus struct {
	Limit  int64     `json:"limit"`
	Per    string    `json:"per"`
	Used   int64     `json:"used"`
	Resets time.Time `json:"resets"`
}

// usageStatus lists every principal's use, with sessions counted by
// sessions(site, principal).
func usageStatus(sessions func(site, principal string) int) []principalStatus {
	usages.Lock()
	list := make([]*principalUsage, 0, len(usages.m))
	for _, u := range usages.m {
		list = append(list, u)
	}
	usages.Unlock()
	now := time.Now()
	out := make([]principalStatus, 0, len(list))
	for _, u := range list {
		st := principalStatus{
			Principal: u.principal, Site: u.site, Policy: u.policy,
			Sessions: sessions(u.site, u.principal),
			LastSeen: time.Unix(0, u.lastUsed.Load()).UTC(),
		}
		if u.rate != nil {
			st.Rate = &rateStatus{Limit: u.rate.limit.String(), Available: u.rate.limiter.TokensAt(now)}
		}
		if q := u.quota; q != nil {
			used, resets := q.used(now)
			st.Quota = &quotaStatus{Limit: q.limit.Calls, Per: q.limit.Per, Used: used, Resets: resets}
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Principal != out[j].Principal {
			return out[i].Principal < out[j].Principal
		}
		return out[i].Policy < out[j].Policy
	})
	return out
}
