package paths

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func TestReadSmall(t *testing.T) {
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok")
	if err := os.WriteFile(ok, []byte("12345"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadSmall(ok, 5); err != nil || string(b) != "12345" {
		t.Fatalf("at the limit: %q %v", b, err)
	}
	if _, err := ReadSmall(ok, 4); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("over the limit: %v, want refused (not cut)", err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(ok, link); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSmall(link, 64); err == nil {
		t.Fatal("a symlink was followed")
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSmall(fifo, 64); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("a FIFO: %v, want refused without blocking", err)
	}
	if _, err := ReadSmall(dir, 64); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("a directory: %v", err)
	}
}
