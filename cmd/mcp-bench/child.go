//go:build linux

package main

import (
	"context"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

type echoArgs struct {
	Text string `json:"text" jsonschema:"the text to return"`
}

type blobArgs struct {
	Size int `json:"size" jsonschema:"how many bytes of text to return"`
}

// runChild serves the bench's own stdio MCP server. The everything-server
// has no tool whose message size the caller picks, so the 64 KiB echo and
// the 10 MiB result run against this one: `echo` returns its text, `blob`
// returns size bytes of text.
func runChild() error {
	server := mcp.NewServer(&mcp.Implementation{Name: "mcp-bench-child", Version: "1.0.0"}, nil)
	mcp.AddTool(server, &mcp.Tool{Name: "echo", Description: "Returns its text."},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoArgs) (*mcp.CallToolResult, any, error) {
			return textResult(in.Text), nil, nil
		})
	mcp.AddTool(server, &mcp.Tool{Name: "blob", Description: "Returns size bytes of text."},
		func(_ context.Context, _ *mcp.CallToolRequest, in blobArgs) (*mcp.CallToolResult, any, error) {
			return textResult(strings.Repeat("x", in.Size)), nil, nil
		})
	return server.Run(context.Background(), &mcp.StdioTransport{})
}

func textResult(text string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}}
}
