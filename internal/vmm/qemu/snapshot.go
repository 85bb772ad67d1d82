package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

var _ vmm.Snapshotter = (*Driver)(nil)

// Snapshot file names inside a snapshot directory.
const (
	SnapshotStateFile = "state" // the migration stream: device state (and RAM when not in mem)
	SnapshotMemFile   = "mem"   // guest RAM, restored by a private mapping
)

const (
	snapshotTimeout = 5 * time.Minute // RAM in the stream can be GiBs
	pauseTimeout    = 10 * time.Second
	stateFDName     = "banger-state"
)

// Pause stops the vCPUs (QMP stop).
func (d *Driver) Pause(ctx context.Context, s vmm.Spec) error {
	return d.qmpSimple(ctx, s, "stop")
}

// Resume continues the vCPUs (QMP cont); after a snapshot it also takes
// the disks back from the finished migration. A save still in progress (a
// snapshot that failed or timed out, or whose daemon died) is cancelled
// first: left running, its completion would stop the guest again.
func (d *Driver) Resume(ctx context.Context, s vmm.Spec) error {
	q, err := dialQMP(ctx, vmFiles(s.Dir).qmp, pauseTimeout)
	if err != nil {
		return fmt.Errorf("vm %s: %w", s.ID, err)
	}
	defer q.Close()
	if err := q.cancelMigration(ctx); err != nil {
		return fmt.Errorf("vm %s: %w", s.ID, err)
	}
	if _, err := q.call("cont", nil); err != nil {
		return fmt.Errorf("vm %s: %w", s.ID, err)
	}
	return nil
}

func (d *Driver) qmpSimple(ctx context.Context, s vmm.Spec, cmd string) error {
	q, err := dialQMP(ctx, vmFiles(s.Dir).qmp, pauseTimeout)
	if err != nil {
		return fmt.Errorf("vm %s: %w", s.ID, err)
	}
	defer q.Close()
	if _, err := q.call(cmd, nil); err != nil {
		return fmt.Errorf("vm %s: %w", s.ID, err)
	}
	return nil
}

