package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/vmm"
)

func TestRestoreArgsMapSnapshotMemoryPrivately(t *testing.T) {
	s := vmm.Spec{ID: "x", Dir: "/d", VCPU: 1, MemoryMiB: 256, Kernel: "/k", Cmdline: "console=ttyS0"}
	got, err := buildArgsMem(s, AccelTCG, 0, memory{path: "/snaps/a,b/mem", share: false, incoming: true})
	if err != nil {
		t.Fatal(err)
	}
	r := render(got)
	for _, want := range []string{
		"-M microvm,pit=on,pic=on,rtc=on,memory-backend=mem\n",
		// share=off: a private, copy-on-write mapping; the snapshot's file is never written.
		"-object memory-backend-file,id=mem,size=256M,mem-path=/snaps/a,,b/mem,share=off\n",
		"-incoming defer\n",
	} {
		if !strings.Contains(r, want) {
			t.Errorf("restore args lack %q:\n%s", want, r)
		}
	}
	// The agent's port stays the last device, as at boot: device order is
	// part of the saved state.
	if !strings.HasSuffix(r, "name=banger.agent") {
		t.Errorf("agent port not last:\n%s", r)
	}
	boot, _ := buildArgs(s, AccelTCG, 0)
	if strings.Contains(render(boot), "-incoming") || !strings.Contains(render(boot), "mem-path=/d/mem,share=on") {
		t.Errorf("boot args:\n%s", render(boot))
	}
}

// snapshotDir writes a snapshot directory as Snapshot would.
func snapshotDir(t *testing.T, memBytes int64) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, SnapshotStateFile), []byte("QEVM"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, SnapshotMemFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(memBytes); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return dir
}

func TestCheckSnapshotRefusals(t *testing.T) {
	d := New(nil, nil)
	d.Accel, d.version = AccelTCG, "7.2.22"
	s := vmm.Spec{ID: "x", Dir: "/d", VCPU: 2, MemoryMiB: 64, Kernel: "/k"}
	good := vmm.SnapshotMeta{VMM: "qemu", VMMVersion: "7.2.22", CPU: "tcg/max", VCPU: 2, MemoryMiB: 64,
		RAM: vmm.SnapshotRAMFile, Files: []string{SnapshotStateFile, SnapshotMemFile}}
	ctx := context.Background()
	if _, err := d.checkSnapshot(ctx, s, snapshotDir(t, 64<<20), good); err != nil {
		t.Fatalf("good snapshot refused: %v", err)
	}
	for name, tc := range map[string]struct {
		mutate func(m *vmm.SnapshotMeta, dir string)
		want   error
		text   string
	}{
		"other vmm":     {func(m *vmm.SnapshotMeta, _ string) { m.VMM = "firecracker" }, vmm.ErrSnapshotMismatch, "firecracker"},
		"other version": {func(m *vmm.SnapshotMeta, _ string) { m.VMMVersion = "8.0.0" }, vmm.ErrSnapshotMismatch, "QEMU 8.0.0"},
		"other cpu":     {func(m *vmm.SnapshotMeta, _ string) { m.CPU = "kvm/host" }, vmm.ErrSnapshotMismatch, "kvm/host"},
		"other vcpu":    {func(m *vmm.SnapshotMeta, _ string) { m.VCPU = 4 }, vmm.ErrSnapshotMismatch, "4 vcpu"},
		"unknown ram":   {func(m *vmm.SnapshotMeta, _ string) { m.RAM = "disk" }, vmm.ErrSnapshotMismatch, "ram"},
		"state missing": {func(_ *vmm.SnapshotMeta, dir string) { os.Remove(filepath.Join(dir, SnapshotStateFile)) }, api.ErrNotFound, "state"},
		"mem missing":   {func(_ *vmm.SnapshotMeta, dir string) { os.Remove(filepath.Join(dir, SnapshotMemFile)) }, api.ErrNotFound, "mem"},
		"mem truncated": {func(_ *vmm.SnapshotMeta, dir string) { os.Truncate(filepath.Join(dir, SnapshotMemFile), 4096) }, api.ErrInvalid, "corrupt"},
		"state symlink": {func(_ *vmm.SnapshotMeta, dir string) {
			p := filepath.Join(dir, SnapshotStateFile)
			os.Remove(p)
			os.Symlink("/etc/passwd", p)
		}, api.ErrInvalid, "not a regular file"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := snapshotDir(t, 64<<20)
			m := good
			tc.mutate(&m, dir)
			_, err := d.checkSnapshot(ctx, s, dir, m)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("got %v, want %v naming %q", err, tc.want, tc.text)
			}
		})
	}
}
