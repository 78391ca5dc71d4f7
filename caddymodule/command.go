package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/certmagic"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "mcp-bridge",
		Usage: "serve|status|check|key ...",
		Short: "Run and operate stdio MCP servers behind Caddy",
		Long: `
Tools for the mcp_bridge module.

  caddy mcp-bridge serve --stdio "<command>" [--host 127.0.0.1] [--port 8765]
        [--domain <name>] [--api-key-file <path> | --no-auth] [--cors <origin>]...
        [--isolation session|shared]
      puts a stdio MCP server on the network in one command: on this machine
      only and with an API key unless told otherwise, with automatic HTTPS
      when --domain is given.
  caddy mcp-bridge status [--address <admin>] [--config <path>]
      shows the pools, children and sessions of a running Caddy.
  caddy mcp-bridge check --url <url> [--api-key <key>]
      connects as an MCP client and lists the tools; exits 0 if that works.
  caddy mcp-bridge key show|rotate [--config <path>] [--file <path>] [--overlap <duration>]
      (without --config or --file: the api_key_file of ./Caddyfile, or the
      key file of caddy mcp-bridge serve)
      prints or replaces the key of an api_key_file (the file holds the
      current key alone: clients may read it with $(cat <file>)); a running
      Caddy applies a rotation within about two seconds, with no reload.
  caddy mcp-bridge connect <url> [--api-key-file <path> | --api-key <key>]
        [--key-header <name>] [--header "Name: value"]... [--insecure]
        [--retry-for <duration>] [--transport streamable|sse]
      serves the remote MCP endpoint at <url> to a stdio client on stdin and
      stdout: the one command line a desktop client launches. It retries
      while the remote is down and opens a new session when the remote
      forgot the old one.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(serveCommand(), statusCommand(), checkCommand(), keyCommand(), connectCommand())
		},
	})
}

func keyCommand() *cobra.Command {
	key := &cobra.Command{
		Use:   "key",
		Short: "Show or rotate the key of an api_key_file",
	}
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the current key of the API key file",
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, path, where, release, err := keyFileOf(cmd)
			if err != nil {
				return err
			}
			defer release()
			keys, err := readKeyFile(st, path, time.Now())
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("no key file at %s: %w", where, err)
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), keys[0].key)
			return nil
		},
	}
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Write a new key to the API key file",
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, path, where, release, err := keyFileOf(cmd)
			if err != nil {
				return err
			}
			defer release()
			overlap, _ := cmd.Flags().GetDuration("overlap")
			newKey, err := rotateKeyFile(st, path, overlap, time.Now())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "wrote a new key to %s:\n%s\n", where, newKey)
			if overlap > 0 {
				fmt.Fprintf(out, "the previous key stays valid for %v.\n", overlap)
			}
			fmt.Fprintln(out, "a running Caddy picks it up within seconds (`caddy reload --force` applies it at once); sessions stay open.")
			return nil
		},
	}
	rotate.Flags().Duration("overlap", 0, "keep the previous key valid for this long")
	for _, c := range []*cobra.Command{show, rotate} {
		c.Flags().StringP("config", "c", "", "Caddy config that names the api_key_file or api_key_storage (default ./Caddyfile)")
		c.Flags().StringP("adapter", "a", "", "name of the config adapter")
		c.Flags().String("file", "", "the API key file (instead of reading the config)")
		key.AddCommand(c)
	}
	return key
}

// keyFileOf is --file, or the one api_key_file or api_key_storage of the
// config (the latter in the config's storage), or, with no config at hand,
// the key file that serve uses by default, if it exists. It also returns
// where the file is, for messages, and a func that releases the storage.
func keyFileOf(cmd *cobra.Command) (st keyStore, path, where string, release func(), err error) {
	release = func() {}
	if file, _ := cmd.Flags().GetString("file"); file != "" {
		return fileKeys{}, expandPath(file), expandPath(file), release, nil
	}
	configFile, _ := cmd.Flags().GetString("config")
	adapter, _ := cmd.Flags().GetString("adapter")
	cfg, _, _, err := caddycmd.LoadConfig(configFile, adapter)
	if err != nil {
		return nil, "", "", nil, err
	}
	if cfg == nil {
		if file := defaultKeyFile(); configFile == "" && fileExists(file) {
			return fileKeys{}, file, file, release, nil
		}
		return nil, "", "", nil, errors.New("no config found (no ./Caddyfile), and no key file of caddy mcp-bridge serve: give --config or --file")
	}
	var tree any
	if err := json.Unmarshal(cfg, &tree); err != nil {
		return nil, "", "", nil, err
	}
	files := findKeyFiles(tree, "api_key_file", nil)
	stored := findKeyFiles(tree, "api_key_storage", nil)
	repl := caddy.NewReplacer()
	switch {
	case len(files)+len(stored) == 0:
		return nil, "", "", nil, errors.New("the config names no api_key_file or api_key_storage")
	case len(files)+len(stored) > 1:
		return nil, "", "", nil, fmt.Errorf("the config names %d key files (%v): choose a file with --file, or a config that names one", len(files)+len(stored), append(files, stored...))
	case len(files) == 1:
		path := expandPath(repl.ReplaceAll(files[0], ""))
		return fileKeys{}, path, path, release, nil
	}
	storage, release, err := configStorage(cfg)
	if err != nil {
		return nil, "", "", nil, err
	}
	key := repl.ReplaceAll(stored[0], "")
	return storageKeys{storage}, key, fmt.Sprintf("%s in the storage %v", key, storage), release, nil
}

// configStorage is the storage a config names, as Caddy would set it up:
// its storage module, or the default file system storage (of this user:
// run the command as the user Caddy runs as). release cleans the module
// up once the caller is done with it.
func configStorage(cfgJSON []byte) (storage certmagic.Storage, release func(), err error) {
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return nil, nil, err
	}
	if cfg.StorageRaw == nil {
		return caddy.DefaultStorage, func() {}, nil
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	mod, err := ctx.LoadModule(&cfg, "StorageRaw")
	if err == nil {
		storage, err = mod.(caddy.StorageConverter).CertMagicStorage()
	}
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("loading the config's storage: %v", err)
	}
	return storage, cancel, nil
}

// findKeyFiles collects the distinct values of an mcp_bridge handler's
// field (api_key_file or api_key_storage) in a JSON config.
func findKeyFiles(node any, field string, found []string) []string {
	switch n := node.(type) {
	case map[string]any:
		if f, ok := n[field].(string); ok && n["handler"] == "mcp_bridge" {
			for _, have := range found {
				if have == f {
					return found
				}
			}
			found = append(found, f)
		}
		for _, v := range n {
			found = findKeyFiles(v, field, found)
		}
	case []any:
		for _, v := range n {
			found = findKeyFiles(v, field, found)
		}
	}
	return found
}
