// Command envchild is a stdio MCP server for the credential tests: it
// answers initialize, and any other request with its whole environment and
// the raw bytes of every message it has received so far, so that a test can
// check that no client credential ever reaches a child.
package main

import (
	"bufio"
	"encoding/json"
	"os"
)

type message struct {
	ID     json.RawMessage `json:"id,omitempty"`
	Method string          `json:"method,omitempty"`
	Params json.RawMessage `json:"params,omitempty"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64<<10), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	var received []string
	for in.Scan() {
		line := in.Text()
		received = append(received, line)
		var msg message
		if json.Unmarshal([]byte(line), &msg) != nil || msg.Method == "" || msg.ID == nil {
			continue // not JSON, a response or a notification
		}
		var result any
		if msg.Method == "initialize" {
			var params struct {
				ProtocolVersion string `json:"protocolVersion"`
			}
			_ = json.Unmarshal(msg.Params, &params)
			result = map[string]any{
				"protocolVersion": params.ProtocolVersion,
				"capabilities":    map[string]any{"tools": map[string]any{}},
				"serverInfo":      map[string]any{"name": "envchild", "version": "1.0.0"},
			}
		} else {
			cwd, _ := os.Getwd()
			result = map[string]any{"env": os.Environ(), "cwd": cwd, "args": os.Args, "received": received}
		}
		b, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": msg.ID, "result": result})
		if err != nil {
			os.Exit(1)
		}
		out.Write(append(b, '\n'))
		if out.Flush() != nil {
			os.Exit(1)
		}
	}
}
