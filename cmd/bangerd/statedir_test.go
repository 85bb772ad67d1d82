package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRefusesUnsafeStateDir: bangerd does not start on a state root owned by
// another uid or writable by others, and says why.
func TestRefusesUnsafeStateDir(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (chown to another uid); CI=true requires it")
		}
		t.Skip("needs root (chown to another uid)")
	}
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	oldArgs := os.Args
	defer func() { os.Args = oldArgs }()
	os.Args = []string{"bangerd", "--state-dir", dir}
	err := run()
	if err == nil || !strings.Contains(err.Error(), "state dir") || !strings.Contains(err.Error(), "owned by uid 4242") {
		t.Fatalf("run on a foreign state dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bangerd.sock")); err == nil {
		t.Fatal("socket created")
	}
	t.Logf("bangerd: %v", err)
}
