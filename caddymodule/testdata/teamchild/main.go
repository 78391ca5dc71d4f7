// Command teamchild is a stdio MCP server for the policy tests: a team's
// tools (search, whose_token, environment, admin_reset, add_tool), prompts (greet,
// admin_prompt) and resources (file:///public.txt, file:///admin.txt),
// listed two at a time so that clients page through them. whose_token
// prints the TEAM_TOKEN environment variable, environment all of it; add_tool adds a tool, so
// that the server tells its clients the list changed.
package main

import (
	"context"
	"log"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

func text(s string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
}

func main() {
	server := mcp.NewServer(&mcp.Implementation{Name: "teamchild", Version: "1.0.0"}, &mcp.ServerOptions{PageSize: 2})
	noInput := map[string]any{"type": "object"}
	tool := func(name, description string, result func() string) {
		server.AddTool(&mcp.Tool{Name: name, Description: description, InputSchema: noInput},
			func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) { return text(result()), nil })
	}
	tool("search", "Searches.", func() string { return "found" })
	tool("whose_token", "Prints TEAM_TOKEN.", func() string { return "TEAM_TOKEN=" + os.Getenv("TEAM_TOKEN") })
	tool("environment", "Prints the whole environment.", func() string { return strings.Join(os.Environ(), "\n") })
	tool("admin_reset", "Resets everything.", func() string { return "reset" })
	var added atomic.Int64
	tool("add_tool", "Adds a tool.", func() string {
		name := "added_" + strconv.FormatInt(added.Add(1), 10)
		tool(name, "Added.", func() string { return name })
		return name
	})
	for _, name := range []string{"greet", "admin_prompt"} {
		server.AddPrompt(&mcp.Prompt{Name: name}, func(context.Context, *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			return &mcp.GetPromptResult{Messages: []*mcp.PromptMessage{{Role: "user", Content: &mcp.TextContent{Text: name}}}}, nil
		})
	}
	for _, uri := range []string{"file:///public.txt", "file:///admin.txt"} {
		server.AddResource(&mcp.Resource{URI: uri, Name: uri, MIMEType: "text/plain"}, func(context.Context, *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: uri, MIMEType: "text/plain", Text: uri}}}, nil
		})
	}
	if err := server.Run(context.Background(), &mcp.StdioTransport{}); err != nil {
		log.Fatal(err)
	}
}
