package caddymodule

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// An API key file holds the current key and nothing else, so that
// clients can read it with $(cat file). Earlier keys, still valid until
// the time in their "until=" field (`caddy mcp-bridge key rotate
// --overlap` writes them), are in a sibling file, the key file's name with
// ".previous" added, one a line. Lines starting with # are comments in
// both (a key file of the earlier format, the current key first, then
// earlier keys with their until= fields, is read the same way).
//
//	mcp-api-key:           k3JvbS1hLXN0cm9uZy1yYW5kb20ta2V5LTMyLWJ5dGVz
//	mcp-api-key.previous:  b2xkLWtleS1zdGlsbC12YWxpZC1mb3ItYS1kYXk until=2026-11-26T09:00:00Z

// previousKeysPath is where the earlier keys of the key file at path are.
func previousKeysPath(path string) string { return path + ".previous" }

// keyFileEntry is one key of a key file.
type keyFileEntry struct {
	key   string
	until time.Time // zero: no expiry
}

// newAPIKey returns a random key of 256 bits, URL-safe.
func newAPIKey() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// readKeyFile returns the keys of a key file still valid at now, the
// current one first.
func readKeyFile(path string, now time.Time) ([]keyFileEntry, error) {
	keys, err := readKeyLines(path, now)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 || !keys[0].until.IsZero() {
		return nil, fmt.Errorf("%s holds no valid key", path)
	}
	previous, err := readKeyLines(previousKeysPath(path), now)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return append(keys, previous...), nil
}

// readKeyLines returns the keys of one file still valid at now.
func readKeyLines(path string, now time.Time) ([]keyFileEntry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys []keyFileEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		entry := keyFileEntry{key: fields[0]}
		for _, f := range fields[1:] {
			v, ok := strings.CutPrefix(f, "until=")
			if !ok {
				return nil, fmt.Errorf("%s:%d: unknown field %q", path, line, f)
			}
			if entry.until, err = time.Parse(time.RFC3339, v); err != nil {
				return nil, fmt.Errorf("%s:%d: %v", path, line, err)
			}
		}
		if entry.until.IsZero() || now.Before(entry.until) {
			keys = append(keys, entry)
		}
	}
	return keys, nil
}

// writeKeyFile writes the current key (the first) to path, and the others
// to its sibling, each with mode 0600, creating the directory with mode
// 0700 if needed. Each file is replaced atomically, the sibling first, so
// that a reader that sees the new key sees the keys it keeps valid too.
func writeKeyFile(path string, keys []keyFileEntry) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if len(keys) > 1 {
		var b strings.Builder
		b.WriteString("# Earlier API keys of caddy-mcp-bridge, valid until the time given. Keep this file secret.\n")
		for _, k := range keys[1:] {
			b.WriteString(k.key + " until=" + k.until.UTC().Format(time.RFC3339) + "\n")
		}
		if err := writeFileAtomic(previousKeysPath(path), b.String()); err != nil {
			return err
		}
	} else if err := os.Remove(previousKeysPath(path)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return writeFileAtomic(path, keys[0].key+"\n")
}

// writeFileAtomic replaces path with a file of mode 0600 holding content.
func writeFileAtomic(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".keyfile-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// rotateKeyFile makes a new key the current one. The key it replaces stays
// valid for overlap (not at all when zero); earlier keys stay valid for as
// long as an earlier rotation promised.
func rotateKeyFile(path string, overlap time.Duration, now time.Time) (string, error) {
	old, err := readKeyFile(path, now)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	key := newAPIKey()
	keys := []keyFileEntry{{key: key}}
	for i, k := range old {
		if i == 0 || k.until.IsZero() { // the current key (or one of a file that promised no end)
			if overlap <= 0 {
				continue
			}
			k.until = now.Add(overlap)
		}
		keys = append(keys, k)
	}
	return key, writeKeyFile(path, keys)
}

// expandPath expands a leading ~ (the user's home directory) in a path,
// as a shell would: "~" and "~/…" (not "~user").
func expandPath(path string) string {
	if path != "~" && !strings.HasPrefix(path, "~/") && !strings.HasPrefix(path, `~\`) {
		return path
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return path
	}
	return filepath.Join(home, path[1:])
}
