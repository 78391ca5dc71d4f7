package connector

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test ends with every goroutine of the connector ended: the
// relays, the streams, the writer, and the HTTP connections.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
