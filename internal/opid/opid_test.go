package opid

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := New()
		if len(id) != 12 || !Valid(id) {
			t.Fatalf("New() = %q: want 12 valid hex chars", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q in 1000 draws", id)
		}
		seen[id] = true
	}
}

func TestValid(t *testing.T) {
	for id, want := range map[string]bool{
		"abc123":                true,
		"A-b_9":                 true,
		"":                      false,
		strings.Repeat("a", 64): true,
		strings.Repeat("a", 65): false,
		"has space":             false,
		"new\nline":             false,
		`quote"`:                false,
		"unicodé":               false,
		"semi;colon":            false,
		"\x00":                  false,
		"../../etc":             false,
	} {
		if got := Valid(id); got != want {
			t.Errorf("Valid(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestContext(t *testing.T) {
	ctx := context.Background()
	if got := FromContext(ctx); got != "" {
		t.Fatalf("empty ctx: got %q", got)
	}
	ctx = NewContext(ctx, "abc")
	if got := FromContext(ctx); got != "abc" {
		t.Fatalf("got %q, want abc", got)
	}
	//lint:ignore SA1012 a nil ctx must not panic
	if got := FromContext(nil); got != "" {
		t.Fatalf("nil ctx: got %q", got)
	}
}

func decodeLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		m := map[string]any{}
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("bad log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestHandlerAddsOpID(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(Handler(slog.NewJSONHandler(&buf, nil)))
	ctx := NewContext(context.Background(), "op123")

	log.InfoContext(ctx, "with id", "k", "v")
	log.InfoContext(context.Background(), "without id")
	log.With("svc", "vm").InfoContext(ctx, "derived logger")
	log.WithGroup("g").InfoContext(ctx, "grouped", "x", 1)

	lines := decodeLines(t, &buf)
	if len(lines) != 4 {
		t.Fatalf("got %d lines: %s", len(lines), buf.String())
	}
	if lines[0][Key] != "op123" || lines[0]["k"] != "v" {
		t.Errorf("line 0 = %v", lines[0])
	}
	if _, ok := lines[1][Key]; ok {
		t.Errorf("line without ctx id has op_id: %v", lines[1])
	}
	if lines[2][Key] != "op123" || lines[2]["svc"] != "vm" {
		t.Errorf("derived logger line = %v", lines[2])
	}
	g, _ := lines[3]["g"].(map[string]any)
	if g[Key] != "op123" {
		t.Errorf("grouped line = %v", lines[3])
	}
}

func TestHandlerNoDoubleWrap(t *testing.T) {
	var buf bytes.Buffer
	h := Handler(Handler(slog.NewJSONHandler(&buf, nil)))
	slog.New(h).InfoContext(NewContext(context.Background(), "x1"), "m")
	if n := strings.Count(buf.String(), `"op_id"`); n != 1 {
		t.Fatalf("op_id appears %d times: %s", n, buf.String())
	}
}

func TestHandlerRespectsLevel(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(Handler(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})))
	log.InfoContext(NewContext(context.Background(), "x"), "dropped")
	if buf.Len() != 0 {
		t.Fatalf("info record passed a warn-level handler: %s", buf.String())
	}
}
