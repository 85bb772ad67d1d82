package guest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

func TestTailKeepsOnlyTheEnd(t *testing.T) {
	var tl Tail
	chunk := bytes.Repeat([]byte("a"), 32<<10)
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	for i := 0; i < 256<<20/len(chunk); i++ {
		if _, err := tl.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	tl.Write([]byte("\x1b[2Jthe end\n"))
	runtime.ReadMemStats(&ms1)
	if alloc := ms1.TotalAlloc - ms0.TotalAlloc; alloc > 1<<20 {
		t.Errorf("256 MiB through a Tail allocated %d bytes", alloc)
	}
	if len(tl.Bytes()) != TailSize {
		t.Fatalf("kept %d bytes, want %d", len(tl.Bytes()), TailSize)
	}
	s := tl.String()
	if !strings.HasPrefix(s, "[268369932 bytes cut] aaa") || !strings.HasSuffix(s, `\u001b[2Jthe end`) || len(s) > TailSize+64 {
		t.Fatalf("tail string: %.40q ... %q (%d bytes)", s, s[len(s)-20:], len(s))
	}
	// Small writes that wrap keep the exact last bytes.
	small := Tail{Max: 8}
	for _, w := range []string{"abc", "defgh", "ij", "klmnopqrstu"} {
		small.Write([]byte(w))
	}
	if got := string(small.Bytes()); got != "nopqrstu" || small.Cut() != 13 {
		t.Fatalf("small tail %q cut %d", got, small.Cut())
	}
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"plain text\n\tok": "plain text\n\tok",
		"\x1b]0;pwned\x07": `\u001b]0;pwned\u0007`,
		"bad \xff utf8":    `bad \xff utf8`,
		"c1 \u009b31m":     `c1 \u009b31m`,
		"ünïcode":          "ünïcode",
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLimitWriterAndReader(t *testing.T) {
	var b bytes.Buffer
	w := NewLimitWriter(&b, 10, "ss output")
	if n, err := w.Write([]byte("0123456789")); n != 10 || err != nil {
		t.Fatalf("at the limit: %d %v", n, err)
	}
	_, err := w.Write([]byte("x"))
	if !errors.Is(err, api.ErrInvalid) || err.Error() != "ss output from the guest exceeds the 10 bytes limit" {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err2 := w.Write(nil); err2 != err || w.Err() != err || b.Len() != 10 {
		t.Fatalf("after the limit: %v %v %d", err2, w.Err(), b.Len())
	}

	got, err := io.ReadAll(NewLimitReader(strings.NewReader("exactly 16 bytes"), 16, "x"))
	if err != nil || string(got) != "exactly 16 bytes" {
		t.Fatalf("at the limit: %q %v", got, err)
	}
	_, err = io.ReadAll(NewLimitReader(strings.NewReader("seventeen bytes!!"), 16, "patch"))
	var le *LimitError
	if !errors.As(err, &le) || le.Limit != 16 || !strings.Contains(err.Error(), "patch from the guest exceeds the 16 bytes limit") {
		t.Fatalf("over the limit: %v", err)
	}
	if s := SizeString(1 << 30); s != "1 GiB" {
		t.Fatal(s)
	}
	if s := SizeString(64 << 20); s != "64 MiB" {
		t.Fatal(s)
	}
}

// A guest that floods a stream whose reader refuses more: Exec must tear the
// session down and return the refusal at once. Before, the SSH copier
// stopped reading, the guest blocked on a full window, and Exec hung until
// the context ended.
func TestExecAbortsWhenOutputIsRefused(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	for _, stream := range []string{"stdout", "stderr"} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		var sink bytes.Buffer
		lw := NewLimitWriter(&sink, 4<<20, stream)
		req := ExecRequest{Argv: []string{"flood", stream, "1024"}}
		if stream == "stdout" {
			req.Stdout = lw
		} else {
			req.Stderr = lw
		}
		start := time.Now()
		code, err := f.pool.Exec(ctx, target(s), req)
		cancel()
		var le *LimitError
		if !errors.As(err, &le) || le.Limit != 4<<20 {
			t.Fatalf("%s: code %d err %v, want the LimitError", stream, code, err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("%s: abort took %v", stream, d)
		}
		if sink.Len() > 4<<20 {
			t.Fatalf("%s: %d bytes kept", stream, sink.Len())
		}
	}
}
