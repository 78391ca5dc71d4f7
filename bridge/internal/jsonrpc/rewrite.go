package jsonrpc

import (
	"slices"
	"strconv"
)

// A Splice replaces one value inside a raw JSON message: old must be a
// subslice of the message (as ParseEnvelope and Member return them).
type Splice struct {
	Old []byte
	New []byte
}

// offsetIn returns where sub starts in msg, for a sub sliced from msg.
// Slicing keeps the end of the backing array, so the difference of the
// capacities is the offset.
func offsetIn(msg, sub []byte) int {
	return cap(msg) - cap(sub)
}

// ApplySplices returns a new message with each splice's value replaced.
// The original is not modified: it may still be referenced elsewhere.
func ApplySplices(msg []byte, splices ...Splice) []byte {
	slices.SortFunc(splices, func(a, b Splice) int { return offsetIn(msg, a.Old) - offsetIn(msg, b.Old) })
	size := len(msg)
	for _, s := range splices {
		size += len(s.New) - len(s.Old)
	}
	out := make([]byte, 0, size+1) // +1: Process.Send appends a newline
	pos := 0
	for _, s := range splices {
		off := offsetIn(msg, s.Old)
		out = append(out, msg[pos:off]...)
		out = append(out, s.New...)
		pos = off + len(s.Old)
	}
	return append(out, msg[pos:]...)
}

// BridgeID is an id the multiplexer puts on a message it forwards.
type BridgeID int64

func (id BridgeID) Raw() []byte { return strconv.AppendInt(nil, int64(id), 10) }

// ParseBridgeID reads an id the multiplexer wrote; other tokens give false.
func ParseBridgeID(raw []byte) (BridgeID, bool) {
	n, err := strconv.ParseInt(string(raw), 10, 64)
	return BridgeID(n), err == nil && n > 0
}

// TagRequest returns a copy of a session's request with the bridge's id
// in place of its id and of its progress token, if it has one, which it
// also returns.
func TagRequest(msg []byte, env *Envelope, id BridgeID) (out, token []byte) {
	raw := id.Raw()
	var spliceArray [2]Splice
	splices := append(spliceArray[:0], Splice{Old: env.ID, New: raw})
	if token = ProgressToken(env.Params); token != nil {
		splices = append(splices, Splice{Old: token, New: raw})
	}
	return ApplySplices(msg, splices...), token
}

// ProgressToken returns the raw progress token of a request's params.
func ProgressToken(params []byte) []byte {
	return Member(Member(params, "_meta"), "progressToken")
}

// ResponseWithResult builds a success response with the given raw id and
// raw result.
func ResponseWithResult(id, result []byte) []byte {
	b := make([]byte, 0, 40+len(id)+len(result))
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	b = append(b, `,"result":`...)
	b = append(b, result...)
	return append(b, '}')
}
