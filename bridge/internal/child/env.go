package child

import (
	"os"
	"runtime"
	"slices"
	"strings"
)

// DefaultInheritedEnv names the variables of the bridge's environment
// that every child gets, as the MCP SDKs' stdio launchers pass them: what
// a program needs to find its tools and its user's files, and nothing that
// holds a secret (cloud credentials, DNS-provider tokens, API keys).
func DefaultInheritedEnv() []string {
	if runtime.GOOS == "windows" {
		return []string{"APPDATA", "HOMEDRIVE", "HOMEPATH", "LOCALAPPDATA", "PATH", "PATHEXT",
			"PROCESSOR_ARCHITECTURE", "PROGRAMFILES", "SYSTEMDRIVE", "SYSTEMROOT", "TEMP", "TMP",
			"USERNAME", "USERPROFILE", "WINDIR", "COMSPEC"}
	}
	return []string{"HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR"}
}

// InheritAll, in Config.Inherit, passes the bridge's whole environment.
const InheritAll = "*"

// childEnv is what the child gets of the bridge's environment, then the
// configuration's own variables: the default names and those cfg.Inherit
// adds (or all of it), never those cfg.UnsetEnv names or cfg.Withhold
// refuses, nor the watchdog's marker.
func childEnv(cfg Config) []string {
	all := slices.Contains(cfg.Inherit, InheritAll)
	wanted := append(DefaultInheritedEnv(), cfg.Inherit...)
	named := func(list []string, name string) bool {
		return slices.ContainsFunc(list, func(n string) bool { return sameName(n, name) })
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		name, value, _ := strings.Cut(kv, "=")
		switch {
		case sameName(name, watchdogEnv), named(cfg.UnsetEnv, name):
			return true
		case !all && !named(wanted, name):
			return true
		}
		return cfg.Withhold != nil && cfg.Withhold(name, value)
	})
	return append(env, withoutVar(cfg.Env, watchdogEnv)...)
}

// sameName compares variable names as the system does: without case on
// Windows.
func sameName(a, b string) bool {
	if runtime.GOOS == "windows" {
		return strings.EqualFold(a, b)
	}
	return a == b
}
