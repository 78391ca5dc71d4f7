package jsonrpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
)

// JSON-RPC and MCP error codes used by the bridge.
const (
	CodeParseError      = -32700
	CodeInvalidRequest  = -32600
	CodeMethodNotFound  = -32601
	CodeInvalidParams   = -32602
	CodeInternalError   = -32603
	CodeSessionNotFound = -32001
	CodeServerBusy      = -32002
	CodeServerExited    = -32003
	CodeUnauthorized    = -32004
)

// Kind is what a JSON-RPC message is, judged by its envelope alone.
type Kind uint8

// The kinds of JSON-RPC message.
const (
	KindInvalid Kind = iota
	KindRequest
	KindNotification
	KindResponse
)

// Envelope is the part of a JSON-RPC message the bridge routes by. Its byte
// slices alias the message they were parsed from; nothing else is decoded, so
// unknown fields, large params and results pass through untouched.
type Envelope struct {
	// ID is the raw id token (a JSON string with its quotes, a number or
	// null), or nil when the message has no id.
	ID []byte
	// Method is the raw method token, with quotes, or nil.
	Method []byte
	// Params, Result and Error are the raw values of those members, or nil.
	Params []byte
	Result []byte
	Error  []byte
	// Version is the raw "jsonrpc" value.
	Version []byte
}

var errNotObject = errors.New("JSON-RPC message is not an object")

// ParseEnvelope reads the top-level members of one JSON-RPC message. It
// expects msg to be valid JSON (check with validJSON first for untrusted
// input) and does not allocate.
func ParseEnvelope(msg []byte) (Envelope, error) {
	var env Envelope
	err := scanObject(msg, func(key, val []byte) bool {
		switch string(key) {
		case "id":
			env.ID = val
		case "method":
			env.Method = val
		case "params":
			env.Params = val
		case "result":
			env.Result = val
		case "error":
			env.Error = val
		case "jsonrpc":
			env.Version = val
		}
		return true
	})
	return env, err
}

// Kind classifies the message. A message that is neither a request, a
// notification nor a response, or that does not say "jsonrpc": "2.0", is
// KindInvalid.
func (e *Envelope) Kind() Kind {
	if string(e.Version) != `"2.0"` {
		return KindInvalid
	}
	switch {
	case e.Method != nil:
		if len(e.Method) < 2 || e.Method[0] != '"' || e.Result != nil || e.Error != nil {
			return KindInvalid
		}
		if e.ID == nil {
			return KindNotification
		}
		if !requestID(e.ID) {
			return KindInvalid
		}
		return KindRequest
	case e.Result != nil || e.Error != nil:
		if e.ID == nil || (e.Result != nil && e.Error != nil) || !ValidID(e.ID) {
			return KindInvalid
		}
		return KindResponse
	}
	return KindInvalid
}

// MethodName returns the method without its quotes. Method names are plain
// ASCII in practice; an escaped one is decoded.
func (e *Envelope) MethodName() string {
	if len(e.Method) < 2 || e.Method[0] != '"' {
		return ""
	}
	inner := e.Method[1 : len(e.Method)-1]
	if name, ok := methodNames[string(inner)]; ok {
		return name // the map lookup copies nothing
	}
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner)
	}
	var s string
	if json.Unmarshal(e.Method, &s) != nil {
		return ""
	}
	return s
}

// methodNames interns the methods of MCP, so that naming the method of
// a message, which every message does several times on its way, does not
// allocate.
var methodNames = func() map[string]string {
	m := make(map[string]string)
	for _, name := range []string{
		"initialize", "ping", "server/discover", "subscriptions/listen",
		"tools/list", "tools/call", "prompts/list", "prompts/get",
		"resources/list", "resources/read", "resources/templates/list",
		"resources/subscribe", "resources/unsubscribe",
		"completion/complete", "logging/setLevel",
		"sampling/createMessage", "elicitation/create", "roots/list",
		"tasks/get", "tasks/result", "tasks/list", "tasks/cancel",
		"notifications/initialized", "notifications/cancelled",
		"notifications/progress", "notifications/message",
		"notifications/resources/updated", "notifications/resources/list_changed",
		"notifications/tools/list_changed", "notifications/prompts/list_changed",
		"notifications/roots/list_changed", "notifications/elicitation/complete",
		"notifications/tasks/status",
	} {
		m[name] = name
	}
	return m
}()

// requestID reports whether a request's raw id is one MCP allows: a string
// or a number without a fraction (not null).
func requestID(id []byte) bool {
	if !ValidID(id) || string(id) == "null" {
		return false
	}
	return id[0] == '"' || bytes.IndexByte(id, '.') < 0
}

// EchoableID reports whether every child can be trusted to echo a request
// id byte for byte: a string without escapes (a lone surrogate, say, comes
// back replaced), or an integer that a float64 holds exactly (a Node
// server's does not hold a larger one). The bridge gives the child an id
// of its own for any other.
func EchoableID(id []byte) bool {
	if id[0] == '"' {
		return bytes.IndexByte(id, '\\') < 0
	}
	digits := bytes.TrimPrefix(id, []byte("-"))
	return len(digits) <= 15 && bytes.IndexAny(digits, "eE") < 0
}

