package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
)

// layered makes a VM whose root disk is a qcow2 overlay of file.
func (e *env) layered(t *testing.T, name, image, ip, file string) {
	t.Helper()
	v := e.addVM(t, name, image, "k1", ip, "")
	v.CloneMethod, v.RootFormat, v.RootBacking = store.CloneQcow2, store.FormatQcow2, file
	if err := e.st.UpdateVM(context.Background(), &v); err != nil {
		t.Fatal(err)
	}
}

func imageFile(l paths.Layout, name string) string {
	return filepath.Join(l.Image(name), paths.RootfsFile)
}

// An image whose file backs overlays is neither removed nor rebuilt while
// they exist, whether the VMs were made from it or only read through its
// file, and whether the image has a row or only files.
func TestImageRmAndRebuildRefusedWhileOverlaysDependOnIt(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.addKernel(t, "k1")
	e.addImage(t, "base", "k1")
	imageDir(t, e.layout, "base", true)
	sum := func() string {
		b, err := os.ReadFile(imageFile(e.layout, "base"))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	before := sum()
	e.layered(t, "a", "base", "172.30.0.21", imageFile(e.layout, "base"))
	e.layered(t, "b", "other", "172.30.0.22", imageFile(e.layout, "base"))

	err := e.call(t, api.MethodImageRm, api.NameParams{Name: "base"}, nil)
	wantCode(t, "image.rm with overlays", err, api.CodeBusy)
	if err == nil || !strings.Contains(err.Error(), `vms "a", "b"`) || !strings.Contains(err.Error(), "qcow2 overlay") {
		t.Errorf("image.rm with overlays: %v (should name both VMs and say why)", err)
	}
	err = e.call(t, api.MethodImageBuild, api.ImageBuildParams{Name: "base", FromDir: t.TempDir()}, nil)
	wantCode(t, "image.build over a used image", err, api.CodeExists)
	if err == nil || !strings.Contains(err.Error(), `vms "a", "b"`) {
		t.Errorf("image.build over a used image: %v (should name the VMs)", err)
	}
	if _, err := e.st.GetImage(ctx, "base"); err != nil {
		t.Errorf("refused rm removed the row: %v", err)
	}
	if sum() != before {
		t.Error("refused rm or build changed the image file")
	}

	// Files without a row (an interrupted commit) are protected the same way.
	imageDir(t, e.layout, "loose", false)
	e.layered(t, "c", "", "172.30.0.23", imageFile(e.layout, "loose"))
	err = e.call(t, api.MethodImageRm, api.NameParams{Name: "loose"}, nil)
	wantCode(t, "image.rm of files with an overlay", err, api.CodeBusy)
	if err == nil || !strings.Contains(err.Error(), `vm "c"`) {
		t.Errorf("image.rm of files with an overlay: %v", err)
	}
	// And reconcile keeps them, though incomplete.
	dm := &Daemon{d: Deps{Layout: e.layout, Store: e.st}}
	if err := dm.ReconcileArtifacts(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(imageFile(e.layout, "loose")); err != nil {
		t.Errorf("reconcile removed a file an overlay reads: %v", err)
	}

	// Once the last dependent goes, both may go.
	for _, n := range []string{"a", "b", "c"} {
		if err := e.call(t, api.MethodVMDelete, api.DeleteVMParams{Name: n}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"base", "loose"} {
		if err := e.call(t, api.MethodImageRm, api.NameParams{Name: n}, nil); err != nil {
			t.Errorf("image.rm %s after its users: %v", n, err)
		}
		gone(t, e.layout.Image(n))
	}
}
