package paths

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (chown to another uid); CI=true requires it")
		}
		t.Skip("needs root (chown to another uid)")
	}
}

// TestEnsureNeverChmodsThroughSymlinks: a symlink planted where a private
// subdirectory goes must not make Ensure chmod (or use) its target.
func TestEnsureNeverChmodsThroughSymlinks(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "state")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(base, "victim")
	if err := os.Mkdir(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(root, "cache")); err != nil {
		t.Fatal(err)
	}
	err := Layout{Root: root}.Ensure()
	if fi, _ := os.Stat(victim); fi.Mode().Perm() != 0o755 {
		t.Errorf("Ensure chmodded the symlink's target to %v", fi.Mode().Perm())
	}
	if err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("Ensure with a symlinked subdirectory: %v, want an error naming the symlink", err)
	}

	// The root itself as a symlink: refused, its target untouched.
	link := filepath.Join(base, "link")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	err = Layout{Root: link}.Ensure()
	if fi, _ := os.Stat(victim); fi.Mode().Perm() != 0o755 {
		t.Errorf("Ensure chmodded the root symlink's target to %v", fi.Mode().Perm())
	}
	if err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("Ensure with a symlinked root: %v, want an error naming the symlink", err)
	}
}

// TestEnsureRefusesForeignOrOpenRoot: the state root must belong to us and
// not be writable by group or others.
func TestEnsureRefusesForeignOrOpenRoot(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	foreign := filepath.Join(base, "foreign")
	if err := os.Mkdir(foreign, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(foreign, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	err := Layout{Root: foreign}.Ensure()
	if err == nil || !strings.Contains(err.Error(), "owned by uid 4242") {
		t.Fatalf("Ensure on a root owned by uid 4242: %v", err)
	}
	if ents, _ := os.ReadDir(foreign); len(ents) != 0 {
		t.Errorf("Ensure created %d entries in a foreign root", len(ents))
	}

	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	err = Layout{Root: open}.Ensure()
	if err == nil || !strings.Contains(err.Error(), "writable") {
		t.Fatalf("Ensure on a 0777 root: %v", err)
	}

	// A sound root: made, private, every subdirectory 0700.
	good := filepath.Join(base, "a", "good")
	l := Layout{Root: good}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	if err := l.Ensure(); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	for _, d := range []string{good, l.SSHDir(), l.Cache(), l.Tmp(), l.VMsDir()} {
		if fi, err := os.Lstat(d); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v", d, fi, err)
		}
	}
}
