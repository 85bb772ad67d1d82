package guest

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/banger-dev/banger/internal/api"
)

// Everything a guest sends is hostile: each host-side reader of a guest
// stream states a limit and fails with a LimitError past it (never a silent
// truncation), and what is kept for errors and logs is a Tail.

// TailSize is how much of a guest stream (stderr, mostly) is kept for an
// error message or a log line.
const TailSize = 64 << 10

// LimitError says a guest stream went over its stated limit. It matches
// api.ErrInvalid: the guest sent something the host does not accept.
type LimitError struct {
	What  string // what was being read, e.g. `tar entry "bundle"`
	Limit int64  // bytes
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("%s from the guest exceeds the %s limit", e.What, SizeString(e.Limit))
}

func (e *LimitError) Unwrap() error { return api.ErrInvalid }

// SizeString renders a byte count the way limits are stated: "1 GiB",
// "64 KiB", "100 bytes".
func SizeString(n int64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d %s", n>>u.shift, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// LimitWriter passes at most Limit bytes to w; the write that would cross
// the limit writes nothing and fails with a *LimitError, as does every
// later write (the SSH session is then torn down, see Pool.Exec).
type LimitWriter struct {
	w     io.Writer
	limit int64
	what  string
	n     int64
	err   error
}

// NewLimitWriter returns a writer that refuses more than limit bytes.
func NewLimitWriter(w io.Writer, limit int64, what string) *LimitWriter {
	return &LimitWriter{w: w, limit: limit, what: what}
}

func (l *LimitWriter) Write(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	if int64(len(p)) > l.limit-l.n {
		l.err = &LimitError{What: l.what, Limit: l.limit}
		return 0, l.err
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	return n, err
}

// Err is the LimitError once the limit was crossed, else nil.
func (l *LimitWriter) Err() error { return l.err }

// N is how many bytes went through.
func (l *LimitWriter) N() int64 { return l.n }

// LimitReader reads at most limit bytes from r; if r has more, the read
// that finds out fails with a *LimitError instead of returning io.EOF.
type LimitReader struct {
	r    io.Reader
	left int64
	lim  int64
	what string
}

// NewLimitReader returns a reader that refuses more than limit bytes.
func NewLimitReader(r io.Reader, limit int64, what string) *LimitReader {
	return &LimitReader{r: r, left: limit, lim: limit, what: what}
}

func (l *LimitReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if l.left <= 0 {
		// At the limit: one more byte means over it.
		var b [1]byte
		for {
			n, err := l.r.Read(b[:])
			if n > 0 {
				return 0, &LimitError{What: l.what, Limit: l.lim}
			}
			if err != nil {
				return 0, err
			}
		}
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// Tail is an io.Writer that keeps only the last Max bytes written to it (at
// most TailSize when Max is 0); writes never fail, so a chatty guest cannot
// break the command it runs, only lose the head of its output.
type Tail struct {
	Max   int
	buf   []byte
	total int64
}

func (t *Tail) max() int {
	if t.Max > 0 {
		return t.Max
	}
	return TailSize
}

func (t *Tail) Write(p []byte) (int, error) {
	n, m := len(p), t.max()
	t.total += int64(n)
	if t.buf == nil {
		t.buf = make([]byte, 0, m)
	}
	if n >= m {
		t.buf = append(t.buf[:0], p[n-m:]...)
		return n, nil
	}
	if over := len(t.buf) + n - m; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

// Cut is how many bytes were dropped from the head.
func (t *Tail) Cut() int64 { return t.total - int64(len(t.buf)) }

// Bytes returns the kept bytes (not a copy).
func (t *Tail) Bytes() []byte { return t.buf }

// String is the kept text for an error or a log line: trimmed, control
// characters and invalid UTF-8 escaped (guest bytes must not drive the
// terminal that prints the error), prefixed with how much was cut.
func (t *Tail) String() string {
	s := Printable(strings.TrimSpace(string(t.buf)))
	if c := t.Cut(); c > 0 {
		return fmt.Sprintf("[%d bytes cut] %s", c, s)
	}
	return s
}

// Printable escapes what a terminal would interpret in guest text: C0 and
// C1 controls (except newline and tab), DEL, and invalid UTF-8.
func Printable(s string) string {
	clean := true
	for _, r := range s {
		if escaped(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case escaped(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}

func escaped(r rune) bool {
	return r == utf8.RuneError || (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r < 0xa0)
}

// IsLimit reports whether err is (or wraps) a LimitError.
func IsLimit(err error) bool {
	var le *LimitError
	return errors.As(err, &le)
}
