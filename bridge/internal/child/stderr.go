package child

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"time"

	"go.uber.org/zap"
)

// What of a child's stderr reaches the log: each line up to stderrLineMax
// bytes (the rest is counted), a burst of stderrBurst lines, then
// stderrPerSecond a second; lines beyond that are counted, and the count
// is logged with the next line that passes. A child that floods stderr
// (one wrote 64 MiB in 5 s) cannot flood Caddy's log, and is never
// blocked on a full stderr pipe: everything is read.
const (
	stderrLineMax   = 4 << 10
	stderrBurst     = 100
	stderrPerSecond = 10
)

func (p *Process) logStderr(r io.ReadCloser) {
	defer r.Close()
	br := bufio.NewReaderSize(r, stderrLineMax)
	tokens, last := float64(stderrBurst), time.Now()
	suppressed := 0
	for {
		chunk, err := br.ReadSlice('\n')
		line := string(bytes.TrimRight(chunk, "\r\n"))
		truncated := 0
		for errors.Is(err, bufio.ErrBufferFull) {
			chunk, err = br.ReadSlice('\n')
			truncated += len(bytes.TrimRight(chunk, "\r\n"))
		}
		if line != "" || truncated > 0 {
			now := time.Now()
			tokens = min(stderrBurst, tokens+now.Sub(last).Seconds()*stderrPerSecond)
			last = now
			if tokens < 1 {
				suppressed++
			} else {
				tokens--
				if suppressed > 0 {
					p.logger.Warn("child stderr: lines suppressed, the child writes too much", zap.Int("lines", suppressed))
					suppressed = 0
				}
				fields := []zap.Field{zap.String("line", line)}
				if truncated > 0 {
					fields = append(fields, zap.Int("truncated_bytes", truncated))
				}
				p.logger.Info("child stderr", fields...)
			}
		}
		if err != nil {
			break
		}
	}
	if suppressed > 0 {
		p.logger.Warn("child stderr: lines suppressed, the child writes too much", zap.Int("lines", suppressed))
	}
}
