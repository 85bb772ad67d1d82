// Package opid carries a per-request operation id through contexts and into
// every log record, so one id ties a CLI error to daemon and helper log lines.
package opid

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
)

// Key is the log attribute name under which the id appears.
const Key = "op_id"

// MaxLen bounds ids adopted from the wire.
const MaxLen = 64

type ctxKey struct{}

// New returns a fresh random id: 12 lower-case hex characters.
func New() string {
	var b [6]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux (getrandom)
	return hex.EncodeToString(b[:])
}

// Valid reports whether id is acceptable as a forwarded op id: 1..MaxLen
// characters from [A-Za-z0-9_-]. Anything else could inject text into logs.
func Valid(id string) bool {
	if id == "" || len(id) > MaxLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the id on ctx, or "".
func FromContext(ctx context.Context) string {
	if ctx == nil {
		return ""
	}
	id, _ := ctx.Value(ctxKey{}).(string)
	return id
}

// Handler wraps h so that every record logged with a context carrying an op
// id gets an op_id attribute. Wrapping an already wrapped handler is a no-op,
// so the id never appears twice. The attribute is added to the record, so it
// lands inside any group opened with WithGroup.
func Handler(h slog.Handler) slog.Handler {
	if _, ok := h.(handler); ok {
		return h
	}
	return handler{inner: h}
}

type handler struct{ inner slog.Handler }

func (h handler) Enabled(ctx context.Context, l slog.Level) bool { return h.inner.Enabled(ctx, l) }

func (h handler) Handle(ctx context.Context, r slog.Record) error {
	if id := FromContext(ctx); id != "" {
		r = r.Clone() // the record may be shared with other handlers
		r.AddAttrs(slog.String(Key, id))
	}
	return h.inner.Handle(ctx, r)
}

func (h handler) WithAttrs(as []slog.Attr) slog.Handler {
	return handler{inner: h.inner.WithAttrs(as)}
}

func (h handler) WithGroup(name string) slog.Handler {
	return handler{inner: h.inner.WithGroup(name)}
}
