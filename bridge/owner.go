package bridge

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// Several bridge instances may serve one endpoint behind a load balancer.
// A session lives in one instance's children, so every session id and
// every legacy SSE event id names the instance that owns it, its node: 32
// random hex digits, a dot, then the node ("9f0c…e1.bridge-2"). A front
// routes a request by the node (see Owner) and the owner looks the whole
// id up. Changing the node part of an id routes the request to an
// instance that never minted that id, which answers 404 like any unknown
// session, so the node needs no signature of its own: the 128 random bits
// are what a client cannot guess.

// randomIDLen is the length of the random part of ids.
const randomIDLen = 32

// newOwnedID returns a new random id owned by node.
func newOwnedID(node string) string {
	var b [randomIDLen / 2]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	if node == "" {
		return id
	}
	return id + "." + node
}

// nodeOf returns the node an id names, or "" for none.
func nodeOf(id string) string {
	if len(id) <= randomIDLen+1 || id[randomIDLen] != '.' {
		return ""
	}
	return id[randomIDLen+1:]
}

// Owner returns the node of the instance that owns the session r belongs
// to, from its Mcp-Session-Id header, its sessionId query parameter (a
// legacy SSE message) or its Last-Event-ID header (a legacy SSE stream
// resuming); "" for a request that opens a session or needs none.
func Owner(r *http.Request) string {
	if id := r.Header.Get("Mcp-Session-Id"); id != "" {
		return nodeOf(id)
	}
	if id := queryValue(r.URL.RawQuery, "sessionId"); id != "" {
		return nodeOf(id)
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		tag, _, _ := strings.Cut(id, "_")
		return nodeOf(tag)
	}
	return ""
}

// CheckNode reports whether node can name an instance in ids: visible
// ASCII letters, digits and the characters of host names and addresses,
// at most 100 of them.
func CheckNode(node string) error {
	if node == "" || len(node) > 100 {
		return fmt.Errorf("node %q: want 1 to 100 characters", node)
	}
	for _, c := range []byte(node) {
		if !nodeChar(c) {
			return fmt.Errorf("node %q: %q is not allowed (letters, digits and . - : [ ] only)", node, c)
		}
	}
	return nil
}

func nodeChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '-' || c == ':' || c == '[' || c == ']'
}

// DefaultNode is the node of an instance that names none: its host name,
// with characters a node cannot hold replaced by "-".
func DefaultNode() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		return "localhost"
	}
	b := []byte(host)
	for i, c := range b {
		if !nodeChar(c) {
			b[i] = '-'
		}
	}
	return string(b[:min(len(b), 100)])
}