func ValidID(id []byte) bool {
	if len(id) == 0 {
		return false
	}
	switch c := id[0]; {
	case c == '"', c == '-', c >= '0' && c <= '9':
		return true
	}
	return string(id) == "null"
}

// Member returns the raw value of the named top-level member of a JSON
// object, or nil. obj must be valid JSON. A duplicated member counts by its
// last occurrence, as in ParseEnvelope and encoding/json.
func Member(obj []byte, name string) []byte {
	var found []byte
	scanObject(obj, func(key, val []byte) bool {
		if string(key) == name {
			found = val
		}
		return true
	})
	return found
}

// StringValue decodes a raw JSON string token; it returns "" for anything else.
func StringValue(raw []byte) string {
	if len(raw) < 2 || raw[0] != '"' {
		return ""
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner)
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

// StringIs reports whether StringValue(raw) is s, without allocating when
// raw has no escapes, as the strings the bridge checks on every request
// (a stateless request's version and tool name) have.
func StringIs(raw []byte, s string) bool {
	if len(raw) >= 2 && raw[0] == '"' && bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1:len(raw)-1]) == s
	}
	return StringValue(raw) == s
}

// ErrorResponse builds a JSON-RPC error response. id is a raw id token; nil
// gives "id": null, as JSON-RPC requires when the id could not be read.
func ErrorResponse(id []byte, code int, message string) []byte {
	if id == nil {
		id = []byte("null")
	}
	b := make([]byte, 0, 64+len(id)+len(message))
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	b = append(b, `,"error":{"code":`...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, `,"message":`...)
	// Not strconv.AppendQuote: its \x and \a escapes are not JSON, and the
	// message may hold any bytes (a client's header, a child's version).
	quoted, _ := json.Marshal(message)
	b = append(b, quoted...)
	return append(b, "}}"...)
}

var errTruncated = errors.New("truncated JSON")

// scanObject calls visit with each top-level member of the JSON object obj,
// in order, until visit returns false. Keys are decoded: "\u0069d" is "id".
func scanObject(obj []byte, visit func(key, val []byte) bool) error {
	i := SkipSpace(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return errNotObject
	}
	i++
	for {
		i = SkipSpace(obj, i)
		if i >= len(obj) {
			return errTruncated
		}
		if obj[i] == '}' {
			return nil
		}
		if obj[i] == ',' {
			i = SkipSpace(obj, i+1)
		}
		keyEnd, err := skipString(obj, i)
		if err != nil {
			return err
		}
		key := obj[i+1 : keyEnd-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			var s string
			if json.Unmarshal(obj[i:keyEnd], &s) != nil {
				return errTruncated
			}
			key = []byte(s)
		}
		i = SkipSpace(obj, keyEnd)
		if i >= len(obj) || obj[i] != ':' {
			return errTruncated
		}
		i = SkipSpace(obj, i+1)
		valEnd, err := SkipValue(obj, i)
		if err != nil {
			return err
		}
		if !visit(key, obj[i:valEnd]) {
			return nil
		}
		i = valEnd
	}
}

func SkipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipString returns the index just past the string token starting at b[i].
// In valid JSON, which callers hold (a control character or a bad escape
// is not looked for), the string ends at the first quote that no odd run
// of backslashes escapes: IndexByte finds the quotes, many bytes at a
// time, so that skipping the long strings of a large result costs little
// next to validating them.
func skipString(b []byte, i int) (int, error) {
	if i >= len(b) || b[i] != '"' {
		return 0, errTruncated
	}
	start := i + 1
	for i = start; ; i++ {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return 0, errTruncated
		}
		i += j
		k := i
		for k > start && b[k-1] == '\\' {
			k--
		}
		if (i-k)%2 == 0 {
			return i + 1, nil
		}
	}
}

// SkipValue returns the index just past the JSON value starting at b[i].
func SkipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, errTruncated
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				end, err := skipString(b, i)
				if err != nil {
					return 0, err
				}
				i = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, nil
				}
			}
		}
		return 0, errTruncated
	default:
		start := i
		for ; i < len(b); i++ {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				if i == start {
					return 0, errTruncated
				}
				return i, nil
			}
		}
		if i == start {
			return 0, errTruncated
		}
		return i, nil
	}
}

// ScanArray calls visit with each element of a JSON array.
func ScanArray(arr []byte, visit func([]byte)) error {
	i := SkipSpace(arr, 0)
	if i >= len(arr) || arr[i] != '[' {
		return errors.New("not an array")
	}
	for i = SkipSpace(arr, i+1); i < len(arr) && arr[i] != ']'; {
		end, err := SkipValue(arr, i)
		if err != nil {
			return err
		}
		visit(arr[i:end])
		i = SkipSpace(arr, end)
		if i < len(arr) && arr[i] == ',' {
			i = SkipSpace(arr, i+1)
		}
	}
	return nil
}
