package jsonrpc

import (
	"encoding/binary"
	"math/bits"
)

// maxJSONDepth is encoding/json's nesting limit, which validJSON keeps so
// that it accepts exactly what json.Valid accepts.
const maxJSONDepth = 10000

// Valid reports whether b is one JSON value, with optional whitespace
// around it: the same answer as json.Valid (a fuzz test holds it to
// that), but several times faster on the long strings that tool results
// carry, which it crosses eight bytes at a time. Every message in both
// directions is checked, so this is on the hot path.
func Valid(b []byte) bool {
	var stackArray [32]byte
	stack := stackArray[:0] // '{' or '[' for each open container
	i := SkipSpace(b, 0)
	for {
		// A value starts at b[i].
		if i >= len(b) {
			return false
		}
		switch c := b[i]; {
		case c == '{' || c == '[':
			if len(stack) == maxJSONDepth {
				return false
			}
			i = SkipSpace(b, i+1)
			if i < len(b) && b[i] == closing(c) {
				i++
				break
			}
			stack = append(stack, c)
			if c == '{' {
				if i = validKey(b, i); i < 0 {
					return false
				}
			}
			continue
		case c == '"':
			i = validString(b, i)
		case c == '-' || c >= '0' && c <= '9':
			i = validNumber(b, i)
		default:
			i = validLiteral(b, i)
		}
		if i < 0 {
			return false
		}
		// After a value: close containers until another value is due.
		for {
			i = SkipSpace(b, i)
			if len(stack) == 0 {
				return i == len(b)
			}
			if i >= len(b) {
				return false
			}
			open := stack[len(stack)-1]
			if b[i] == closing(open) {
				stack = stack[:len(stack)-1]
				i++
				continue
			}
			if b[i] != ',' {
				return false
			}
			i = SkipSpace(b, i+1)
			if open == '{' {
				if i = validKey(b, i); i < 0 {
					return false
				}
			}
			break
		}
	}
}

func closing(open byte) byte {
	if open == '{' {
		return '}'
	}
	return ']'
}

// validKey checks an object member's key and colon at b[i], and returns
// the index of its value, or -1.
func validKey(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	if i = validString(b, i); i < 0 {
		return -1
	}
	i = SkipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return -1
	}
	return SkipSpace(b, i+1)
}

// SWAR constants: a byte repeated in each of a word's eight lanes.
const (
	lanes01 = 0x0101010101010101
	lanes80 = 0x8080808080808080
)

// specials marks, in the top bit of each of its bytes, the bytes of the
// little-endian word w that are a quote, a backslash or a control
// character: the bytes a string scan must stop at. Lanes above a marked
// one may be marked wrongly (a borrow), but the lowest mark is exact.
func specials(w uint64) uint64 {
	quote := w ^ (lanes01 * '"')
	backslash := w ^ (lanes01 * '\\')
	return ((quote-lanes01)&^quote | (backslash-lanes01)&^backslash | (w-lanes01*0x20)&^w) & lanes80
}

// plainRun returns the index of the first byte at or after i that is a
// quote, a backslash or a control character, or len(b). It looks at 8
// bytes a step, and past the first 16 (most strings are short) at 32
// while none is special: a large string, such as a base64 blob, goes at
// memory speed.
func plainRun(b []byte, i int) int {
	for step := 0; i+8 <= len(b); step++ {
		if step >= 2 && i+32 <= len(b) {
			w := b[i : i+32]
			if specials(binary.LittleEndian.Uint64(w))|specials(binary.LittleEndian.Uint64(w[8:]))|
				specials(binary.LittleEndian.Uint64(w[16:]))|specials(binary.LittleEndian.Uint64(w[24:])) == 0 {
				i += 32
				continue
			}
		}
		if m := specials(binary.LittleEndian.Uint64(b[i:])); m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
		i += 8
	}
	for i < len(b) && b[i] != '"' && b[i] != '\\' && b[i] >= 0x20 {
		i++
	}
	return i
}

// validString checks the string at b[i] (a quote) and returns the index
// just past it, or -1.
func validString(b []byte, i int) int {
	i++
	for {
		i = plainRun(b, i)
		if i >= len(b) {
			return -1
		}
		switch b[i] {
		case '"':
			return i + 1
		case '\\':
			if i+1 >= len(b) {
				return -1
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) {
					return -1
				}
				for _, h := range b[i+2 : i+6] {
					if !isHex(h) {
						return -1
					}
				}
				i += 6
			default:
				return -1
			}
		default: // a control character
			return -1
		}
	}
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// validNumber checks the number at b[i] and returns the index just past
// it, or -1: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func validNumber(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		start := i + 1
		if i = digits(b, start); i == start {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		start := i
		if i = digits(b, start); i == start {
			return -1
		}
	}
	return i
}

func digits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// validLiteral checks true, false or null at b[i] and returns the index
// just past it, or -1.
func validLiteral(b []byte, i int) int {
	for _, lit := range [...]string{"true", "false", "null"} {
		if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
			return i + len(lit)
		}
	}
	return -1
}
