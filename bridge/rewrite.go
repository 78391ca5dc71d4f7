package bridge

import (
	"slices"
	"strconv"
)

// A splice replaces one value inside a raw JSON message: old must be a
// subslice of the message (as ParseEnvelope and Member return them).
type splice struct {
	old []byte
	new []byte
}

// offsetIn returns where sub starts in msg, for a sub sliced from msg.
// Slicing keeps the end of the backing array, so the difference of the
// capacities is the offset.
func offsetIn(msg, sub []byte) int {
	return cap(msg) - cap(sub)
}

// applySplices returns a new message with each splice's value replaced.
// The original is not modified: it may still be referenced elsewhere.
func applySplices(msg []byte, splices ...splice) []byte {
	slices.SortFunc(splices, func(a, b splice) int { return offsetIn(msg, a.old) - offsetIn(msg, b.old) })
	size := len(msg)
	for _, s := range splices {
		size += len(s.new) - len(s.old)
	}
	out := make([]byte, 0, size+1) // +1: Process.Send appends a newline
	pos := 0
	for _, s := range splices {
		off := offsetIn(msg, s.old)
		out = append(out, msg[pos:off]...)
		out = append(out, s.new...)
		pos = off + len(s.old)
	}
	return append(out, msg[pos:]...)
}

// bridgeID is an id the multiplexer puts on a message it forwards.
type bridgeID int64

func (id bridgeID) raw() []byte { return strconv.AppendInt(nil, int64(id), 10) }

// parseBridgeID reads an id the multiplexer wrote; other tokens give false.
func parseBridgeID(raw []byte) (bridgeID, bool) {
	n, err := strconv.ParseInt(string(raw), 10, 64)
	return bridgeID(n), err == nil && n > 0
}

// tagRequest returns a copy of a session's request with the bridge's id
// in place of its id and of its progress token, if it has one, which it
// also returns.
func tagRequest(msg []byte, env *Envelope, id bridgeID) (out, token []byte) {
	raw := id.raw()
	var spliceArray [2]splice
	splices := append(spliceArray[:0], splice{old: env.ID, new: raw})
	if token = progressTokenOf(env.Params); token != nil {
		splices = append(splices, splice{old: token, new: raw})
	}
	return applySplices(msg, splices...), token
}

// progressTokenOf returns the raw progress token of a request's params.
func progressTokenOf(params []byte) []byte {
	return Member(Member(params, "_meta"), "progressToken")
}

// responseWithResult builds a success response with the given raw id and
// raw result.
func responseWithResult(id, result []byte) []byte {
	b := make([]byte, 0, 40+len(id)+len(result))
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	b = append(b, `,"result":`...)
	b = append(b, result...)
	return append(b, '}')
}
