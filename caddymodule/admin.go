package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves the bridge's status on Caddy's admin endpoint:
//
//	GET    /mcp_bridge/                 pools, their children and sessions; principals under policies, with their use
//	GET    /mcp_bridge/<name>/          the same, for the server of that name
//	DELETE /mcp_bridge/sessions/<id>    ends a session (8+ characters of its id)
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.mcp_bridge",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/mcp_bridge/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// poolStatus is one pool in the admin report.
type poolStatus struct {
	// ConfigHash names the child configuration the pool runs.
	ConfigHash string `json:"config_hash"`
	bridge.Status
}

func (a adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	path := strings.TrimPrefix(r.URL.Path, "/mcp_bridge")
	name, rest, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	switch {
	case path == "/" && r.Method == http.MethodGet:
		return a.list(w, "")
	case strings.HasPrefix(path, "/sessions/") && r.Method == http.MethodDelete:
		return a.endSession(w, strings.TrimPrefix(path, "/sessions/"))
	case path == "/" || strings.HasPrefix(path, "/sessions/"):
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed", r.Method)}
	case name != "" && rest == "" && r.Method == http.MethodGet:
		return a.list(w, name)
	case name != "" && rest == "":
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed", r.Method)}
	}
	return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no such resource: %s", r.URL.Path)}
}

// list reports the pools, of the server named server or of all.
func (a adminAPI) list(w http.ResponseWriter, server string) error {
	pools := []poolStatus{}
	backends.Range(func(key, value any) bool {
		if b := value.(backendHandle); server == "" || b.Name() == server {
			pools = append(pools, poolStatus{ConfigHash: key.(string)[:12], Status: b.Status()})
		}
		return true
	})
	if server != "" && len(pools) == 0 {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no mcp_bridge server is named %q", server)}
	}
	sort.Slice(pools, func(i, j int) bool { return pools[i].ConfigHash < pools[j].ConfigHash })
	open := map[[2]string]int{}
	for _, p := range pools {
		for _, s := range p.Sessions {
			open[[2]string{s.Site, s.Key}]++
		}
	}
	principals := usageStatus(func(site, principal string) int { return open[[2]string{site, principal}] })
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"pools": pools, "principals": principals})
}

func (a adminAPI) endSession(w http.ResponseWriter, id string) error {
	ended := false
	var err error
	backends.Range(func(_, value any) bool {
		ended, err = value.(backendHandle).EndSession(id, "ended through the admin API")
		return !ended && err == nil
	})
	switch {
	case err != nil:
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	case !ended:
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no session %q", id)}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Interface guards
var _ caddy.AdminRouter = adminAPI{}
