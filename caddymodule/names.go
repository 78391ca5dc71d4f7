package caddymodule

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
)

// Server names: every handler's server has one, which status, the admin
// API (/mcp_bridge/<name>/), metrics (label server), logs (field server)
// and the health report show. A name given in the config must be unique
// among the config's handlers of other child configurations; a name left
// out is made from the command (server-everything for npx -y
// @modelcontextprotocol/server-everything stdio), and may repeat.

// reservedServerNames are admin API paths of their own.
var reservedServerNames = []string{"sessions"}

func checkServerName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("server name %q: use letters, digits, '.', '_' and '-' (up to 64, not starting with a punctuation mark)", name)
	}
	if slices.Contains(reservedServerNames, name) {
		return fmt.Errorf("server name %q is reserved (an admin API path)", name)
	}
	return nil
}

// launchers are programs that run another, named in a later argument.
var launchers = []string{"npx", "uvx", "bunx", "pnpx", "pipx", "node", "deno", "bun", "python", "python3", "py", "uv", "go", "docker", "podman", "java", "cmd", "sh", "bash"}

// defaultServerName names a server after its command: the program, or, for
// a launcher such as npx or python -m, the package or script it runs.
func defaultServerName(argv []string) string {
	if len(argv) == 0 {
		return "mcp"
	}
	name := programName(argv[0])
	if slices.Contains(launchers, strings.ToLower(name)) {
		for _, arg := range argv[1:] {
			if strings.HasPrefix(arg, "-") || arg == "run" || arg == "x" || arg == "exec" || arg == "tool" {
				continue
			}
			name = programName(arg)
			break
		}
	}
	name = strings.Trim(regexp.MustCompile(`[^A-Za-z0-9._-]+`).ReplaceAllString(name, "-"), "-._")
	if name == "" || checkServerName(name) != nil {
		return "mcp"
	}
	return name
}

// programName is the last part of a path or package name, without a
// version or an extension: @scope/server-x@1.2 → server-x, /opt/srv.exe
// → srv, mcp_server_git → mcp_server_git.
func programName(s string) string {
	if i := strings.LastIndexAny(s, `/\`); i >= 0 {
		s = s[i+1:]
	}
	if i := strings.LastIndex(s, "@"); i > 0 {
		s = s[:i]
	}
	for _, ext := range []string{".exe", ".cmd", ".bat", ".js", ".mjs", ".py", ".jar"} {
		s = strings.TrimSuffix(s, ext)
	}
	return s
}

// configNames holds, for each config load, the explicit server names its
// handlers took and the pool each stands for: a second handler of the
// same name and another pool is a config error. A load's entry goes when
// the load ends.
var configNames = struct {
	sync.Mutex
	byLoad map[<-chan struct{}]map[string]string
}{byLoad: make(map[<-chan struct{}]map[string]string)}

// claimServerName records that name stands for pool in ctx's config load.
func claimServerName(ctx caddy.Context, name, pool string) error {
	load := ctx.Done()
	configNames.Lock()
	defer configNames.Unlock()
	names := configNames.byLoad[load]
	if names == nil {
		names = make(map[string]string)
		configNames.byLoad[load] = names
		go func() {
			<-load
			configNames.Lock()
			delete(configNames.byLoad, load)
			configNames.Unlock()
		}()
	}
	if other, taken := names[name]; taken && other != pool {
		return fmt.Errorf("two mcp_bridge handlers are named %q, with different servers: give each its own name", name)
	}
	names[name] = pool
	return nil
}
