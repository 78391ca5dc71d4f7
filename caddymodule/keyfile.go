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

// An API key file holds one key per line. The first is the current key;
// the others are earlier keys still valid until the time in their
// "until=" field, which `caddy mcp-bridge key rotate --overlap` writes.
// Lines starting with # are comments.
//
//	# written by caddy mcp-bridge key rotate
//	k3JvbS1hLXN0cm9uZy1yYW5kb20ta2V5LTMyLWJ5dGVz
//	b2xkLWtleS1zdGlsbC12YWxpZC1mb3ItYS1kYXk until=2026-11-26T09:00:00Z

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

// readKeyFile returns the keys of a key file still valid at now.
func readKeyFile(path string, now time.Time) ([]keyFileEntry, error) {
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
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s holds no valid key", path)
	}
	return keys, nil
}

// writeKeyFile writes keys to path with mode 0600, creating its directory
// with mode 0700 if needed. It replaces the file atomically.
func writeKeyFile(path string, keys []keyFileEntry) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("# API keys of caddy-mcp-bridge: the first is current. Keep this file secret.\n")
	for _, k := range keys {
		b.WriteString(k.key)
		if !k.until.IsZero() {
			b.WriteString(" until=" + k.until.UTC().Format(time.RFC3339))
		}
		b.WriteByte('\n')
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".keyfile-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.WriteString(b.String()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// loadOrCreateKeyFile reads a key file, first writing one with a new key if
// it does not exist. created reports that it did.
func loadOrCreateKeyFile(path string, now time.Time) (keys []keyFileEntry, created bool, err error) {
	keys, err = readKeyFile(path, now)
	if !errors.Is(err, fs.ErrNotExist) {
		return keys, false, err
	}
	keys = []keyFileEntry{{key: newAPIKey()}}
	if err := writeKeyFile(path, keys); err != nil {
		return nil, false, fmt.Errorf("creating API key file: %w", err)
	}
	return keys, true, nil
}

// rotateKeyFile puts a new key first; the current keys stay valid for
// overlap (none when zero).
func rotateKeyFile(path string, overlap time.Duration, now time.Time) (string, error) {
	old, err := readKeyFile(path, now)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	key := newAPIKey()
	keys := []keyFileEntry{{key: key}}
	if overlap > 0 {
		for _, k := range old {
			if k.until.IsZero() || k.until.After(now.Add(overlap)) {
				k.until = now.Add(overlap)
			}
			keys = append(keys, k)
		}
	}
	return key, writeKeyFile(path, keys)
}
