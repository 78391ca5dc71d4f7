package mcptest

import "strings"

// Typical MCP messages, for benchmarks: a tools/call request and its result.
const (
	ToolsCallRequest = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"test_simple_text","arguments":{}}}`
	ToolsCallResult  = `{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"This is a simple text response for testing."}]}}`
)

// LargeToolsCallResult returns a tools/call result of about size bytes, its
// text lines of a tool's output with their escaped newlines.
func LargeToolsCallResult(size int) []byte {
	const (
		head = `{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"`
		line = `2025-11-25T10:00:00Z INFO worker finished a job in 12ms\n`
		tail = `"}]}}`
	)
	return []byte(head + strings.Repeat(line, (size-len(head)-len(tail))/len(line)) + tail)
}
