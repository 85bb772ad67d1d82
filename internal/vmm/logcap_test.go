package vmm

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TrimLog keeps the newest bytes behind a marker, and the writer's O_APPEND
// writes land after them.
func TestTrimLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	old := bytes.Repeat([]byte("o"), 3000)
	if _, err := w.Write(append(old, []byte("NEWEST")...)); err != nil {
		t.Fatal(err)
	}
	if err := TrimLog(path, 1000, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("|after")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	s := string(b)
	if !strings.HasPrefix(s, "[banger: console.log truncated at 3006 bytes; its last 100 bytes follow]\n") ||
		!strings.HasSuffix(s, "NEWEST|after") || len(b) > 200 {
		t.Fatalf("after trim: %d bytes %q", len(b), s)
	}
	// Under the cap: untouched.
	if err := TrimLog(path, 1000, 100); err != nil {
		t.Fatal(err)
	}
	if b2, _ := os.ReadFile(path); !bytes.Equal(b, b2) {
		t.Fatal("a log under the cap was changed")
	}
	// A symlink is not followed.
	link := filepath.Join(t.TempDir(), "link.log")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if err := TrimLog(link, 10, 0); err != nil {
		t.Fatal(err)
	}
	if b3, _ := os.ReadFile(path); !bytes.Equal(b, b3) {
		t.Fatal("trimmed through a symlink")
	}
}
