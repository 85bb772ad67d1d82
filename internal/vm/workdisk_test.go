package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
)

// failRunner runs the real commands except the one named fail, which exits 8 (an operational error).
type failRunner struct {
	system.Exec
	fail string
}

func (r failRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if name == r.fail {
		return nil, &system.ExitError{Cmd: name, Code: 8, Output: "injected failure"}
	}
	return r.Exec.Run(ctx, name, args...)
}

// workState is what a test compares: the row's sizes and vcpus, the work
// disk file's size, its file system's size, e2fsck's verdict, the file the
// "guest" wrote, and the VM directory's entries.
func workState(t *testing.T, f *fixture, name string) string {
	t.Helper()
	ctx := context.Background()
	v, err := f.st.GetVM(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(v.Dir, paths.VMWorkFile)
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	r := system.Exec{}
	fsSize := "?"
	if out, err := r.Run(ctx, "dumpe2fs", "-h", img); err == nil {
		var count, bs int64
		for _, l := range strings.Split(string(out), "\n") {
			if k, val, ok := strings.Cut(l, ":"); ok {
				switch strings.TrimSpace(k) {
				case "Block count":
					fmt.Sscan(val, &count)
				case "Block size":
					fmt.Sscan(val, &bs)
				}
			}
		}
		fsSize = disk.FormatSize(count * bs)
	}
	clean := "clean"
	if _, err := r.Run(ctx, "e2fsck", "-fn", img); err != nil {
		clean = "NOT clean"
	}
	out, _ := r.Run(ctx, "debugfs", "-R", "cat /keep", img)
	keep := "missing"
	if strings.Contains(string(out), "guest data") {
		keep = "kept"
	}
	ents, _ := os.ReadDir(v.Dir)
	var files []string
	for _, e := range ents {
		files = append(files, e.Name())
	}
	return fmt.Sprintf("row=%s vcpu=%d file=%s fs=%s %s keep=%s dir=%s", disk.FormatSize(v.WorkDiskBytes), v.VCPU,
		disk.FormatSize(st.Size()), fsSize, clean, keep, strings.Join(files, ","))
}

func TestSetWorkDisk(t *testing.T) {
	testenv.RequireTools(t, "e2fsck", "resize2fs", "debugfs", "dumpe2fs")
	f := newFixture(t)
	ctx := context.Background()
	v := f.create(t, "big") // 32M work disk, running
	img := filepath.Join(v.Dir, paths.VMWorkFile)
	set := func(p api.SetVMParams) error {
		p.Name = "big"
		_, err := f.svc.Set(ctx, p)
		return err
	}
	ws := func(s string) api.SetVMParams { return api.SetVMParams{WorkDisk: s} }
	one, many := 1, 99

	// Running: refused before anything is looked at.
	if err := set(ws("64M")); !errors.Is(err, api.ErrBusy) || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("grow of a running vm: %v", err)
	}
	if _, err := f.svc.Stop(ctx, "big", true); err != nil {
		t.Fatal(err)
	}
	// What the guest wrote before.
	src := filepath.Join(t.TempDir(), "keep")
	os.WriteFile(src, []byte("guest data\n"), 0o644)
	if _, err := (system.Exec{}).Run(ctx, "debugfs", "-w", "-R", "write "+src+" keep", img); err != nil {
		t.Fatal(err)
	}
	const dir = "root.ext4,seed.img,ssh_host_ed25519_key,ssh_host_ed25519_key.pub,work.ext4"
	start := workState(t, f, "big")
	if want := "row=32M vcpu=2 file=32M fs=32M clean keep=kept dir="; !strings.HasPrefix(start, want) {
		t.Fatalf("before: %s, want %s...", start, want)
	}
	// Refusals change nothing.
	for _, c := range []struct {
		p    api.SetVMParams
		want string
	}{
		{ws("16M"), `vm "big": work disk 16M is smaller than its current 32M (a work disk only grows)`},
		{ws("lots"), "must start with a number"},
		{ws("0"), "must be positive"},
		{ws("-1G"), "must start with a number"},
		{ws("40000001"), "must be a multiple of 1 KiB"},
		{api.SetVMParams{WorkDisk: "64M", VCPU: &many}, "vcpu 99"},
	} {
		if err := set(c.p); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("set %+v: %v, want ErrInvalid with %q", c.p, err, c.want)
		}
		if got := workState(t, f, "big"); got != start {
			t.Fatalf("refused set %+v changed the vm:\n%s\n%s", c.p, start, got)
		}
	}
	// The current size: nothing to do.
	if err := set(ws("32M")); err != nil {
		t.Fatal(err)
	}
	if got := workState(t, f, "big"); got != start {
		t.Fatalf("same-size set changed the vm:\n%s\n%s", start, got)
	}

	// A grow that fails part-way leaves the disk, the row and every other
	// change as they were, and nothing in the VM dir.
	for _, fail := range []string{"e2fsck", "resize2fs"} {
		deps := f.deps
		deps.Runner = failRunner{fail: fail}
		if _, err := New(deps).Set(ctx, api.SetVMParams{Name: "big", WorkDisk: "64M", VCPU: &one}); err == nil ||
			!strings.Contains(err.Error(), "injected failure") {
			t.Fatalf("grow with %s failing: %v", fail, err)
		}
		if got := workState(t, f, "big"); got != start {
			t.Fatalf("failed grow (%s) changed the vm:\n%s\n%s", fail, start, got)
		}
	}

	// A leftover of a daemon killed mid-grow goes with the next grow.
	os.WriteFile(filepath.Join(v.Dir, ".work.ext4.tmp-123"), []byte("half a copy"), 0o600)
	if err := set(api.SetVMParams{WorkDisk: "64M", VCPU: &one}); err != nil {
		t.Fatal(err)
	}
	if got, want := workState(t, f, "big"), "row=64M vcpu=1 file=64M fs=64M clean keep=kept dir="+dir; got != want {
		t.Fatalf("after grow:\n%s\nwant\n%s", got, want)
	}
	got, err := f.svc.Get(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	if view := f.svc.View(got); view.WorkDiskBytes != 64<<20 {
		t.Fatalf("view work_disk_bytes = %d", view.WorkDiskBytes)
	}

	// A work disk restored onto a qcow2 overlay is refused, by name.
	if err := f.st.SetOrigin(ctx, v.ID, "", disk.FormatQcow2); err != nil {
		t.Fatal(err)
	}
	if err := set(ws("128M")); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "qcow2 overlay") {
		t.Fatalf("grow of a qcow2 work disk: %v", err)
	}
	if err := f.st.SetOrigin(ctx, v.ID, "", disk.FormatRaw); err != nil {
		t.Fatal(err)
	}

	// The VM boots with its grown disk.
	if _, err := f.svc.Start(ctx, "big", nil); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Delete(ctx, "big", true); err != nil {
		t.Fatal(err)
	}
}