// Paused reports whether the guest is not running (paused, or stopped at
// the end of a snapshot's migration).
func (d *Driver) Paused(ctx context.Context, s vmm.Spec) (bool, error) {
	q, err := dialQMP(ctx, vmFiles(s.Dir).qmp, pauseTimeout)
	if err != nil {
		return false, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	defer q.Close()
	st, err := q.status()
	if err != nil {
		return false, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	return st != "running", nil
}

// Snapshot migrates the paused VM's device state into dir/state. RAM that
// is shared with its file (every booted VM) is skipped in the stream
// (x-ignore-shared) and the file copied to dir/mem while the guest stays
// paused; RAM that is private (a VM restored from a snapshot's memory) goes
// into the stream.
func (d *Driver) Snapshot(ctx context.Context, s vmm.Spec, dir string) (vmm.SnapshotMeta, error) {
	var meta vmm.SnapshotMeta
	ctx, cancel := context.WithTimeout(ctx, snapshotTimeout)
	defer cancel()
	f := vmFiles(s.Dir)
	q, err := dialQMP(ctx, f.qmp, snapshotTimeout)
	if err != nil {
		return meta, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	defer q.Close()
	st, err := q.status()
	if err != nil {
		return meta, err
	}
	if st != "paused" {
		return meta, fmt.Errorf("vm %s: snapshot needs a paused vm, it is %q: %w", s.ID, st, api.ErrBusy)
	}
	var shared bool
	ret, err := q.call("qom-get", map[string]any{"path": "/objects/mem", "property": "share"})
	if err != nil {
		return meta, fmt.Errorf("vm %s: guest memory backend: %w", s.ID, err)
	}
	if err := json.Unmarshal(ret, &shared); err != nil {
		return meta, fmt.Errorf("vm %s: guest memory backend: %w", s.ID, err)
	}
	version, err := qmpVersion(q)
	if err != nil {
		return meta, err
	}
	accel, _ := d.accel(ctx)
	if _, err := q.call("migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{
		{"capability": "x-ignore-shared", "state": shared},
	}}); err != nil {
		return meta, err
	}
	// The guest is paused: the stream is written as fast as the file takes it.
	if _, err := q.call("migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}); err != nil {
		return meta, err
	}
	statePath := filepath.Join(dir, SnapshotStateFile)
	sf, err := os.OpenFile(statePath, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return meta, fmt.Errorf("snapshot state: %w", err)
	}
	defer sf.Close()
	if _, err := q.callFile("getfd", map[string]any{"fdname": stateFDName}, sf); err != nil {
		return meta, err
	}
	if _, err := q.call("migrate", map[string]any{"uri": "fd:" + stateFDName}); err != nil {
		_, _ = q.call("closefd", map[string]any{"fdname": stateFDName})
		return meta, err
	}
	if err := q.waitMigration(ctx); err != nil {
		// Stop QEMU writing into a state file that is about to go.
		_ = q.cancelMigration(context.WithoutCancel(ctx))
		return meta, fmt.Errorf("vm %s: save state: %w", s.ID, err)
	}
	if err := sf.Sync(); err != nil {
		return meta, fmt.Errorf("snapshot state: %w", err)
	}
	meta = vmm.SnapshotMeta{
		VMM: d.Name(), VMMVersion: version, CPU: string(accel) + "/" + cpuModel(accel),
		VCPU: s.VCPU, MemoryMiB: s.MemoryMiB, RAM: vmm.SnapshotRAMStream, Files: []string{SnapshotStateFile},
	}
	if shared {
		// Still paused: the file is the guest's memory as of the state.
		if _, err := disk.Clone(ctx, f.mem, filepath.Join(dir, SnapshotMemFile)); err != nil {
			return meta, fmt.Errorf("vm %s: copy guest memory: %w", s.ID, err)
		}
		meta.RAM = vmm.SnapshotRAMFile
		meta.Files = append(meta.Files, SnapshotMemFile)
	}
	return meta, nil
}

func qmpVersion(q *qmpConn) (string, error) {
	ret, err := q.call("query-version", nil)
	if err != nil {
		return "", err
	}
	var v struct {
		QEMU struct{ Major, Minor, Micro int } `json:"qemu"`
	}
	if err := json.Unmarshal(ret, &v); err != nil {
		return "", fmt.Errorf("qmp query-version: %w", err)
	}
	return fmt.Sprintf("%d.%d.%d", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro), nil
}

var versionRE = regexp.MustCompile(`QEMU emulator version (\d+\.\d+\.\d+)`)

// Version is the QEMU binary's version ("7.2.22"), asked once.
func (d *Driver) Version(ctx context.Context) (string, error) {
	d.mu.Lock()
	v := d.version
	d.mu.Unlock()
	if v != "" {
		return v, nil
	}
	bin, err := d.binary()
	if err != nil {
		return "", err
	}
	out, err := d.Runner.Run(ctx, bin, "--version")
	if err != nil {
		return "", fmt.Errorf("qemu --version: %w", err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("qemu --version: no version in %q", firstLine(string(out)))
	}
	d.mu.Lock()
	d.version = string(m[1])
	d.mu.Unlock()
	return string(m[1]), nil
}

// checkSnapshot refuses, before anything is launched, a snapshot this QEMU
// cannot restore into s.
func (d *Driver) checkSnapshot(ctx context.Context, s vmm.Spec, dir string, meta vmm.SnapshotMeta) (Accel, error) {
	mismatch := func(format string, a ...any) error {
		return fmt.Errorf("vm %s: "+format+": %w", append([]any{s.ID}, append(a, vmm.ErrSnapshotMismatch)...)...)
	}
	if meta.VMM != d.Name() {
		return "", mismatch("snapshot made by %q, this is %q", meta.VMM, d.Name())
	}
	version, err := d.Version(ctx)
	if err != nil {
		return "", err
	}
	if meta.VMMVersion != version {
		return "", mismatch("snapshot made by QEMU %s, this is QEMU %s", meta.VMMVersion, version)
	}
	accel, _ := d.accel(ctx)
	if cpu := string(accel) + "/" + cpuModel(accel); meta.CPU != cpu {
		return "", mismatch("snapshot made with cpu %s, this host gives %s", meta.CPU, cpu)
	}
	if meta.VCPU != s.VCPU || meta.MemoryMiB != s.MemoryMiB {
		return "", mismatch("snapshot has %d vcpu / %d MiB, the vm asks %d / %d", meta.VCPU, meta.MemoryMiB, s.VCPU, s.MemoryMiB)
	}
	want := map[string]int64{SnapshotStateFile: -1}
	switch meta.RAM {
	case vmm.SnapshotRAMFile:
		want[SnapshotMemFile] = int64(s.MemoryMiB) << 20
	case vmm.SnapshotRAMStream:
	default:
		return "", mismatch("unknown ram kind %q", meta.RAM)
	}
	for name, size := range want {
		st, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			return "", fmt.Errorf("vm %s: snapshot file: %w: %w", s.ID, err, api.ErrNotFound)
		}
		if !st.Mode().IsRegular() {
			return "", fmt.Errorf("vm %s: snapshot file %s is not a regular file: %w", s.ID, name, api.ErrInvalid)
		}
		if size >= 0 && st.Size() != size {
			return "", fmt.Errorf("vm %s: snapshot file %s has %d bytes, want %d (corrupt snapshot): %w", s.ID, name, st.Size(), size, api.ErrInvalid)
		}
	}
	return accel, nil
}

// Restore starts QEMU for s waiting for an incoming migration, feeds it
// dir/state (RAM from dir/mem, mapped privately, or from the stream into
// the VM's own file), attaches the console and resumes the guest.
func (d *Driver) Restore(ctx context.Context, s vmm.Spec, dir string, meta vmm.SnapshotMeta) (int, error) {
	bin, err := d.preflight(s)
	if err != nil {
		return 0, err
	}
	accel, err := d.checkSnapshot(ctx, s, dir, meta)
	if err != nil {
		return 0, err
	}
	f := vmFiles(s.Dir)
	mem := memory{path: f.mem, share: true, incoming: true}
	if meta.RAM == vmm.SnapshotRAMFile {
		mem = memory{path: filepath.Join(dir, SnapshotMemFile), share: false, incoming: true}
	}
	if err := checkPath("memory", mem.path, true); err != nil {
		return 0, err
	}
	args, err := buildArgsMem(s, accel, 0, mem)
	if err != nil {
		return 0, err
	}
	state, err := os.OpenFile(filepath.Join(dir, SnapshotStateFile), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return 0, fmt.Errorf("vm %s: snapshot state: %w", s.ID, err)
	}
	defer state.Close()
	d.detachConsole(f, 2*time.Second)
	if err := prepareFiles(f); err != nil {
		return 0, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	if err := os.Remove(f.mem); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("vm %s: stale memory file: %w", s.ID, err)
	}
	started := time.Now()
	pid, err := d.Runner.Start(ctx, system.ProcSpec{
		Path: bin, Args: args, Dir: s.Dir, Stdout: f.vmmLog, UID: s.UID, GID: s.GID, ExtraFiles: extraFiles(s),
	})
	if err != nil {
		return 0, fmt.Errorf("vm %s: start qemu: %w", s.ID, err)
	}
	d.procs.Remember(pid, isQEMUOf(f.pid))
	if err := d.incoming(ctx, pid, f, state, meta); err != nil {
		_ = d.procs.Signal(pid, unix.SIGKILL)
		return 0, fmt.Errorf("vm %s: restore: %w", s.ID, err)
	}
	d.log().Info("qemu restored", "vm", s.ID, "pid", pid, "ram", meta.RAM,
		"elapsed_ms", time.Since(started).Milliseconds())
	return pid, nil
}

// incoming drives the restore of a QEMU started with -incoming defer.
func (d *Driver) incoming(ctx context.Context, pid int, f files, state *os.File, meta vmm.SnapshotMeta) error {
	ctx, cancel := context.WithTimeout(ctx, snapshotTimeout)
	defer cancel()
	// QMP comes up once QEMU has parsed its command line.
	var q *qmpConn
	for {
		if !vmm.ProcessAlive(pid) {
			return d.died(f)
		}
		var err error
		if q, err = dialQMP(ctx, f.qmp, qmpTimeout); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qmp not up: %w", err)
		case <-time.After(pollInterval):
		}
	}
	defer q.Close()
	// Reads and writes on this one connection span the whole restore.
	if dl, ok := ctx.Deadline(); ok {
		_ = q.c.SetDeadline(dl)
	}
	if _, err := q.call("migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{
		{"capability": "x-ignore-shared", "state": meta.RAM == vmm.SnapshotRAMFile},
	}}); err != nil {
		return err
	}
	if _, err := q.callFile("getfd", map[string]any{"fdname": stateFDName}, state); err != nil {
		return err
	}
	if _, err := q.call("migrate-incoming", map[string]any{"uri": "fd:" + stateFDName}); err != nil {
		return err
	}
	if err := q.waitMigration(ctx); err != nil {
		if !vmm.ProcessAlive(pid) {
			return fmt.Errorf("%w; %w", err, d.died(f))
		}
		return fmt.Errorf("load state (corrupt or incompatible snapshot?): %w; qemu: %s", err, tailOrNone(f.vmmLog))
	}
	// -S: the guest stays paused after the load until the console is attached.
	for {
		st, err := q.status()
		if err != nil {
			return err
		}
		if st == "paused" || st == "prelaunch" {
			break
		}
		if st != "inmigrate" {
			return fmt.Errorf("after load qemu is %q; qemu: %s", st, tailOrNone(f.vmmLog))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu still loading: %w", ctx.Err())
		case <-time.After(pollInterval):
		}
	}
	if err := d.attachConsole(f); err != nil {
		return err
	}
	if _, err := q.call("cont", nil); err != nil {
		return err
	}
	return nil
}
