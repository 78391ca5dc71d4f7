package main

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// xcaddyManifest is xcaddy.json: what `xcaddy build` needs to produce the
// same binary as this command.
type xcaddyManifest struct {
	CaddyVersion string `json:"caddy_version"`
	Plugins      []struct {
		Module  string `json:"module"`
		Version string `json:"version"`
		Replace string `json:"replace"`
	} `json:"plugins"`
}

// xcaddyCommand is the `xcaddy build` line the manifest stands for.
func (m xcaddyManifest) xcaddyCommand() string {
	cmd := "xcaddy build " + m.CaddyVersion
	for _, p := range m.Plugins {
		cmd += " --with " + p.Module
		if p.Version != "" {
			cmd += "@" + p.Version
		}
		if p.Replace != "" {
			cmd += "=" + p.Replace
		}
	}
	return cmd
}

// TestXcaddyManifest checks that xcaddy.json, go.mod, this main package and
// the README agree on the Caddy version and the plugins.
func TestXcaddyManifest(t *testing.T) {
	var m xcaddyManifest
	data, err := os.ReadFile("../../xcaddy.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	if m.CaddyVersion == "" || len(m.Plugins) == 0 {
		t.Fatalf("xcaddy.json lacks the Caddy version or plugins: %+v", m)
	}

	gomod, _ := os.ReadFile("../../go.mod")
	if !regexp.MustCompile(`(?m)^\s*github.com/caddyserver/caddy/v2 ` + regexp.QuoteMeta(m.CaddyVersion) + `$`).Match(gomod) {
		t.Errorf("go.mod does not require github.com/caddyserver/caddy/v2 %s", m.CaddyVersion)
	}
	main, _ := os.ReadFile("main.go")
	for _, p := range m.Plugins {
		if !strings.Contains(string(main), `"`+p.Module+`"`) {
			t.Errorf("cmd/caddy/main.go does not import plugin %s", p.Module)
		}
	}
	readme, _ := os.ReadFile("../../README.md")
	if want := m.xcaddyCommand(); !strings.Contains(string(readme), want) {
		t.Errorf("README.md does not show %q", want)
	}
}
