// Package termsafe makes text that came from a guest (its serial console,
// process names, error output) safe to print on the user's terminal: escape
// sequences (CSI, OSC, DCS, ...) are removed whole, other control characters
// (C0 but \n and \t, DEL, C1) and bidirectional overrides are dropped, and
// bytes that are not UTF-8 become U+FFFD, so a raw 0x9b cannot act as a
// CSI on an 8-bit terminal. The result never contains ESC.
package termsafe

import (
	"unicode/utf8"
)

// Bytes returns b made safe; \n and \t are kept.
func Bytes(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); {
		c := b[i]
		switch {
		case c == '\n' || c == '\t':
			out = append(out, c)
			i++
		case c == 0x1b:
			i = skipEscape(b, i+1)
		case c < 0x20 || c == 0x7f:
			i++ // \r, BEL, BS, ... would move the cursor or ring
		case c < utf8.RuneSelf:
			out = append(out, c)
			i++
		default:
			r, n := utf8.DecodeRune(b[i:])
			switch {
			case r == utf8.RuneError && n <= 1:
				out = append(out, "\uFFFD"...)
			case r == 0x9b: // C1 CSI
				i = skipCSI(b, i+n)
				continue
			case r == 0x90 || r == 0x9d || r == 0x9e || r == 0x9f || r == 0x98: // C1 DCS, OSC, PM, APC, SOS
				i = skipString(b, i+n)
				continue
			case r >= 0x80 && r <= 0x9f, isBidi(r):
				// other C1 controls, direction overrides: dropped
			default:
				out = append(out, b[i:i+n]...)
			}
			i += n
		}
	}
	return out
}

// String is Bytes for a string.
func String(s string) string { return string(Bytes([]byte(s))) }

// Field is String for one table cell or one line: \n and \t become spaces,
// so guest text cannot forge rows or columns either.
func Field(s string) string {
	b := Bytes([]byte(s))
	for i, c := range b {
		if c == '\n' || c == '\t' {
			b[i] = ' '
		}
	}
	return string(b)
}

// skipEscape skips what follows an ESC at b[i:]: a CSI, a string sequence
// (OSC, DCS, PM, APC, SOS) or a two/three-byte escape.
func skipEscape(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '[':
		return skipCSI(b, i+1)
	case ']', 'P', '^', '_', 'X':
		return skipString(b, i+1)
	}
	// nF escapes: intermediates 0x20-0x2f, then one final byte.
	for i < len(b) && b[i] >= 0x20 && b[i] <= 0x2f {
		i++
	}
	if i < len(b) && b[i] >= 0x30 && b[i] <= 0x7e {
		i++
	}
	return i
}

// skipCSI skips parameters (0x30-0x3f), intermediates (0x20-0x2f) and the
// final byte (0x40-0x7e); a byte outside the grammar ends the sequence
// without being consumed.
func skipCSI(b []byte, i int) int {
	for i < len(b) && b[i] >= 0x20 && b[i] <= 0x3f {
		i++
	}
	if i < len(b) && b[i] >= 0x40 && b[i] <= 0x7e {
		i++
	}
	return i
}

// skipString skips a control string up to its terminator: BEL, ESC \ or C1
// ST. A newline also ends it, so a stray OSC cannot hide the rest of a log;
// the newline itself is kept.
func skipString(b []byte, i int) int {
	for i < len(b) {
		switch {
		case b[i] == 0x07:
			return i + 1
		case b[i] == 0x1b && i+1 < len(b) && b[i+1] == '\\':
			return i + 2
		case b[i] == 0x1b:
			return i // a new escape starts; let the caller drop it
		case b[i] == '\n':
			return i
		case b[i] == 0xc2 && i+1 < len(b) && b[i+1] == 0x9c: // U+009C ST
			return i + 2
		}
		i++
	}
	return i
}

func isBidi(r rune) bool {
	return (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) || r == 0x200e || r == 0x200f || r == 0x061c
}
