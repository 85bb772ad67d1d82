package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/kernel"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
)

// imageDir makes a complete image directory (rootfs + image.json) or, with
// complete false, one an interrupted commit could leave (no image.json).
func imageDir(t *testing.T, l paths.Layout, name string, complete bool) {
	t.Helper()
	d := l.Image(name)
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, paths.RootfsFile), []byte("ext4"), 0o600); err != nil {
		t.Fatal(err)
	}
	if complete {
		b, _ := json.Marshal(image.Info{Name: name, Source: "dir:/src", Size: 4})
		if err := os.WriteFile(filepath.Join(d, paths.ImageMeta), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func kernelDir(t *testing.T, l paths.Layout, name string, complete bool) {
	t.Helper()
	d := l.Kernel(name)
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	k := filepath.Join(d, paths.KernelFile)
	if err := os.WriteFile(k, []byte("bzImage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if complete {
		b, _ := json.Marshal(kernel.Info{Name: name, Version: "6.1", Source: "test", Kernel: k, SHA256: strings.Repeat("cd", 32)})
		if err := os.WriteFile(filepath.Join(d, paths.KernelMeta), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func gone(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there: %v", p, err)
	}
}

// TestRmHalfCommitted: `image rm` / `kernel rm` remove either half of an
// interrupted commit (files without a row, a row without files), so the name
// can be used again.
func TestRmHalfCommitted(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	imageDir(t, e.layout, "orphan", true)   // committed, row never written
	imageDir(t, e.layout, "partial", false) // files without metadata
	e.addImage(t, "ghost", "")              // row; then its files vanish
	os.RemoveAll(e.layout.Image("ghost"))
	kernelDir(t, e.layout, "korphan", true)
	e.addKernel(t, "kghost")
	os.RemoveAll(e.layout.Kernel("kghost"))

	for _, n := range []string{"orphan", "partial", "ghost"} {
		if err := e.call(t, api.MethodImageRm, api.NameParams{Name: n}, nil); err != nil {
			t.Errorf("image rm %s: %v", n, err)
		}
		gone(t, e.layout.Image(n))
		if _, err := e.st.GetImage(ctx, n); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("image %s row: %v", n, err)
		}
	}
	for _, n := range []string{"korphan", "kghost"} {
		if err := e.call(t, api.MethodKernelRm, api.NameParams{Name: n}, nil); err != nil {
			t.Errorf("kernel rm %s: %v", n, err)
		}
		gone(t, e.layout.Kernel(n))
	}
	// Neither half: still not found.
	wantCode(t, "image rm nothing", e.call(t, api.MethodImageRm, api.NameParams{Name: "nothing"}, nil), api.CodeNotFound)
	wantCode(t, "kernel rm nothing", e.call(t, api.MethodKernelRm, api.NameParams{Name: "nothing"}, nil), api.CodeNotFound)

	// An interrupted kernel removal left its trash: the next removal of the
	// same name is not blocked by it.
	if err := os.MkdirAll(filepath.Join(e.layout.KernelsDir(), ".remove-again", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	kernelDir(t, e.layout, "again", true)
	if err := kernel.Remove(e.layout, "again"); err != nil {
		t.Fatalf("remove with stale trash present: %v", err)
	}
}

// TestReconcileArtifacts crafts every half-state an interrupted commit or
// removal leaves and checks daemon start resolves each one.
func TestReconcileArtifacts(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	l := e.layout
	imageDir(t, l, "orphan", true)
	imageDir(t, l, "partial", false)
	e.addImage(t, "ghost", "")
	os.RemoveAll(l.Image("ghost"))
	e.addImage(t, "used", "")
	os.RemoveAll(l.Image("used"))
	e.addKernel(t, "k1")
	kernelDir(t, l, "k1", true) // complete, with its row: untouched
	e.addVM(t, "vm1", "used", "k1", "172.30.0.20", "")
	imageDir(t, l, "fine", true)
	if err := e.st.CreateImage(ctx, &store.Image{Name: "fine", Source: "test", Path: filepath.Join(l.Image("fine"), paths.RootfsFile)}); err != nil {
		t.Fatal(err)
	}
	kernelDir(t, l, "korphan", true)
	kernelDir(t, l, "kpartial", false)
	e.addKernel(t, "kghost")
	os.RemoveAll(l.Kernel("kghost"))
	stale := []string{
		filepath.Join(l.Tmp(), "image-x-123"), filepath.Join(l.Tmp(), "remove-image-y-1"),
		filepath.Join(l.Tmp(), "kernel-z-9"), filepath.Join(l.Tmp(), "modules-1"),
		filepath.Join(l.KernelsDir(), ".remove-old"),
	}
	for _, d := range stale {
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o700); err != nil {
			t.Fatal(err)
		}
	}

	dm := &Daemon{d: Deps{Layout: l, Store: e.st}}
	if err := dm.ReconcileArtifacts(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range stale {
		gone(t, d)
	}
	// Adopted: a row from the metadata, listed, removable.
	if img, err := e.st.GetImage(ctx, "orphan"); err != nil || img.Source != "dir:/src" {
		t.Errorf("orphan image not adopted: %+v %v", img, err)
	}
	if k, err := e.st.GetKernel(ctx, "korphan"); err != nil || k.Version != "6.1" || !strings.HasSuffix(k.Path, "/vmlinuz") {
		t.Errorf("orphan kernel not adopted: %+v %v", k, err)
	}
	// Incomplete files without a row: gone.
	gone(t, l.Image("partial"))
	gone(t, l.Kernel("kpartial"))
	// Rows without files: gone, unless a VM uses them.
	for _, n := range []string{"ghost"} {
		if _, err := e.st.GetImage(ctx, n); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("image row %s: %v", n, err)
		}
	}
	if _, err := e.st.GetKernel(ctx, "kghost"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("kernel row kghost: %v", err)
	}
	if _, err := e.st.GetImage(ctx, "used"); err != nil {
		t.Errorf("image row used by a vm removed: %v", err)
	}
	for _, n := range []string{"fine"} {
		if _, err := e.st.GetImage(ctx, n); err != nil {
			t.Errorf("sound image %s: %v", n, err)
		}
	}
	if _, err := e.st.GetKernel(ctx, "k1"); err != nil {
		t.Errorf("sound kernel k1: %v", err)
	}
	// Every name can be used again: the orphan is removable by rm.
	if err := e.call(t, api.MethodImageRm, api.NameParams{Name: "orphan"}, nil); err != nil {
		t.Errorf("rm adopted image: %v", err)
	}
	// A second run changes nothing.
	if err := dm.ReconcileArtifacts(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.GetKernel(ctx, "korphan"); err != nil {
		t.Errorf("second reconcile: %v", err)
	}
}

// TestReconcileKeepsIncompleteRecorded: a recorded image whose directory is
// there but incomplete is reported, never deleted at start.
func TestReconcileKeepsIncompleteRecorded(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.addImage(t, "mine", "") // dir without image.json, with a row
	dm := &Daemon{d: Deps{Layout: e.layout, Store: e.st}}
	if err := dm.ReconcileArtifacts(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.GetImage(ctx, "mine"); err != nil {
		t.Fatalf("recorded image removed: %v", err)
	}
	if _, err := os.Stat(e.layout.Image("mine")); err != nil {
		t.Fatalf("recorded image files removed: %v", err)
	}
}
