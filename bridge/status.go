package bridge

import (
	"errors"
	"sort"
	"strings"
	"time"
)

// Status is a snapshot of a backend for operators: its children and its
// sessions. It names API keys by name only.
type Status struct {
	// Server is the server's name.
	Server    string   `json:"server,omitempty"`
	Command   []string `json:"command"`
	Isolation string   `json:"isolation"`
	// Era is the protocol eras the child speaks, from the last probe.
	Era      string          `json:"era,omitempty"`
	Children []ChildStatus   `json:"children"`
	Sessions []SessionStatus `json:"sessions"`
	// Crashes counts children that exited on their own.
	Crashes int64 `json:"crashes"`
	// Hung counts, among those, the children the health check killed
	// because they stopped answering.
	Hung      int64  `json:"hung"`
	LastExit  string `json:"last_exit,omitempty"`
	LastError string `json:"last_error,omitempty"`
}

// ChildStatus describes one child process.
type ChildStatus struct {
	PID int `json:"pid"`
	// Role is what the child is for: spare, isolated, shared, stateless
	// or probe.
	Role          string    `json:"role"`
	StartedAt     time.Time `json:"started_at"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	Sessions      int       `json:"sessions"`
	// Restarts counts the children that held this one's place before it
	// and exited on their own.
	Restarts int `json:"restarts"`
}

// SessionStatus describes one session.
type SessionStatus struct {
	// ID is the first 8 characters of the session id: enough to name it,
	// not enough to use it.
	ID              string `json:"id"`
	Transport       string `json:"transport"`
	ProtocolVersion string `json:"protocol_version,omitempty"`
	Key             string `json:"key,omitempty"`
	// Site is the site the session was opened on.
	Site        string  `json:"site,omitempty"`
	PID         int     `json:"pid"`
	AgeSeconds  float64 `json:"age_seconds"`
	IdleSeconds float64 `json:"idle_seconds"`
	InFlight    int     `json:"in_flight"`
	// UndeliveredBytes is what the session holds for its client that the
	// client has not read yet, within max_undelivered.
	UndeliveredBytes int64 `json:"undelivered_bytes"`
}

// Status returns a snapshot of the backend.
func (b *Backend) Status() Status {
	now := time.Now()
	counts := b.sup.Counts()
	st := Status{Server: b.cfg.Name, Command: b.cfg.Process.Argv, Isolation: b.cfg.Pool.Isolation, Era: b.prober.lastProbe().Era, Crashes: counts.Crashes, Hung: counts.Hung, LastExit: counts.LastExit}
	if err := b.lastError(); err != nil {
		st.LastError = err.Error()
	}
	b.mu.RLock()
	sessions := make([]*session, 0, len(b.sessions))
	for _, s := range b.sessions {
		sessions = append(sessions, s)
	}
	b.mu.RUnlock()
	perChild := make(map[int]int)
	for _, s := range sessions {
		s.mu.Lock()
		ss := SessionStatus{
			ID:               s.ID[:8],
			Transport:        s.Transport,
			ProtocolVersion:  s.protocolVersion,
			Key:              s.Principal.Key,
			Site:             s.Principal.Site,
			PID:              s.up.Pid(),
			AgeSeconds:       now.Sub(s.created).Seconds(),
			IdleSeconds:      now.Sub(s.lastActive).Seconds(),
			InFlight:         len(s.pending),
			UndeliveredBytes: s.undelivered.bytes.Load(),
		}
		s.mu.Unlock()
		st.Sessions = append(st.Sessions, ss)
		perChild[ss.PID]++
	}
	for _, c := range b.sup.Children() {
		st.Children = append(st.Children, ChildStatus{
			PID:           c.Pid,
			Role:          c.Role.String(),
			StartedAt:     c.Started,
			UptimeSeconds: now.Sub(c.Started).Seconds(),
			Sessions:      perChild[c.Pid],
			Restarts:      c.Restarts,
		})
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
	var found *session
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
