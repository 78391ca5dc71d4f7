package bridge

import (
	"bytes"
	"strconv"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// childIDPrefix starts the ids the bridge gives an isolated child's
// requests in place of ids the child might not echo byte for byte (see
// jsonrpc.EchoableID): a huge integer, say, or a string with a lone
// surrogate, which a client would wait on forever. A shared child's
// requests all get bridge ids already (internal/mux).
var childIDPrefix = []byte(`"mcpbridge-id-`)

// needsChildID reports whether a request's id must be replaced before an
// isolated child sees it: it may not come back whole, or it looks like one
// of the bridge's own.
func needsChildID(id []byte) bool {
	return !jsonrpc.EchoableID(id) || bytes.HasPrefix(id, childIDPrefix)
}

// childIDs maps the ids the bridge gave a session's requests to the
// client's own. It is guarded by the session's mutex.
type childIDs struct {
	next     int
	toClient map[string][]byte // the child's id → the client's
	toChild  map[string][]byte // the client's id → the child's
}

// assign gives a request the id the child sees.
func (c *childIDs) assign(clientID []byte) []byte {
	if c.toClient == nil {
		c.toClient, c.toChild = make(map[string][]byte), make(map[string][]byte)
	}
	c.next++
	childID := append(append([]byte(nil), childIDPrefix...), strconv.Itoa(c.next)+`"`...)
	c.toClient[string(childID)] = bytes.Clone(clientID)
	c.toChild[string(clientID)] = childID
	return childID
}

// forChild returns the id the child knows a request by, if the bridge
// gave it one.
func (c *childIDs) forChild(clientID []byte) []byte { return c.toChild[string(clientID)] }

// restore returns the client's id for the child's, and forgets both.
func (c *childIDs) restore(childID []byte) ([]byte, bool) {
	clientID, ok := c.toClient[string(childID)]
	if ok {
		delete(c.toClient, string(childID))
		delete(c.toChild, string(clientID))
	}
	return clientID, ok
}

// forget drops the ids of a request that will not be answered.
func (c *childIDs) forget(clientID []byte) {
	if childID, ok := c.toChild[string(clientID)]; ok {
		delete(c.toChild, string(clientID))
		delete(c.toClient, string(childID))
	}
}
