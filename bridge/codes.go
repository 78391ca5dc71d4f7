package bridge

import "github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"

// JSON-RPC error codes the bridge answers with, for the handlers in front
// of it that answer with the same codes.
const (
	CodeInvalidRequest  = jsonrpc.CodeInvalidRequest
	CodeSessionNotFound = jsonrpc.CodeSessionNotFound
	CodeServerBusy      = jsonrpc.CodeServerBusy
	CodeUnauthorized    = jsonrpc.CodeUnauthorized
)
