package bridge

import (
	"errors"
	"sort"
	"strings"
	"sync/atomic"
	"time"
)

// Status is a snapshot of a backend for operators: its children and its
// sessions. It names API keys by name only.
type Status struct {
	Command   []string `json:"command"`
	Isolation string   `json:"isolation"`
	// Era is the protocol eras the child speaks, from the last probe.
	Era      string          `json:"era,omitempty"`
	Children []ChildStatus   `json:"children"`
	Sessions []SessionStatus `json:"sessions"`
	// Crashes counts children that exited on their own.
	Crashes   int64  `json:"crashes"`
	LastExit  string `json:"last_exit,omitempty"`
	LastError string `json:"last_error,omitempty"`
}

// ChildStatus describes one child process.
type ChildStatus struct {
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
	Sessions  int       `json:"sessions"`
}

// SessionStatus describes one session.
type SessionStatus struct {
	// ID is the first 8 characters of the session id: enough to name it,
	// not enough to use it.
	ID              string  `json:"id"`
	Transport       string  `json:"transport"`
	ProtocolVersion string  `json:"protocol_version,omitempty"`
	Key             string  `json:"key,omitempty"`
	PID             int     `json:"pid"`
	AgeSeconds      float64 `json:"age_seconds"`
	IdleSeconds     float64 `json:"idle_seconds"`
	InFlight        int     `json:"in_flight"`
}

// exitLog counts children that exited on their own.
type exitLog struct {
	crashes atomic.Int64
	last    atomic.Pointer[string]
}

// note counts a crash. Its stdout may close before the child is reaped, so
// the exit status is recorded once it is.
func (l *exitLog) note(child muxChild) {
	l.crashes.Add(1)
	go func() {
		<-child.Done()
		msg := exitError(child).Error()
		l.last.Store(&msg)
	}()
}

// Status returns a snapshot of the backend.
func (b *Backend) Status() Status {
	now := time.Now()
	st := Status{Command: b.cfg.Process.Argv, Isolation: "session", Era: b.prober.lastProbe().Era, Crashes: b.exits.crashes.Load()}
	if last := b.exits.last.Load(); last != nil {
		st.LastExit = *last
	}
	if err := b.Stats().LastError; err != nil {
		st.LastError = err.Error()
	}
	b.mu.RLock()
	sessions := make([]*Session, 0, len(b.sessions))
	for _, s := range b.sessions {
		sessions = append(sessions, s)
	}
	b.mu.RUnlock()
	children := make(map[int]*ChildStatus)
	for _, s := range sessions {
		s.mu.Lock()
		ss := SessionStatus{
			ID:              s.ID[:8],
			Transport:       s.Transport,
			ProtocolVersion: s.protocolVersion,
			Key:             s.Principal,
			PID:             s.up.Pid(),
			AgeSeconds:      now.Sub(s.created).Seconds(),
			IdleSeconds:     now.Sub(s.lastActive).Seconds(),
			InFlight:        len(s.pending),
		}
		s.mu.Unlock()
		st.Sessions = append(st.Sessions, ss)
		if c := children[ss.PID]; c != nil {
			c.Sessions++
		} else {
			children[ss.PID] = &ChildStatus{PID: ss.PID, StartedAt: s.up.Started(), Sessions: 1}
		}
	}
	var idle []interface {
		Pid() int
		Started() time.Time
	}
	if b.shared != nil {
		st.Isolation = "shared"
		for _, c := range b.shared.idleChildren() {
			idle = append(idle, c)
		}
	} else {
		for _, c := range b.pool.idleChildren() {
			idle = append(idle, c)
		}
	}
	for _, p := range idle {
		if children[p.Pid()] == nil {
			children[p.Pid()] = &ChildStatus{PID: p.Pid(), StartedAt: p.Started()}
		}
	}
	for _, c := range children {
		st.Children = append(st.Children, *c)
	}
	sort.Slice(st.Children, func(i, j int) bool { return st.Children[i].PID < st.Children[j].PID })
	sort.Slice(st.Sessions, func(i, j int) bool { return st.Sessions[i].AgeSeconds > st.Sessions[j].AgeSeconds })
	return st
}

// ErrAmbiguousSession is returned when a session id prefix names several.
var ErrAmbiguousSession = errors.New("the prefix names more than one session")

// EndSession ends the session whose id starts with prefix (8 characters at
// least), as an operator would; it reports whether one was found.
func (b *Backend) EndSession(prefix, reason string) (bool, error) {
	if len(prefix) < 8 {
		return false, errors.New("give at least 8 characters of the session id")
	}
	b.mu.RLock()
	var found *Session
	for id, s := range b.sessions {
		if strings.HasPrefix(id, prefix) {
			if found != nil {
				b.mu.RUnlock()
				return false, ErrAmbiguousSession
			}
			found = s
		}
	}
	b.mu.RUnlock()
	if found == nil {
		return false, nil
	}
	found.end(reason)
	return true, nil
}
