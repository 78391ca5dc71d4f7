package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Quotas count tool calls per principal in a calendar window. A count is
// kept in memory, where calls are checked against it, and added to the
// total in Caddy's storage every quotaFlushInterval (under the storage's
// lock, so that instances sharing a storage add up) and when the last
// handler with quotas is cleaned up (on reload or exit). A new process
// reads the total on a principal's first call in the window. Calls made
// on other instances since the last read are learnt at the next flush:
// together, instances may let through up to a refresh interval's calls
// more than the quota. A counter in use reads storage's total again
// after quotaRefreshInterval, so that an instance that counts few calls
// learns soon of those counted elsewhere.
const (
	quotaFlushInterval   = time.Second
	quotaRefreshInterval = 5 * time.Second
)

// quotaStorageTimeout bounds each storage operation of a flush.
const quotaStorageTimeout = 10 * time.Second

// quotaCounter is one principal's count under one policy.
type quotaCounter struct {
	name  string // storage key prefix of its windows
	limit QuotaConfig
	owner string // the principal, recorded in storage for operators

	mu      sync.Mutex
	window  time.Time // start of the window counted
	loaded  bool      // stored holds storage's count of the window
	stored  int64     // the total in storage, as of the last read or flush
	synced  time.Time // when stored was read
	pending int64     // calls counted here, not yet added to storage
	storage certmagic.Storage
	logger  *zap.Logger
}

// newQuotaCounter counts principal's calls under policy on server (the
// mcp_bridge name): wherever they come in, every site and every instance
// sharing the storage adds to one count.
func newQuotaCounter(policy, server, principal string, limit QuotaConfig) *quotaCounter {
	sum := sha256.Sum256([]byte(principal))
	return &quotaCounter{
		name:  "mcp_bridge/quota/" + server + "/" + policy + "/" + hex.EncodeToString(sum[:16]),
		limit: limit,
		owner: principal,
	}
}

// windowOf returns the calendar window (UTC) holding now.
func windowOf(now time.Time, per string) (start, end time.Time) {
	now = now.UTC()
	if per == "month" {
		start = time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 1, 0)
	}
	start = time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	return start, start.AddDate(0, 0, 1)
}

func (q *quotaCounter) key(window time.Time) string {
	return q.name + "/" + window.Format("2006-01-02")
}

// storedQuota is a window's count in storage.
type storedQuota struct {
	Principal string `json:"principal"`
	Calls     int64  `json:"calls"`
}

func loadQuota(ctx context.Context, storage certmagic.Storage, key string) (int64, error) {
	data, err := storage.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var sq storedQuota
	if err := json.Unmarshal(data, &sq); err != nil {
		return 0, err
	}
	return sq.Calls, nil
}

// take counts one call, unless the quota is used up; it returns when the
// window resets. The first call of a window reads storage's count.
func (q *quotaCounter) take(now time.Time, storage certmagic.Storage, logger *zap.Logger) (resets time.Time, exhausted bool) {
	start, end := windowOf(now, q.limit.Per)
	q.mu.Lock()
	defer q.mu.Unlock()
	if !start.Equal(q.window) {
		q.window, q.loaded, q.stored, q.pending = start, false, 0, 0
	}
	q.storage, q.logger = storage, logger
	if !q.loaded && storage != nil {
		ctx, cancel := context.WithTimeout(context.Background(), quotaStorageTimeout)
		n, err := loadQuota(ctx, storage, q.key(start))
		cancel()
		if err != nil {
			// Count from what is known: a storage failure must not stop
			// every call; the next call tries again.
			logger.Error("cannot read a quota count; counting from memory", zap.String("key", q.key(start)), zap.Error(err))
		} else {
			q.stored, q.loaded, q.synced = n, true, now
		}
	}
	if q.loaded && now.Sub(q.synced) > quotaRefreshInterval {
		quotaFlusher.mark(q) // a flush of nothing reads the total
	}
	if q.stored+q.pending >= q.limit.Calls {
		return end, true
	}
	q.pending++
	quotaFlusher.mark(q)
	return end, false
}

