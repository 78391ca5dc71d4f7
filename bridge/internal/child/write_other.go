//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package child

import "os"

// nowWriter writes nothing where pipes block (Windows): newNowWriter
// returns nil, and the writer goroutine writes every message.
type nowWriter struct{}

func newNowWriter(*os.File) *nowWriter { return nil }

func (*nowWriter) write([]byte) (int, error) { return 0, nil }
