package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"
)

func statusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [<server name>]",
		Short: "Show the servers, pools, children and sessions of a running Caddy",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			address, _ := cmd.Flags().GetString("address")
			configFile, _ := cmd.Flags().GetString("config")
			adapter, _ := cmd.Flags().GetString("adapter")
			if configFile == "" && fileExists("Caddyfile") {
				configFile = "Caddyfile" // as caddy reload finds it
			}
			address, err := caddycmd.DetermineAdminAPIAddress(address, nil, configFile, adapter)
			if err != nil {
				return err
			}
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			return printStatus(cmd.OutOrStdout(), address, name)
		},
	}
	cmd.Flags().String("address", "", "Caddy's admin endpoint (default: the config's, else localhost:2019)")
	cmd.Flags().StringP("config", "c", "", "the config whose admin endpoint to ask (default ./Caddyfile)")
	cmd.Flags().StringP("adapter", "a", "", "name of the config adapter")
	return cmd
}

// printStatus prints the pools of the server named name, or of all.
func printStatus(out io.Writer, address, name string) error {
	client := &http.Client{Timeout: 10 * time.Second}
	path := "/mcp_bridge/"
	if name != "" {
		path += url.PathEscape(name) + "/"
	}
	resp, err := client.Get("http://" + address + path)
	if err != nil {
		return fmt.Errorf("asking Caddy's admin endpoint at %s: %v", address, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("admin endpoint answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var report struct {
		Pools []poolStatus `json:"pools"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&report); err != nil {
		return err
	}
	if len(report.Pools) == 0 {
		fmt.Fprintln(out, "no mcp_bridge pools are running")
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for i, p := range report.Pools {
		if i > 0 {
			fmt.Fprintln(tw)
		}
		fmt.Fprintf(tw, "SERVER\tPOOL\tISOLATION\tCHILDREN\tSESSIONS\tCRASHES\tCOMMAND\n")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", p.Server, p.ConfigHash, p.Isolation, len(p.Children), len(p.Sessions), p.Crashes, strings.Join(p.Command, " "))
		if p.LastExit != "" || p.LastError != "" {
			fmt.Fprintf(tw, "  last exit: %s  last error: %s\n", p.LastExit, p.LastError)
		}
		if len(p.Sessions) > 0 {
			fmt.Fprintf(tw, "\n  SESSION\tTRANSPORT\tPROTOCOL\tKEY\tPID\tAGE\tIDLE\tIN FLIGHT\n")
			for _, s := range p.Sessions {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\n", s.ID, s.Transport, s.ProtocolVersion, s.Key, s.PID,
					seconds(s.AgeSeconds), seconds(s.IdleSeconds), s.InFlight)
			}
		}
	}
	return tw.Flush()
}

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Second).String()
}

func checkCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check --url <url>",
		Short: "Connect as an MCP client and list the tools; exit 0 if that works",
		RunE: func(cmd *cobra.Command, _ []string) error {
			url, _ := cmd.Flags().GetString("url")
			key, _ := cmd.Flags().GetString("api-key")
			timeout, _ := cmd.Flags().GetDuration("timeout")
			if url == "" {
				return fmt.Errorf("--url is required, such as http://localhost:8765/mcp")
			}
			return check(cmd.Context(), cmd.OutOrStdout(), url, key, timeout)
		},
	}
	cmd.Flags().String("url", "", "the Streamable HTTP endpoint, such as https://mcp.example.com/mcp")
	cmd.Flags().String("api-key", "", "the API key to present, as Authorization: Bearer")
	cmd.Flags().Duration("timeout", 30*time.Second, "give up after this long")
	return cmd
}

// bearer adds an API key to every request.
type bearer struct {
	key  string
	next http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return b.next.RoundTrip(r)
}

// withDeadline bounds every request by one deadline.
type withDeadline struct {
	deadline time.Time
	next     http.RoundTripper
}

func (d withDeadline) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithDeadline(r.Context(), d.deadline)
	resp, err := d.next.RoundTrip(r.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelOnClose releases a request's context with its body.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	c.cancel()
	return c.ReadCloser.Close()
}

// refusals keeps the reason of the last error answer, from its JSON-RPC
// error, so that check can say why rather than just "Service
// Unavailable".
type refusals struct {
	next http.RoundTripper
	mu   sync.Mutex
	last string
}

func (f *refusals) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := f.next.RoundTrip(r)
	if err != nil || resp.StatusCode < 400 {
		return resp, err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var answer struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &answer) == nil && answer.Error.Message != "" {
		f.mu.Lock()
		f.last = fmt.Sprintf("%d %s", resp.StatusCode, answer.Error.Message)
		f.mu.Unlock()
	}
	return resp, nil
}

func (f *refusals) reason() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

func check(ctx context.Context, out io.Writer, endpoint, key string, timeout time.Duration) error {
	if ctx == nil {
		ctx = context.Background()
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%s: check speaks Streamable HTTP; give it the http(s) URL of the /mcp endpoint, such as http://127.0.0.1:8765/mcp", endpoint)
	}
	hint := ""
	if p := strings.TrimSuffix(u.Path, "/"); !strings.HasSuffix(p, "/mcp") {
		hint = " (check speaks Streamable HTTP: is " + endpoint + " the /mcp endpoint? /sse and /ws are other transports)"
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	// The SDK makes several requests, some with contexts of its own: each
	// gets the one deadline.
	refused := &refusals{next: withDeadline{deadline: deadline, next: http.DefaultTransport}}
	var transport http.RoundTripper = refused
	if key != "" {
		transport = bearer{key: key, next: transport}
	}
	httpClient := &http.Client{Transport: transport}
	client := mcp.NewClient(&mcp.Implementation{Name: "caddy-mcp-bridge-check", Version: "1"}, nil)
	start := time.Now()
	session, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: httpClient, DisableStandaloneSSE: true}, nil)
	if err != nil {
		if reason := refused.reason(); reason != "" {
			return fmt.Errorf("connecting to %s: %v: the bridge answered %s%s", endpoint, err, reason, hint)
		}
		return fmt.Errorf("connecting to %s: %v%s", endpoint, err, hint)
	}
	defer session.Close()
	tools, err := session.ListTools(ctx, nil)
	if err != nil {
		return fmt.Errorf("listing tools: %v", err)
	}
	info := session.InitializeResult()
	fmt.Fprintf(out, "ok: %s %s, protocol %s, %d tools, in %v\n", info.ServerInfo.Name, info.ServerInfo.Version,
		info.ProtocolVersion, len(tools.Tools), time.Since(start).Round(time.Millisecond))
	return nil
}
