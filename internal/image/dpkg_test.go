package image

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

func writeStatus(t *testing.T, rootfs string) string {
	t.Helper()
	d := filepath.Join(rootfs, "var/lib/dpkg")
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(d, "status")
}

// TestInstalledPackagesBounded: dpkg's status file comes from the image; it
// is read up to a stated limit, never through a symlink, never from a FIFO.
func TestInstalledPackagesBounded(t *testing.T) {
	t.Run("ok", func(t *testing.T) {
		rootfs := t.TempDir()
		st := writeStatus(t, rootfs)
		if err := os.WriteFile(st, []byte("Package: a\nStatus: install ok installed\n\nPackage: b\nStatus: deinstall ok config-files\n\nPackage: c\nStatus: install ok installed\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		pkgs, err := installedPackages(rootfs)
		if err != nil || strings.Join(pkgs, ",") != "a,c" {
			t.Fatalf("installedPackages = %v, %v", pkgs, err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		pkgs, err := installedPackages(t.TempDir())
		if err != nil || pkgs != nil {
			t.Fatalf("installedPackages = %v, %v", pkgs, err)
		}
	})
	t.Run("too big", func(t *testing.T) {
		rootfs := t.TempDir()
		st := writeStatus(t, rootfs)
		f, err := os.Create(st)
		if err != nil {
			t.Fatal(err)
		}
		// Sparse: costs no disk, reads as maxDpkgStatusBytes+1 of NULs.
		if err := f.Truncate(maxDpkgStatusBytes + 1); err != nil {
			t.Fatal(err)
		}
		f.Close()
		_, err = installedPackages(rootfs)
		if err == nil || !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "33554432") {
			t.Fatalf("installedPackages: %v, want ErrInvalid naming the 33554432-byte limit", err)
		}
	})
	t.Run("symlink", func(t *testing.T) {
		base := t.TempDir()
		rootfs := filepath.Join(base, "root")
		st := writeStatus(t, rootfs)
		// A file inside the tree through a symlink is refused too: dpkg
		// never makes one, and the image chose the target.
		if err := os.WriteFile(filepath.Join(rootfs, "real"), []byte("Package: x\nStatus: install ok installed\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("../../../real", st); err != nil {
			t.Fatal(err)
		}
		if _, err := installedPackages(rootfs); err == nil {
			t.Fatal("read dpkg status through a symlink")
		}
		os.Remove(st)
		if err := os.WriteFile(filepath.Join(base, "outside"), []byte("Package: evil\nStatus: install ok installed\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/"+filepath.Join(base, "outside")[1:], st); err != nil {
			t.Fatal(err)
		}
		if pkgs, err := installedPackages(rootfs); err == nil {
			t.Fatalf("read dpkg status outside the tree: %v", pkgs)
		}
	})
	t.Run("fifo", func(t *testing.T) {
		rootfs := t.TempDir()
		st := writeStatus(t, rootfs)
		if err := syscall.Mkfifo(st, 0o644); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { _, err := installedPackages(rootfs); done <- err }()
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("a FIFO read as dpkg status")
			}
		case <-time.After(5 * time.Second):
			// Unblock the reader so the test can end.
			if w, err := os.OpenFile(st, os.O_WRONLY, 0); err == nil {
				w.Close()
			}
			t.Fatal("installedPackages hangs on a FIFO")
		}
	})
}
