package jsonrpc

// Fields of an MCP request's _meta that the stateless protocol
// (2026-07-28) defines, and that routing reads.
const (
	MetaProtocolVersion = "io.modelcontextprotocol/protocolVersion"
	MetaSubscriptionID  = "io.modelcontextprotocol/subscriptionId"
	MetaLogLevel        = "io.modelcontextprotocol/logLevel"
)
