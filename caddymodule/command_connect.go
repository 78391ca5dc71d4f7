package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge"
)

// connectKeyEnv holds the API key when no flag gives one.
const connectKeyEnv = "MCP_BRIDGE_API_KEY"

func connectCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "connect <url>",
		Short: "Serve a remote MCP endpoint to a stdio client (a desktop client's command)",
		Long: `
Serves, on stdin and stdout, the remote MCP endpoint at <url> (this
bridge's /mcp, any Streamable HTTP server, or a legacy SSE endpoint), so
that a client that only launches commands, such as Claude Desktop or an
editor, reaches it with one command line:

  {"command": "caddy", "args": ["mcp-bridge", "connect",
    "https://mcp.example.com/mcp", "--api-key-file", "~/.config/caddy-mcp-bridge/api-key"]}

Every message passes unchanged both ways. The API key comes from
--api-key, --api-key-file (its first line that is not empty or a #
comment) or $MCP_BRIDGE_API_KEY, and goes as Authorization: Bearer, or
raw in the header --key-header names. While the remote is down (a
restart), messages are sent again for --retry-for; a session the remote
forgot is opened again, and the client is told with a log message. Logs
go to stderr; it exits when stdin closes, ending the remote session.

With --oauth, a remote that takes OAuth access tokens gets one: the first
time, the connector prints a sign-in URL on stderr and opens it in a
browser, and keeps the tokens in the user's config directory
(caddy-mcp-bridge/tokens/, readable by the user alone) for later starts,
refreshing them as they expire.
`,
		Args: cobra.ExactArgs(1),
		RunE: runConnect,
	}
	f := cmd.Flags()
	f.String("api-key", "", "the API key (visible to other users in the process list: prefer --api-key-file or $"+connectKeyEnv+")")
	f.String("api-key-file", "", "read the API key from this file (~ is the home directory)")
	f.String("key-header", "Authorization", "the header that carries the key: Authorization sends \"Bearer <key>\", any other the key alone (such as X-API-Key)")
	f.StringArray("header", nil, `send this header with every request, as "Name: value" (repeatable)`)
	f.Bool("insecure", false, "do not verify the remote's TLS certificate (for a Caddy with tls internal)")
	f.Duration("retry-for", bridge.DefaultConnectRetryFor, "how long to send a message again while the remote is down, before the request fails (0: not at all)")
	f.String("transport", "", "streamable or sse (default: Streamable HTTP, then legacy SSE if the remote does not take it)")
	f.String("max-message-size", "16MiB", "the largest message relayed either way")
	f.Bool("oauth", false, "sign in with OAuth when the remote asks (a browser opens; the tokens are kept in the user's config directory)")
	f.Bool("no-browser", false, "with --oauth, only print the sign-in URL")
	f.Bool("verbose", false, "log what happens in detail")
	return cmd
}

func runConnect(cmd *cobra.Command, args []string) error {
	f := cmd.Flags()
	cfg := bridge.ConnectConfig{URL: args[0]}
	cfg.Insecure, _ = f.GetBool("insecure")
	cfg.RetryFor, _ = f.GetDuration("retry-for")
	if cfg.RetryFor == 0 {
		cfg.RetryFor = -1 // asked for no retry: zero would mean the default
	}
	cfg.Transport, _ = f.GetString("transport")
	size, _ := f.GetString("max-message-size")
	n, err := humanize.ParseBytes(size)
	if err != nil || n == 0 || n > 1<<30 {
		return fmt.Errorf("--max-message-size %q: want a size such as 16MiB, at most 1GiB", size)
	}
	cfg.MaxMessageSize = int(n)
	if cfg.Header, err = connectHeaders(cmd); err != nil {
		return err
	}
	verbose, _ := f.GetBool("verbose")
	logger := connectLogger(verbose)
	defer logger.Sync()
	cfg.Logger = logger
	cfg.AuthHint = "give the API key with --api-key-file, --api-key or $" + connectKeyEnv + ", or sign in with --oauth"
	if oauth, _ := f.GetBool("oauth"); oauth {
		if cfg.Header.Get("Authorization") != "" {
			return errors.New("--oauth sends the access token in Authorization: give an API key in another header (--key-header), or none")
		}
		noBrowser, _ := f.GetBool("no-browser")
		if cfg.Auth, err = newConnectOAuth(cfg.URL, !noBrowser, os.Stderr, logger); err != nil {
			return err
		}
		cfg.AuthHint = ""
	}

	// Errors in the flags are the user's to fix, with the usage; from here
	// on they are not about usage.
	cmd.SilenceUsage = true
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = bridge.Connect(ctx, cfg, os.Stdin, os.Stdout)
	if errors.Is(err, context.Canceled) {
		logger.Info("stopped by a signal")
		return nil
	}
	return err
}

// connectHeaders are the headers of every request: --header, then the
// API key in --key-header.
func connectHeaders(cmd *cobra.Command) (http.Header, error) {
	f := cmd.Flags()
	h := http.Header{}
	extra, _ := f.GetStringArray("header")
	for _, line := range extra {
		name, value, ok := strings.Cut(line, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf(`--header %q: want "Name: value"`, line)
		}
		h.Add(textproto.CanonicalMIMEHeaderKey(name), strings.TrimSpace(value))
	}
	key, err := connectKey(cmd)
	if err != nil || key == "" {
		return h, err
	}
	header, _ := f.GetString("key-header")
	header = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(header))
	if header == "" {
		return nil, errors.New("--key-header is empty")
	}
	if header == "Authorization" {
		key = "Bearer " + key
	}
	h.Set(header, key)
	return h, nil
}

// connectKey is the API key of --api-key, --api-key-file or the
// environment, or "" for none.
func connectKey(cmd *cobra.Command) (string, error) {
	f := cmd.Flags()
	key, _ := f.GetString("api-key")
	file, _ := f.GetString("api-key-file")
	switch {
	case key != "" && file != "":
		return "", errors.New("give --api-key or --api-key-file, not both")
	case key != "":
		return key, nil
	case file != "":
		keys, err := readKeyFile(fileKeys{}, expandPath(file), time.Now())
		if err != nil {
			return "", fmt.Errorf("--api-key-file: %w", err)
		}
		return keys[0].key, nil
	}
	return os.Getenv(connectKeyEnv), nil
}

// connectLogger logs to stderr, one line an entry, as a desktop client
// shows a server's stderr: stdout carries the protocol.
func connectLogger(verbose bool) *zap.Logger {
	level := zapcore.InfoLevel
	if verbose {
		level = zapcore.DebugLevel
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	enc.EncodeLevel = zapcore.CapitalLevelEncoder
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stderr), level)
	return zap.New(core).Named("mcp-bridge connect")
}
