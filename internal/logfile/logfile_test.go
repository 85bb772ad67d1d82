package logfile

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pattern is a stream whose bytes are a function of their offset, so the
// kept tail can be checked without holding the whole stream.
func pattern(off int64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		x := off + int64(i)
		b[i] = byte(x*7 + x>>13)
	}
	return b
}

func sizes(t *testing.T, path string) (map[string]int64, int64) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	out, total := map[string]int64{}, int64(0)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), filepath.Base(path)) {
			continue
		}
		st, err := os.Stat(filepath.Join(filepath.Dir(path), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = st.Size()
		total += st.Size()
	}
	return out, total
}

// A guest flooding its console with 200 MiB leaves at most Max bytes on disk,
// and they are the latest ones.
func TestFloodStaysWithinCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	pol := Policy{Segment: 2 << 20, Keep: 1}
	w, err := Open(path, pol)
	if err != nil {
		t.Fatal(err)
	}
	const total = 200 << 20
	var off int64
	for i := 0; off < total; i++ {
		n := 1 + (i*7919)%(96<<10) // odd sizes cross segment ends anywhere
		if i%97 == 0 {
			n = 5 << 20 // some writes are bigger than the whole log
		}
		n = int(min(int64(n), total-off))
		if _, err := w.Write(pattern(off, n)); err != nil {
			t.Fatal(err)
		}
		off += int64(n)
		if i%512 == 0 {
			if _, sum := sizes(t, path); sum > pol.Max() {
				t.Fatalf("after %d bytes the log takes %d bytes, cap %d", off, sum, pol.Max())
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	files, sum := sizes(t, path)
	t.Logf("wrote %d MiB; on disk %v (total %d, cap %d)", total>>20, files, sum, pol.Max())
	if sum > pol.Max() || len(files) != 2 {
		t.Fatalf("on disk %v, total %d, cap %d", files, sum, pol.Max())
	}
	for name, sz := range files {
		if sz > pol.Segment {
			t.Fatalf("%s is %d bytes, segment %d", name, sz, pol.Segment)
		}
	}
	got, err := Tail(path, pol.Max())
	if err != nil {
		t.Fatal(err)
	}
	if want := pattern(total-int64(len(got)), len(got)); !bytes.Equal(got, want) || int64(len(got)) < pol.Segment {
		t.Fatalf("tail of %d bytes is not the end of the stream", len(got))
	}
}

// Rotation keeps Keep old files, shifts them in order, and reopens through
// OnOpen each time (the daemon re-points its stderr there).
func TestRotationKeepsNewestFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bangerd.log")
	var opened []string
	pol := Policy{Segment: 100, Keep: 3, OnOpen: func(f *os.File) error { opened = append(opened, f.Name()); return nil }}
	w, err := Open(path, pol)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		fmt.Fprintf(w, "line %02d ........................\n", i) // 33 bytes: 3 lines per file
	}
	w.Close()
	files, sum := sizes(t, path)
	if len(files) != 4 || sum > pol.Max() {
		t.Fatalf("files %v", files)
	}
	if len(opened) != 17 { // first open + one per rotation
		t.Fatalf("OnOpen called %d times", len(opened))
	}
	cur, _ := os.ReadFile(path)
	old3, _ := os.ReadFile(path + ".3")
	if !strings.HasPrefix(string(cur), "line 48") || !strings.HasPrefix(string(old3), "line 39") {
		t.Fatalf("live %q, .3 %q", cur, old3)
	}
	tail, err := Tail(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(tail), "line 39") || !strings.HasSuffix(string(tail), "line 49 ........................\n") {
		t.Fatalf("tail %q", tail)
	}
	// A restarted writer continues the file and still rotates at the segment.
	w, err = Open(path, pol)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(w, "line 50 ........................\n")
	fmt.Fprintf(w, "line 51 ........................\n")
	w.Close()
	cur, _ = os.ReadFile(path)
	if string(cur) != "line 51 ........................\n" {
		t.Fatalf("live after reopen %q", cur)
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if files, _ := sizes(t, path); len(files) != 0 {
		t.Fatalf("left %v", files)
	}
}

func TestKeepZeroTruncates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vmm.log")
	w, err := Open(path, Policy{Segment: 10, Keep: 0})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("0123456789abc"))
	if b, _ := os.ReadFile(path); string(b) != "3456789abc" {
		t.Fatalf("got %q", b)
	}
	w.Write([]byte("de"))
	w.Close()
	if b, _ := os.ReadFile(path); string(b) != "de" {
		t.Fatalf("got %q", b)
	}
}

// The live file is never opened through a symlink the VMM user planted.
func TestRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "victim")
	if err := os.WriteFile(target, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "console.log")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Policy{Segment: 10, Keep: 1}); err == nil {
		t.Fatal("opened a symlink")
	}
	if _, err := Tail(path, 10); err == nil {
		t.Fatal("tailed through a symlink")
	}
}
