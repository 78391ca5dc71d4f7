//go:build linux

package main

import (
	"context"
	"flag"
	"net/http"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

type echoArgs struct {
	Text string `json:"text" jsonschema:"the text to return"`
}

type blobArgs struct {
	Size int `json:"size" jsonschema:"how many bytes of text to return"`
}

// runChild serves the bench's own MCP server. The everything-server has
// no tool whose message size the caller picks, so the 64 KiB echo and the
// 10 MiB result run against this one: `echo` returns its text, `blob`
// returns size bytes of text. It serves stdio, or, given -http, Streamable
// HTTP itself, with the everything-server's flags, for the "native go"
// peer.
func runChild(args []string) error {
	fs := flag.NewFlagSet("mcp-bench child", flag.ExitOnError)
	addr := fs.String("http", "", "if set, serve Streamable HTTP at this address instead of stdio")
	stateless := fs.Bool("stateless", true, "with -http, serve without sessions")
	fs.Parse(args)
	server := mcp.NewServer(&mcp.Implementation{Name: "mcp-bench-child", Version: "1.0.0"}, nil)
	mcp.AddTool(server, &mcp.Tool{Name: "echo", Description: "Returns its text."},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoArgs) (*mcp.CallToolResult, any, error) {
			return textResult(in.Text), nil, nil
		})
	mcp.AddTool(server, &mcp.Tool{Name: "blob", Description: "Returns size bytes of text."},
		func(_ context.Context, _ *mcp.CallToolRequest, in blobArgs) (*mcp.CallToolResult, any, error) {
			return textResult(strings.Repeat("x", in.Size)), nil, nil
		})
	if *addr != "" {
		handler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server },
			&mcp.StreamableHTTPOptions{Stateless: *stateless})
		return http.ListenAndServe(*addr, handler)
	}
	return server.Run(context.Background(), &mcp.StdioTransport{})
}

func textResult(text string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}}
}