// used returns the calls counted in the window holding now.
func (q *quotaCounter) used(now time.Time) (int64, time.Time) {
	start, end := windowOf(now, q.limit.Per)
	q.mu.Lock()
	defer q.mu.Unlock()
	if !start.Equal(q.window) {
		return 0, end
	}
	return q.stored + q.pending, end
}

// dirty reports whether calls wait to be added to storage. A counter
// busy reading storage counts as dirty: the sweep that asks must not wait.
func (q *quotaCounter) dirty() bool {
	if q == nil {
		return false
	}
	if !q.mu.TryLock() {
		return true
	}
	defer q.mu.Unlock()
	return q.pending > 0
}

// flush adds the calls counted here to storage's total, and learns the
// total, which other instances' calls may have raised.
func (q *quotaCounter) flush() error {
	q.mu.Lock()
	delta, window, storage, logger := q.pending, q.window, q.storage, q.logger
	q.mu.Unlock()
	err := q.add(delta, window, storage)
	if err != nil {
		logger.Error("cannot store a quota count; trying again", zap.String("key", q.key(window)), zap.Error(err))
	}
	return err
}

// add adds delta calls of window to storage's total.
func (q *quotaCounter) add(delta int64, window time.Time, storage certmagic.Storage) error {
	if storage == nil || window.IsZero() {
		return nil
	}
	key := q.key(window)
	ctx, cancel := context.WithTimeout(context.Background(), quotaStorageTimeout)
	defer cancel()
	if err := storage.Lock(ctx, key); err != nil {
		return err
	}
	defer func() { _ = storage.Unlock(context.Background(), key) }()
	total, err := loadQuota(ctx, storage, key)
	if err != nil {
		return err
	}
	if delta > 0 {
		total += delta
		data, _ := json.Marshal(storedQuota{Principal: q.owner, Calls: total})
		if err := storage.Store(ctx, key, data); err != nil {
			return err
		}
	}
	q.mu.Lock()
	if q.window.Equal(window) {
		q.stored, q.loaded, q.synced = total, true, time.Now()
		q.pending -= delta
	}
	q.mu.Unlock()
	return nil
}

// quotaFlusher adds counted calls to storage while any handler with a
// quota is provisioned; the last one's cleanup flushes what is left.
var quotaFlusher = &flusher{}

type flusher struct {
	mu      sync.Mutex
	holders int
	dirty   map[*quotaCounter]struct{}
	stop    chan struct{}
	done    chan struct{}
}

// hold keeps the flusher running until the matching release.
func (f *flusher) hold() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.holders++; f.holders > 1 {
		return
	}
	f.stop, f.done = make(chan struct{}), make(chan struct{})
	go f.run(f.stop, f.done)
}

// release lets the flusher stop once nothing holds it, after a last
// flush.
func (f *flusher) release() {
	f.mu.Lock()
	if f.holders--; f.holders > 0 {
		f.mu.Unlock()
		return
	}
	stop, done := f.stop, f.done
	f.mu.Unlock()
	close(stop)
	<-done
}

func (f *flusher) mark(q *quotaCounter) {
	f.mu.Lock()
	if f.dirty == nil {
		f.dirty = make(map[*quotaCounter]struct{})
	}
	f.dirty[q] = struct{}{}
	f.mu.Unlock()
}

func (f *flusher) run(stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(quotaFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			f.flush()
		case <-stop:
			f.flush()
			return
		}
	}
}

// flush writes every dirty counter; one that fails stays dirty.
func (f *flusher) flush() {
	f.mu.Lock()
	dirty := f.dirty
	f.dirty = nil
	f.mu.Unlock()
	for q := range dirty {
		if q.flush() != nil {
			f.mark(q)
		}
	}
}
