package mcptest

import (
	"net/http"
	"sync"
)

// AuthTransport is an http.RoundTripper that adds credential headers to
// every request, for clients (such as the go-sdk's) that take an
// http.Client but no headers. The headers may change while sessions run,
// as they do in a key rotation. Requests go out through Go's default
// transport, so that its connections stay shared with every other client of
// the tests.
type AuthTransport struct {
	mu     sync.Mutex
	header http.Header
}

// NewAuthTransport returns a transport that sets the headers kv, given as
// name, value pairs.
func NewAuthTransport(kv ...string) *AuthTransport {
	a := &AuthTransport{}
	a.Set(kv...)
	return a
}

// Bearer returns a transport that presents key as Authorization: Bearer.
func Bearer(key string) *AuthTransport {
	return NewAuthTransport("Authorization", "Bearer "+key)
}

// Set replaces the headers the transport adds with kv, given as name,
// value pairs.
func (a *AuthTransport) Set(kv ...string) {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	a.mu.Lock()
	a.header = h
	a.mu.Unlock()
}

// RoundTrip sends a copy of r with the headers set: a RoundTripper must not
// change the request it is given.
func (a *AuthTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	a.mu.Lock()
	for name, v := range a.header {
		r.Header[name] = v
	}
	a.mu.Unlock()
	return http.DefaultTransport.RoundTrip(r)
}

// Client returns an http.Client that sends its requests through a.
func (a *AuthTransport) Client() *http.Client {
	return &http.Client{Transport: a}
}
