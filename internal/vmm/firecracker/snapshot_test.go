package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// countingRunner is system.Exec that counts the VMMs it starts.
type countingRunner struct {
	system.Exec
	mu     sync.Mutex
	starts int
}

func (r *countingRunner) Start(ctx context.Context, p system.ProcSpec) (int, error) {
	r.mu.Lock()
	r.starts++
	r.mu.Unlock()
	return r.Exec.Start(ctx, p)
}

func (r *countingRunner) started() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.starts
}

// snapDriver is fakeDriver with a countingRunner and the default vsock.
func snapDriver(t *testing.T) (*Driver, *countingRunner) {
	t.Helper()
	d := fakeDriver(t)
	r := &countingRunner{}
	d.Runner = r
	return d, r
}

// restoreSpec is another VM beside testSpec's: its own dir, disks, TAP, MAC.
func restoreSpec(t *testing.T, dir string) vmm.Spec {
	t.Helper()
	s := testSpec(t, dir, false)
	s.ID, s.Dir, s.Tap, s.MAC = "def456", filepath.Join(dir, "vm2"), "bgr-def456", "02:BA:AC:1E:00:03"
	s.MemoryMiB = 64
	s.Disks = []vmm.Disk{{Path: filepath.Join(dir, "root2.ext4")}, {Path: filepath.Join(dir, "ro2.ext4"), ReadOnly: true}}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, dk := range s.Disks {
		if err := os.WriteFile(dk.Path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func readState(t *testing.T, s vmm.Spec) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Dir, APISocket) + ".state")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The source VM after Pause and Snapshot ($S is the snapshot dir).
const wantSnapshottedState = `machine-config {"mem_size_mib":64,"smt":false,"vcpu_count":2}
boot-source {"boot_args":"console=ttyS0 panic=5 reboot=k pci=off","initrd_path":"$D/initramfs.img","kernel_image_path":"$D/vmlinux"}
drive d0 {"cache_type":"Writeback","drive_id":"d0","is_read_only":false,"is_root_device":false,"path_on_host":"$D/root.ext4"}
drive d1 {"cache_type":"Writeback","drive_id":"d1","is_read_only":true,"is_root_device":false,"path_on_host":"$D/ro.ext4"}
network-interface n0 {"guest_mac":"02:ba:ac:1e:00:02","host_dev_name":"bgr-abc123","iface_id":"n0"}
vsock {"guest_cid":3,"uds_path":"$V/fc-vsock.sock"}
serial {"rate_limiter":{"refill_time":1000,"size":262144}}
snapshot $S/vmstate $S/mem
state Paused
`

// The restored VM: no boot source or serial configured, every drive on the
// new VM's disks, its own TAP and vsock socket, the snapshot's guest MAC,
// running.
const wantRestoredState = `machine-config {"mem_size_mib":64,"smt":false,"vcpu_count":2}
drive d0 {"cache_type":"Writeback","drive_id":"d0","is_read_only":false,"is_root_device":false,"path_on_host":"$D/root2.ext4"}
drive d1 {"cache_type":"Writeback","drive_id":"d1","is_read_only":true,"is_root_device":false,"path_on_host":"$D/ro2.ext4"}
network-interface n0 {"guest_mac":"02:ba:ac:1e:00:02","host_dev_name":"bgr-def456","iface_id":"n0"}
vsock {"guest_cid":3,"uds_path":"$D/vm2/fc-vsock.sock"}
loaded {"mem_backend":{"backend_path":"$S/mem","backend_type":"File"},"network_overrides":[{"host_dev_name":"bgr-def456","iface_id":"n0"}],"resume_vm":false,"snapshot_path":"$S/vmstate","vsock_override":{"uds_path":"$D/vm2/fc-vsock.sock"}}
state Running
`

// snapshotSource starts the source VM, pauses it and snapshots it into a
// fresh dir; the VM is left paused.
func snapshotSource(t *testing.T, d *Driver, dir string) (vmm.Spec, string, vmm.SnapshotMeta) {
	t.Helper()
	s := testSpec(t, dir, false)
	s.MemoryMiB = 64
	killOnCleanup(t, d, s)
	ctx := context.Background()
	if _, err := d.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := d.Pause(ctx, s); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(dir, "snap")
	if err := os.Mkdir(snap, 0o700); err != nil {
		t.Fatal(err)
	}
	meta, err := d.Snapshot(ctx, s, snap)
	if err != nil {
		t.Fatal(err)
	}
	return s, snap, meta
}

// Pause, Snapshot, Resume on one VM and Restore into another, against the
// fake firecracker process: the state of both is the expected text, every
// request of both validates against the spec, the restore's first
// configuration request is the load.
func TestSnapshotRestoreFake(t *testing.T) {
	spec := loadSpec(t)
	d, _ := snapDriver(t)
	var logs bytes.Buffer
	d.Log = slog.New(slog.NewTextHandler(&logs, nil))
	dir := t.TempDir()
	ctx := context.Background()
	s := testSpec(t, dir, false)
	s.MemoryMiB = 64
	killOnCleanup(t, d, s)
	if _, err := d.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(dir, "snap")
	if err := os.Mkdir(snap, 0o700); err != nil {
		t.Fatal(err)
	}

	if p, err := d.Paused(ctx, s); err != nil || p {
		t.Fatalf("Paused = %v, %v before Pause", p, err)
	}
	if _, err := d.Snapshot(ctx, s, snap); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "pause it first") {
		t.Fatalf("Snapshot of a running vm: %v, want ErrInvalid", err)
	}
	if ents, _ := os.ReadDir(snap); len(ents) != 0 {
		t.Fatalf("refused snapshot left %d files", len(ents))
	}
	for range 2 { // idempotent
		if err := d.Pause(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := d.Paused(ctx, s); err != nil || !p {
		t.Fatalf("Paused = %v, %v after Pause", p, err)
	}
	meta, err := d.Snapshot(ctx, s, snap)
	if err != nil {
		t.Fatal(err)
	}
	want := vmm.SnapshotMeta{VMM: "firecracker", VMMVersion: "1.16.1", CPU: "kvm/host", VCPU: 2, MemoryMiB: 64,
		RAM: vmm.SnapshotRAMFile, Files: []string{"vmstate", "mem"}}
	if !reflect.DeepEqual(meta, want) {
		t.Errorf("meta %+v\nwant %+v", meta, want)
	}
	exp := strings.NewReplacer("$S", snap, "$V", s.Dir, "$D", dir)
	if got, want := readState(t, s), exp.Replace(wantSnapshottedState); got != want {
		t.Errorf("source state:\n%s\nwant:\n%s", got, want)
	}
	if _, err := d.Snapshot(ctx, s, snap); !errors.Is(err, api.ErrExists) {
		t.Errorf("second Snapshot into the same dir: %v, want ErrExists", err)
	}
	full := filepath.Join(dir, "full-disk")
	must(t, os.Mkdir(full, 0o700))
	if _, err := d.Snapshot(ctx, s, full); !errors.Is(err, ErrAPI) || !strings.Contains(err.Error(), "No space left") {
		t.Errorf("Snapshot onto a full disk: %v, want the fault", err)
	}
	if ents, _ := os.ReadDir(full); len(ents) != 0 {
		t.Errorf("failed snapshot left %d files", len(ents))
	}
	for range 2 {
		if err := d.Resume(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := d.Paused(ctx, s); err != nil || p {
		t.Fatalf("Paused = %v, %v after Resume", p, err)
	}

	// The source keeps running (its disks, TAP name and vsock socket taken)
	// while the snapshot is restored into another VM.
	s2 := restoreSpec(t, dir)
	killOnCleanup(t, d, s2)
	pid, err := d.Restore(ctx, s2, snap, meta)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := readState(t, s2), exp.Replace(wantRestoredState); got != want {
		t.Errorf("restored state:\n%s\nwant:\n%s", got, want)
	}
	if got, ok := d.Find(s2); !ok || got != pid {
		t.Errorf("Find = %d, %v; want %d", got, ok, pid)
	}
	if want := `msg="restored guest keeps the snapshot's mac" vm=def456 guest_mac=02:ba:ac:1e:00:02 spec_mac=02:ba:ac:1e:00:03`; !strings.Contains(logs.String(), want) {
		t.Errorf("log lacks %q:\n%s", want, logs.String())
	}
	if p, err := d.Paused(ctx, s2); err != nil || p {
		t.Errorf("restored Paused = %v, %v", p, err)
	}
	reqs2 := readRequests(t, filepath.Join(s2.Dir, APISocket)+".requests")
	for _, r := range reqs2 {
		if r.Method != "GET" {
			if r.Method+" "+r.Path != "PUT /snapshot/load" {
				t.Errorf("first configuration request %s %s, want PUT /snapshot/load", r.Method, r.Path)
			}
			break
		}
	}
	validateAll(t, spec, readRequests(t, filepath.Join(s.Dir, APISocket)+".requests"))
	validateAll(t, spec, reqs2)
	for _, v := range []vmm.Spec{s, s2} {
		p, _ := d.Find(v)
		if err := d.Shutdown(ctx, p); err != nil {
			t.Fatal(err)
		}
		waitGone(t, d, v)
	}
}

// assertNothingLaunched: no VMM process, socket, pid file or console log.
func assertNothingLaunched(t *testing.T, d *Driver, r *countingRunner, s vmm.Spec) {
	t.Helper()
	if n := r.started(); n != 0 {
		t.Errorf("%d vmm(s) launched", n)
	}
	if pid, ok := d.Find(s); ok {
		t.Errorf("a vmm runs: pid %d", pid)
	}
	for _, n := range []string{APISocket, "vmm.pid", "console.log"} {
		if _, err := os.Lstat(filepath.Join(s.Dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists (%v)", n, err)
		}
	}
}

// Restore refuses, before launching anything, a snapshot of another VMM,
// version, CPU or size (ErrSnapshotMismatch), missing files or disks
// (ErrNotFound), symlinked, non-regular, escaping or short files
// (ErrInvalid), and a jailed restore (ErrUnsupported).
func TestRestoreRefusesBeforeLaunch(t *testing.T) {
	good := vmm.SnapshotMeta{VMM: "firecracker", VMMVersion: "1.16.1", CPU: "kvm/host", VCPU: 2, MemoryMiB: 64,
		RAM: vmm.SnapshotRAMFile, Files: []string{"vmstate", "mem"}}
	cases := []struct {
		name string
		mut  func(t *testing.T, m *vmm.SnapshotMeta, snap string, s *vmm.Spec, d *Driver)
		want error
	}{
		{"another vmm", func(_ *testing.T, m *vmm.SnapshotMeta, _ string, _ *vmm.Spec, _ *Driver) { m.VMM = "qemu" }, vmm.ErrSnapshotMismatch},
		{"another version", func(_ *testing.T, m *vmm.SnapshotMeta, _ string, _ *vmm.Spec, _ *Driver) { m.VMMVersion = "1.15.0" }, vmm.ErrSnapshotMismatch},
		{"another cpu", func(_ *testing.T, m *vmm.SnapshotMeta, _ string, _ *vmm.Spec, _ *Driver) { m.CPU = "tcg/max" }, vmm.ErrSnapshotMismatch},
		{"ram in a stream", func(_ *testing.T, m *vmm.SnapshotMeta, _ string, _ *vmm.Spec, _ *Driver) {
			m.RAM = vmm.SnapshotRAMStream
		}, vmm.ErrSnapshotMismatch},
		{"vcpu differs", func(_ *testing.T, _ *vmm.SnapshotMeta, _ string, s *vmm.Spec, _ *Driver) { s.VCPU = 4 }, vmm.ErrSnapshotMismatch},
		{"memory differs", func(_ *testing.T, _ *vmm.SnapshotMeta, _ string, s *vmm.Spec, _ *Driver) { s.MemoryMiB = 128 }, vmm.ErrSnapshotMismatch},
		{"no memory file listed", func(_ *testing.T, m *vmm.SnapshotMeta, _ string, _ *vmm.Spec, _ *Driver) {
			m.Files = []string{"vmstate"}
		}, vmm.ErrSnapshotMismatch},
		{"memory file short", func(t *testing.T, _ *vmm.SnapshotMeta, snap string, _ *vmm.Spec, _ *Driver) {
			must(t, os.Truncate(filepath.Join(snap, "mem"), 63<<20))
		}, api.ErrInvalid},
		{"memory file missing", func(t *testing.T, _ *vmm.SnapshotMeta, snap string, _ *vmm.Spec, _ *Driver) {
			must(t, os.Remove(filepath.Join(snap, "mem")))
		}, api.ErrNotFound},
		{"state file missing", func(t *testing.T, _ *vmm.SnapshotMeta, snap string, _ *vmm.Spec, _ *Driver) {
			must(t, os.Remove(filepath.Join(snap, "vmstate")))
		}, api.ErrNotFound},
		{"state file a symlink", func(t *testing.T, _ *vmm.SnapshotMeta, snap string, _ *vmm.Spec, _ *Driver) {
			p := filepath.Join(snap, "vmstate")
			must(t, os.Rename(p, p+".real"))
			must(t, os.Symlink(p+".real", p))
		}, api.ErrInvalid},
		{"memory file a directory", func(t *testing.T, _ *vmm.SnapshotMeta, snap string, _ *vmm.Spec, _ *Driver) {
			p := filepath.Join(snap, "mem")
			must(t, os.Remove(p))
			must(t, os.Mkdir(p, 0o700))
		}, api.ErrInvalid},
		{"file name escapes", func(_ *testing.T, m *vmm.SnapshotMeta, _ string, _ *vmm.Spec, _ *Driver) {
			m.Files = append(m.Files, "../vm/vmm.pid")
		}, api.ErrInvalid},
		{"disk missing", func(t *testing.T, _ *vmm.SnapshotMeta, _ string, s *vmm.Spec, _ *Driver) {
			must(t, os.Remove(s.Disks[1].Path))
		}, api.ErrNotFound},
		{"jailed", func(_ *testing.T, _ *vmm.SnapshotMeta, _ string, _ *vmm.Spec, d *Driver) {
			d.Jailer = &fakeJailer{t: t}
		}, errors.ErrUnsupported},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, r := snapDriver(t)
			dir := t.TempDir()
			snap := filepath.Join(dir, "snap")
			must(t, os.Mkdir(snap, 0o700))
			must(t, os.WriteFile(filepath.Join(snap, "vmstate"), []byte("state"), 0o600))
			must(t, os.WriteFile(filepath.Join(snap, "mem"), nil, 0o600))
			must(t, os.Truncate(filepath.Join(snap, "mem"), 64<<20))
			s := restoreSpec(t, dir)
			m := good
			m.Files = append([]string(nil), good.Files...)
			c.mut(t, &m, snap, &s, d)
			killOnCleanup(t, d, s)
			_, err := d.Restore(context.Background(), s, snap, m)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			assertNothingLaunched(t, d, r, s)
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A load Firecracker refuses ends that Firecracker (the snapshot's own disk
// gone, a corrupt state file); devices that do not match the spec are
// refused after the load. Either way the error says why and no process or
// pid file is left.
func TestRestoreFailureLeavesNothing(t *testing.T) {
	cases := []struct {
		name  string
		mut   func(t *testing.T, src vmm.Spec, snap string, s *vmm.Spec)
		want  error
		wants []string
	}{
		{"source disk gone", func(t *testing.T, src vmm.Spec, _ string, _ *vmm.Spec) {
			must(t, os.Remove(src.Disks[0].Path))
		}, ErrAPI, []string{"PUT /snapshot/load", "Cannot restore devices", "original paths"}},
		{"corrupt state", func(t *testing.T, _ vmm.Spec, snap string, _ *vmm.Spec) {
			must(t, os.WriteFile(filepath.Join(snap, "vmstate"), []byte("garbage"), 0o600))
		}, ErrAPI, []string{"PUT /snapshot/load", "corrupt"}},
		{"disk fewer", func(_ *testing.T, _ vmm.Spec, _ string, s *vmm.Spec) {
			s.Disks = s.Disks[:1]
		}, vmm.ErrSnapshotMismatch, []string{"snapshot drives [d0 ro=false, d1 ro=true], spec drives [d0 ro=false]"}},
		{"ro differs", func(_ *testing.T, _ vmm.Spec, _ string, s *vmm.Spec) {
			s.Disks[1].ReadOnly = false
		}, vmm.ErrSnapshotMismatch, []string{"spec drives [d0 ro=false, d1 ro=false]"}},
		{"no tap", func(_ *testing.T, _ vmm.Spec, _ string, s *vmm.Spec) {
			s.Tap, s.MAC = "", ""
		}, vmm.ErrSnapshotMismatch, []string{`snapshot network interfaces ["n0"], spec []`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, _ := snapDriver(t)
			dir := t.TempDir()
			src, snap, meta := snapshotSource(t, d, dir)
			p, _ := d.Find(src)
			must(t, d.Shutdown(context.Background(), p))
			waitGone(t, d, src)
			s := restoreSpec(t, dir)
			c.mut(t, src, snap, &s)
			killOnCleanup(t, d, s)
			_, err := d.Restore(context.Background(), s, snap, meta)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			for _, w := range append(c.wants, "vm def456: restore") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			waitGone(t, d, s)
			if _, err := os.Stat(filepath.Join(s.Dir, "vmm.pid")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pid file left behind: %v", err)
			}
		})
	}
}

// Pause, Resume, Paused and Snapshot need a live, unjailed Firecracker.
func TestSnapshotterNeedsALiveVM(t *testing.T) {
	d, _ := snapDriver(t)
	s := testSpec(t, t.TempDir(), false)
	ctx := context.Background()
	snap := t.TempDir()
	ops := map[string]func() error{
		"pause":    func() error { return d.Pause(ctx, s) },
		"resume":   func() error { return d.Resume(ctx, s) },
		"paused":   func() error { _, err := d.Paused(ctx, s); return err },
		"snapshot": func() error { _, err := d.Snapshot(ctx, s, snap); return err },
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, api.ErrNotRunning) {
			t.Errorf("%s: %v, want ErrNotRunning", name, err)
		}
	}
	d.Jailer = &fakeJailer{t: t}
	for name, op := range ops {
		if err := op(); !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("jailed %s: %v, want ErrUnsupported", name, err)
		}
	}
}

// The fake's snapshot rules, which the driver tests lean on, are the
// spec's and Firecracker's docs': load only on a fresh process, create only
// when paused, PATCH only after boot, a failed load ends the process; its
// answers are spec-shaped. Every request here validates against the spec.
func TestFakeSnapshotRules(t *testing.T) {
	spec := loadSpec(t)
	ctx := context.Background()
	dir := t.TempDir()
	s := testSpec(t, dir, false)
	snap := t.TempDir()
	stateP, memP := filepath.Join(snap, "vmstate"), filepath.Join(snap, "mem")
	load := SnapshotLoadParams{SnapshotPath: stateP, MemBackend: &MemoryBackend{BackendType: MemBackendFile, BackendPath: memP}}
	faults := func(err error, want string) {
		t.Helper()
		if !errors.Is(err, ErrAPI) || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want a fault containing %q", err, want)
		}
	}

	fake, sock := serveFake(t)
	c := NewClient(sock)
	defer c.Close()
	faults(c.PatchVM(ctx, VMPaused), "before starting")
	faults(c.PatchDrive(ctx, PartialDrive{DriveID: "d0", PathOnHost: s.Disks[0].Path}), "before starting")
	faults(c.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotPath: stateP, MemFilePath: memP}), "before starting")
	for _, st := range (&Driver{VsockCID: 3}).config(s, vmFiles(s.Dir)) {
		must(t, st(ctx, c))
	}
	faults(c.LoadSnapshot(ctx, load), "after starting")
	faults(c.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotPath: stateP, MemFilePath: memP}), "not paused")
	must(t, c.PatchVM(ctx, VMPaused))
	faults(c.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotType: "Diff", SnapshotPath: stateP, MemFilePath: memP}), "track_dirty_pages")
	must(t, c.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotType: SnapshotFull, SnapshotPath: stateP, MemFilePath: memP}))
	faults(c.PatchDrive(ctx, PartialDrive{DriveID: "d9", PathOnHost: s.Disks[0].Path}), "Invalid block device ID")
	faults(c.PatchDrive(ctx, PartialDrive{DriveID: "d0", PathOnHost: filepath.Join(dir, "nope")}), "no such file")
	must(t, c.PatchDrive(ctx, PartialDrive{DriveID: "d0", PathOnHost: s.Disks[1].Path}))
	v, err := c.Version(ctx)
	if err != nil || v != "1.16.1" {
		t.Errorf("version %q, %v", v, err)
	}
	cfg, err := c.VMConfig(ctx)
	if err != nil || len(cfg.Drives) != 2 || cfg.Drives[0].PathOnHost != s.Disks[1].Path || cfg.Vsock == nil {
		t.Errorf("vm config %+v, %v", cfg, err)
	}
	validateAnswers(t, spec, sock)
	fake.mu.Lock()
	validateAll(t, spec, fake.requests)
	fake.mu.Unlock()

	// A fresh process: configuring anything first forbids the load; no
	// memory field is refused without ending the process.
	_, sock2 := serveFake(t)
	c2 := NewClient(sock2)
	defer c2.Close()
	both := load
	both.MemBackend = nil
	faults(c2.LoadSnapshot(ctx, both), "exactly one of")
	must(t, c2.PutMachineConfig(ctx, MachineConfiguration{VCPUCount: 1, MemSizeMiB: 64}))
	faults(c2.LoadSnapshot(ctx, load), "not allowed after configuring")

	// A load that fails ends the process: nothing answers afterwards. The
	// vsock socket of the first fake is still bound, so this load fails.
	_, sock3 := serveFake(t)
	c3 := NewClient(sock3)
	defer c3.Close()
	faults(c3.LoadSnapshot(ctx, load), "address already in use")
	_, err = c3.InstanceInfo(ctx)
	faults(err, "firecracker ended")

	// With the vsock moved the same snapshot loads, paused.
	_, sock4 := serveFake(t)
	c4 := NewClient(sock4)
	defer c4.Close()
	moved := load
	moved.VsockOverride = &VsockOverride{UDSPath: filepath.Join(t.TempDir(), "v.sock")}
	moved.NetworkOverrides = []NetworkOverride{{IfaceID: "n0", HostDevName: "bgr-other"}}
	must(t, c4.LoadSnapshot(ctx, moved))
	if info, err := c4.InstanceInfo(ctx); err != nil || info.State != StatePaused {
		t.Errorf("after load: %+v, %v", info, err)
	}
	faults(c4.PutMachineConfig(ctx, MachineConfiguration{VCPUCount: 1, MemSizeMiB: 64}), "after starting")
	validateAnswers(t, spec, sock4)
}

