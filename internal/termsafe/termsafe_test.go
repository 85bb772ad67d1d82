package termsafe

import (
	"testing"
	"unicode/utf8"
)

func TestBytes(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "hello\tworld\n", "hello\tworld\n"},
		{"crlf", "[    0.1] Linux version\r\n", "[    0.1] Linux version\n"},
		{"title and clear", "\x1b]0;pwned\x07\x1b[2Jafter", "after"},
		{"osc st", "a\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\b", "alinkb"},
		{"sgr colour", "\x1b[1;31mFAILED\x1b[0m unit", "FAILED unit"},
		{"private csi", "\x1b[?1049h\x1b[?25lx", "x"},
		{"dcs", "\x1bPq#0;2;0;0;0\x1b\\y", "y"},
		{"two byte", "\x1bc\x1b7\x1b(Bz", "z"},
		{"lone esc at end", "abc\x1b", "abc"},
		{"unterminated osc stops at newline", "\x1b]0;title\nnext line\n", "\nnext line\n"},
		{"c0", "a\x00b\x07c\x08d\x7fe\x0cf", "abcdef"},
		{"c1 csi utf8", "a\u009b2Jb", "ab"},
		{"c1 osc utf8", "a\u009d0;t\u009cb", "ab"},
		{"c1 other", "a\u0085b", "ab"},
		{"raw 8-bit csi", "a\x9b2Jb", "a\uFFFD2Jb"},
		{"bidi", "abc\u202edcba", "abcdcba"},
		{"utf8 kept", "café ✓ 日本", "café ✓ 日本"},
	} {
		if got := String(tc.in); got != tc.want {
			t.Errorf("%s: String(%q) = %q, want %q", tc.name, tc.in, got, tc.want)
		}
	}
}

func TestField(t *testing.T) {
	if got := Field("sshd\tfake\nrow\x1b[31m"); got != "sshd fake row" {
		t.Fatalf("Field = %q", got)
	}
}

// Whatever the input, the output is UTF-8 with no control character but \n
// and \t, no C1 control and no direction override.
func FuzzBytes(f *testing.F) {
	for _, s := range []string{"\x1b]0;pwned\x07\x1b[2J", "\x1b[31mred", "\u009b31m", "\x9b", "\x1bP\x1b\\", "ok\r\n", "\xc2"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out := Bytes(in)
		if !utf8.Valid(out) {
			t.Fatalf("invalid utf-8 out of %q: %q", in, out)
		}
		for _, r := range string(out) {
			if (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r <= 0x9f) || isBidi(r) {
				t.Fatalf("control %U in output of %q: %q", r, in, out)
			}
		}
		if len(out) > 3*len(in) {
			t.Fatalf("output grew to %d from %d", len(out), len(in))
		}
		if again := Bytes(out); string(again) != string(out) {
			t.Fatalf("not idempotent: %q -> %q", out, again)
		}
	})
}
