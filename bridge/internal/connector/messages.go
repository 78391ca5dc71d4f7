package connector

import (
	"strconv"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// The messages the connector writes or sends itself.

// codeUnreachable answers a request that could not reach the remote: the
// code the bridge gives a request whose server exited, which clients
// already know as "the server is gone".
const codeUnreachable = jsonrpc.CodeServerExited

// ownIDPrefix starts the ids of the requests the connector sends itself
// (the initialize of a new session): a string no client's id starts with
// in practice, so that their answers are told apart.
const ownIDPrefix = "caddy-mcp-bridge-connect:"

// ownID is the id of the connector's nth request.
func ownID(what string, n int) []byte {
	return []byte(`"` + ownIDPrefix + what + "-" + strconv.Itoa(n) + `"`)
}

// initializedMsg tells the remote that a new session's initialization is
// over.
var initializedMsg = []byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)

// withError is a JSON-RPC error response with the given raw id and raw
// error object.
func withError(id, rpcError []byte) []byte {
	if id == nil {
		id = []byte("null")
	}
	b := make([]byte, 0, 40+len(id)+len(rpcError))
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	b = append(b, `,"error":`...)
	b = append(b, rpcError...)
	return append(b, '}')
}

// logLogger names the connector in the log notifications it sends the
// client.
const logLogger = "caddy-mcp-bridge connect"

// sessionRenewedNotice tells the client that its requests now go to a new
// remote session, and what that lost.
var sessionRenewedNotice = []byte(`{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"warning","logger":"` + logLogger + `",` +
	`"data":"The remote MCP session ended (the server restarted, or the session idled out), and a new one was opened: what the server kept for the old one was reset, such as resource subscriptions and the log level."}}`)
