package caddymodule

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// TestREADMEJSONConfig checks that the README's JSON config example is a
// valid handler config, with no field the handler does not know.
func TestREADMEJSONConfig(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "```json\n{\n\t\"handler\": \"mcp_bridge\"")
	if !ok {
		t.Fatal("README.md has no JSON config example")
	}
	example, _, _ := strings.Cut("{\n\t\"handler\": \"mcp_bridge\""+rest, "```")
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(example), &fields); err != nil {
		t.Fatalf("README JSON example: %v", err)
	}
	delete(fields, "handler")
	stripped, _ := json.Marshal(fields)
	dec := json.NewDecoder(bytes.NewReader(stripped))
	dec.DisallowUnknownFields()
	var h Handler
	if err := dec.Decode(&h); err != nil {
		t.Fatalf("README JSON example does not fit the handler: %v", err)
	}
	if err := h.Validate(); err != nil {
		t.Errorf("README JSON example does not validate: %v", err)
	}
}
