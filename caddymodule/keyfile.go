package caddymodule

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
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

// A key file may also live in Caddy's storage (api_key_storage), under a
// storage key instead of a path, so that every instance behind one front
// reads the same keys: the file system on one machine, a distributed
// storage module across many.

// keyStore is where key files are: the file system or Caddy's storage.
// Names are paths, or storage keys.
type keyStore interface {
	// read returns a file's content, or an error wrapping fs.ErrNotExist.
	read(name string) ([]byte, error)
	// write replaces a file, so that no reader sees it half written.
	write(name, content string) error
	// remove deletes a file; one that does not exist is an error wrapping
	// fs.ErrNotExist.
	remove(name string) error
	// modified is when a file last changed; zero if it does not exist.
	modified(name string) time.Time
	// lock keeps other processes from creating the file at name until
	// unlock is called (storage only: on the file system one process
	// serves a path, and handlers within it agree through pendingKeys).
	lock(name string) (unlock func(), err error)
}

// fileKeys keeps key files in the file system: files of mode 0600, in a
// directory of mode 0700.
type fileKeys struct{}

func (fileKeys) read(name string) ([]byte, error) { return os.ReadFile(name) }

func (fileKeys) write(name, content string) error {
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return err
	}
	return writeFileAtomic(name, content)
}

func (fileKeys) remove(name string) error { return os.Remove(name) }

func (fileKeys) modified(name string) time.Time {
	if info, err := os.Stat(name); err == nil {
		return info.ModTime()
	}
	return time.Time{}
}

func (fileKeys) lock(string) (func(), error) { return func() {}, nil }

// storageKeys keeps key files in Caddy's storage. Each operation is
// bounded in time: a storage that hangs delays a key check (made under
// keyFile.mu) by keyStorageTimeout at most.
type storageKeys struct{ storage certmagic.Storage }

// keyStorageTimeout bounds each operation on a key file in storage.
const keyStorageTimeout = 10 * time.Second

func (s storageKeys) read(name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), keyStorageTimeout)
	defer cancel()
	return s.storage.Load(ctx, name)
}

func (s storageKeys) write(name, content string) error {
	ctx, cancel := context.WithTimeout(context.Background(), keyStorageTimeout)
	defer cancel()
	return s.storage.Store(ctx, name, []byte(content))
}

func (s storageKeys) remove(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), keyStorageTimeout)
	defer cancel()
	return s.storage.Delete(ctx, name)
}

func (s storageKeys) modified(name string) time.Time {
	ctx, cancel := context.WithTimeout(context.Background(), keyStorageTimeout)
	defer cancel()
	if info, err := s.storage.Stat(ctx, name); err == nil {
		return info.Modified
	}
	return time.Time{}
}

func (s storageKeys) lock(name string) (func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), keyStorageTimeout)
	defer cancel()
	if err := s.storage.Lock(ctx, name); err != nil {
		return nil, err
	}
	return func() { _ = s.storage.Unlock(context.Background(), name) }, nil
}

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
func readKeyFile(st keyStore, path string, now time.Time) ([]keyFileEntry, error) {
	keys, err := readKeyLines(st, path, now)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 || !keys[0].until.IsZero() {
		return nil, fmt.Errorf("%s holds no valid key", path)
	}
	previous, err := readKeyLines(st, previousKeysPath(path), now)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return append(keys, previous...), nil
}

// readKeyLines returns the keys of one file still valid at now.
func readKeyLines(st keyStore, path string, now time.Time) ([]keyFileEntry, error) {
	data, err := st.read(path)
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
// to its sibling. Each file is replaced whole, the sibling first, so that a reader that sees
// the new key sees the keys it keeps valid too.
func writeKeyFile(st keyStore, path string, keys []keyFileEntry) error {
	if len(keys) > 1 {
		var b strings.Builder
		b.WriteString("# Earlier API keys of caddy-mcp-bridge, valid until the time given. Keep this file secret.\n")
		for _, k := range keys[1:] {
			b.WriteString(k.key + " until=" + k.until.UTC().Format(time.RFC3339) + "\n")
		}
		if err := st.write(previousKeysPath(path), b.String()); err != nil {
			return err
		}
	} else if err := st.remove(previousKeysPath(path)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return st.write(path, keys[0].key+"\n")
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
func rotateKeyFile(st keyStore, path string, overlap time.Duration, now time.Time) (string, error) {
	old, err := readKeyFile(st, path, now)
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
	return key, writeKeyFile(st, path, keys)
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