// validateAnswers checks the fake's GET answers against their definitions.
func validateAnswers(t *testing.T, spec *swagger, sock string) {
	t.Helper()
	c := NewClient(sock)
	defer c.Close()
	for path, def := range map[string]string{"/": "InstanceInfo", "/version": "FirecrackerVersion", "/vm/config": "FullVmConfiguration"} {
		var raw json.RawMessage
		if err := c.do(context.Background(), "GET", path, nil, &raw); err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var v any
		must(t, dec.Decode(&v))
		if err := spec.validate(&schema{Ref: "#/definitions/" + def}, v, def); err != nil {
			t.Errorf("GET %s answer: %v", path, err)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]string{"1.16.1": "1.16.1", "v1.16.1": "1.16.1", " v1.7.0-dev\n": "1.7.0-dev"} {
		if got, err := parseVersion(in); err != nil || got != want {
			t.Errorf("parseVersion(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1.16", "x.1.2", "v1..2", strings.Repeat("1", 200) + ".1.1"} {
		if got, err := parseVersion(in); err == nil {
			t.Errorf("parseVersion(%q) = %q, want an error", in, got)
		}
	}
	d, _ := snapDriver(t)
	bin, _ := d.binary()
	if v, err := d.binaryVersion(context.Background(), bin); err != nil || v != "1.16.1" {
		t.Errorf("binaryVersion = %q, %v", v, err)
	}
}

// A step refused by Firecracker that then exits (a failed snapshot load)
// reports the refusal, not only "exited during start".
func TestBringUpKeepsTheFaultOfADyingVMM(t *testing.T) {
	d, _ := snapDriver(t)
	s := testSpec(t, t.TempDir(), false)
	killOnCleanup(t, d, s)
	bin, _ := d.binary()
	ctx := context.Background()
	pid, f, err := d.launch(ctx, bin, s)
	if err != nil {
		t.Fatal(err)
	}
	refuseAndDie := func(ctx context.Context, c *Client) error {
		must(t, d.Kill(pid))
		for vmm.ProcessAlive(pid) {
			time.Sleep(pollInterval)
		}
		return fmt.Errorf("load: %w: 400 Bad Request: the fault", ErrAPI)
	}
	err = d.bringUp(ctx, pid, f, []step{refuseAndDie})
	if !errors.Is(err, ErrAPI) || !strings.Contains(err.Error(), "the fault") {
		t.Fatalf("err = %v, want the fault", err)
	}
}

// Creating a snapshot writes all guest memory: it gets its own, longer
// bound than an ordinary request.
func TestSnapshotCreateOutlastsTheRequestTimeout(t *testing.T) {
	sock := filepath.Join(t.TempDir(), APISocket)
	ln, err := net.Listen("unix", sock)
	must(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(200 * time.Millisecond)
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	c := NewClient(sock)
	defer c.Close()
	c.timeout, c.createTimeout, c.loadTimeout = 50*time.Millisecond, 2*time.Second, 2*time.Second
	ctx := context.Background()
	if err := c.PatchVM(ctx, VMPaused); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow PATCH /vm: %v, want a timeout", err)
	}
	must(t, c.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotPath: "/s", MemFilePath: "/m"}))
	must(t, c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s"}))
}
