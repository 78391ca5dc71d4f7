package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "mcp-bridge",
		Usage: "key show|rotate [--config <path>] [--file <path>]",
		Short: "Tools for the mcp_bridge module",
		Long: `
Tools for operators of the mcp_bridge module.

  caddy mcp-bridge key show     prints the current key of an API key file
  caddy mcp-bridge key rotate   writes a new key, optionally keeping the old
                                one valid for --overlap; run caddy reload after

The key file is the one given with --file, or else the one api_key_file names
in the config (--config, default ./Caddyfile).
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(keyCommand())
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
			path, err := keyFilePath(cmd)
			if err != nil {
				return err
			}
			keys, err := readKeyFile(path, time.Now())
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
			path, err := keyFilePath(cmd)
			if err != nil {
				return err
			}
			overlap, _ := cmd.Flags().GetDuration("overlap")
			newKey, err := rotateKeyFile(path, overlap, time.Now())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "wrote a new key to %s:\n%s\n", path, newKey)
			if overlap > 0 {
				fmt.Fprintf(out, "the previous key stays valid for %v.\n", overlap)
			}
			fmt.Fprintln(out, "run `caddy reload` to apply it; sessions stay open.")
			return nil
		},
	}
	rotate.Flags().Duration("overlap", 0, "keep the previous key valid for this long")
	for _, c := range []*cobra.Command{show, rotate} {
		c.Flags().StringP("config", "c", "", "Caddy config that names the api_key_file (default ./Caddyfile)")
		c.Flags().StringP("adapter", "a", "", "name of the config adapter")
		c.Flags().String("file", "", "the API key file (instead of reading the config)")
		key.AddCommand(c)
	}
	return key
}

// keyFilePath is --file, or the one api_key_file of the config.
func keyFilePath(cmd *cobra.Command) (string, error) {
	if file, _ := cmd.Flags().GetString("file"); file != "" {
		return file, nil
	}
	configFile, _ := cmd.Flags().GetString("config")
	adapter, _ := cmd.Flags().GetString("adapter")
	cfg, _, _, err := caddycmd.LoadConfig(configFile, adapter)
	if err != nil {
		return "", err
	}
	if cfg == nil {
		return "", errors.New("no config found: give --config or --file")
	}
	var tree any
	if err := json.Unmarshal(cfg, &tree); err != nil {
		return "", err
	}
	files := findKeyFiles(tree, nil)
	switch len(files) {
	case 0:
		return "", errors.New("the config names no api_key_file")
	case 1:
		return caddy.NewReplacer().ReplaceAll(files[0], ""), nil
	}
	return "", fmt.Errorf("the config names %d api_key_files (%v): choose one with --file", len(files), files)
}

// findKeyFiles collects the distinct api_key_file values in a JSON config.
func findKeyFiles(node any, found []string) []string {
	switch n := node.(type) {
	case map[string]any:
		if f, ok := n["api_key_file"].(string); ok && n["handler"] == "mcp_bridge" {
			for _, have := range found {
				if have == f {
					return found
				}
			}
			found = append(found, f)
		}
		for _, v := range n {
			found = findKeyFiles(v, found)
		}
	case []any:
		for _, v := range n {
			found = findKeyFiles(v, found)
		}
	}
	return found
}
