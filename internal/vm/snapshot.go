package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/capability"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmm"
)

// Snapshot directory entries besides the driver's (vmm.SnapshotMeta.Files).
const (
	snapRootFile = "root.img"
	snapWorkFile = "work.img"
	snapMetaFile = "snapshot.json" // the row's content, for people and tools
	snapTmpPref  = ".tmp-"
	// MaxForks bounds one `vm fork`.
	MaxForks = 16
)

// snapshotter is d's snapshot support, or a clear refusal.
func snapshotter(d vmm.Driver) (vmm.Snapshotter, error) {
	sn, ok := d.(vmm.Snapshotter)
	if !ok {
		return nil, fmt.Errorf("the %s driver cannot pause or snapshot vms: %w", d.Name(), api.ErrInvalid)
	}
	return sn, nil
}

// paused reports the user's pause flag of the VM.
func (s *Service) paused(ctx context.Context, v store.VM) bool {
	st, err := s.d.Store.SnapshotState(ctx, v.ID)
	return err == nil && st.Paused
}

// usable refuses guest operations on a VM that is not running or paused
// (the guest cannot answer: never a hang).
func (s *Service) usable(ctx context.Context, v store.VM) error {
	if !s.Running(v) {
		return fmt.Errorf("vm %q is %s: %w", v.Name, v.State, api.ErrNotRunning)
	}
	if s.paused(ctx, v) {
		return fmt.Errorf("vm %q is paused (banger vm resume %s): %w", v.Name, v.Name, api.ErrBusy)
	}
	return nil
}

// runningLocked re-reads the row under the VM's lock and requires a live VMM.
func (s *Service) runningLocked(ctx context.Context, name string) (store.VM, vmm.Spec, func(), error) {
	v, err := s.Get(ctx, name)
	if err != nil {
		return v, vmm.Spec{}, nil, err
	}
	unlock := s.lock(v.ID)
	if v, err = s.Get(ctx, v.ID); err != nil {
		unlock()
		return v, vmm.Spec{}, nil, err
	}
	if !s.Running(v) {
		unlock()
		return v, vmm.Spec{}, nil, fmt.Errorf("vm %q is %s: %w", v.Name, v.State, api.ErrNotRunning)
	}
	spec, err := s.spec(v)
	if err != nil {
		unlock()
		return v, vmm.Spec{}, nil, err
	}
	return v, spec, unlock, nil
}

// Pause stops the VM's vCPUs; its memory and devices stay.
func (s *Service) Pause(ctx context.Context, name string) (store.VM, error) {
	return s.setPaused(ctx, name, true)
}

// Resume continues a paused VM and steps its clock over the pause.
func (s *Service) Resume(ctx context.Context, name string) (store.VM, error) {
	return s.setPaused(ctx, name, false)
}

func (s *Service) setPaused(ctx context.Context, name string, pause bool) (store.VM, error) {
	v, spec, unlock, err := s.runningLocked(ctx, name)
	if err != nil {
		return v, err
	}
	defer unlock()
	sn, err := snapshotter(s.driverFor(v))
	if err != nil {
		return v, err
	}
	op, verb := sn.Resume, "resume"
	if pause {
		op, verb = sn.Pause, "pause"
	}
	if err := op(ctx, spec); err != nil {
		return v, fmt.Errorf("%s vm %q: %w", verb, v.Name, err)
	}
	if err := s.d.Store.SetPaused(ctx, v.ID, pause); err != nil {
		return v, err
	}
	if !pause {
		s.Touch(v.ID)
		s.syncClock(ctx, v)
	}
	return v, nil
}

// syncClock steps the guest's wall clock to the host's after its vCPUs
// stood still (pause, snapshot). Best effort: the guest's own time sync,
// if any, would get there later.
func (s *Service) syncClock(ctx context.Context, v store.VM) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	now := time.Now().UTC()
	stamp := "@" + strconv.FormatInt(now.Unix(), 10) + "." + fmt.Sprintf("%09d", now.Nanosecond())
	code, err := s.d.Guest.Exec(cctx, s.target(v), guest.ExecRequest{Argv: []string{"date", "-u", "-s", stamp}})
	if err != nil || code != 0 {
		s.d.Log.WarnContext(ctx, "guest clock not stepped", "vm", v.Name, "code", code, "err", err)
	}
}

// Snapshot saves a running VM — device state, memory and both disks at the
// same instant — as a new snapshot named snapName, and lets it run on.
func (s *Service) Snapshot(ctx context.Context, name, snapName string, progress Progress) (store.Snapshot, error) {
	if err := validSnapshotName(snapName); err != nil {
		return store.Snapshot{}, err
	}
	v, spec, unlock, err := s.runningLocked(ctx, name)
	if err != nil {
		return store.Snapshot{}, err
	}
	defer unlock()
	return s.takeSnapshot(ctx, v, spec, snapName, "", false, progress)
}

func validSnapshotName(n string) error {
	if !nameRE.MatchString(n) || idRE.MatchString(n) {
		return fmt.Errorf("snapshot name %q: must be 1-32 lower-case letters, digits or '-', not 12 hex digits: %w", n, api.ErrInvalid)
	}
	return nil
}

// takeSnapshot does the work of Snapshot; the caller holds the VM's lock.
// The snapshot is made in <snapshots>/.tmp-<id> and renamed into place once
// complete, then recorded; a crash before the rename leaves a .tmp- dir
// that reconcile removes, and one after it an unrecorded dir, also removed.
func (s *Service) takeSnapshot(ctx context.Context, v store.VM, spec vmm.Spec, snapName, warmFor string, auto bool, progress Progress) (store.Snapshot, error) {
	sn, err := snapshotter(s.driverFor(v))
	if err != nil {
		return store.Snapshot{}, err
	}
	if _, err := s.d.Store.GetSnapshot(ctx, snapName); err == nil {
		return store.Snapshot{}, fmt.Errorf("snapshot %q: %w", snapName, api.ErrExists)
	}
	st, err := s.d.Store.SnapshotState(ctx, v.ID)
	if err != nil {
		return store.Snapshot{}, err
	}
	if st.Paused {
		return store.Snapshot{}, fmt.Errorf("vm %q is paused (resume it first: its agent must answer): %w", v.Name, api.ErrBusy)
	}
	// Every restore is re-identified by the guest's agent: a snapshot whose
	// agent cannot do it would only make VMs that answer as this one.
	ag, err := s.d.Guest.Agent(ctx, s.target(v))
	if err != nil {
		return store.Snapshot{}, fmt.Errorf("snapshot vm %q: its guest agent must answer (restores are re-identified through it): %w", v.Name, err)
	}
	if !ag.CanReidentify() {
		return store.Snapshot{}, fmt.Errorf("snapshot vm %q: its guest agent (%s) is too old to re-identify restores; rebuild or re-pull the image: %w",
			v.Name, ag.Version(), api.ErrInvalid)
	}
	id := newID()
	tmp := filepath.Join(s.d.Layout.SnapshotsDir(), snapTmpPref+id)
	final := s.d.Layout.Snapshot(id)
	if err := os.MkdirAll(s.d.Layout.SnapshotsDir(), 0o700); err != nil {
		return store.Snapshot{}, err
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return store.Snapshot{}, fmt.Errorf("snapshot dir: %w", err)
	}
	keep := false
	defer func() {
		if !keep {
			_ = os.RemoveAll(tmp)
		}
	}()

	started := time.Now()
	progress.stage("pause")
	if err := sn.Pause(ctx, spec); err != nil {
		return store.Snapshot{}, fmt.Errorf("snapshot vm %q: pause: %w", v.Name, err)
	}
	// Whatever happens next, the VM runs on (a crash in between:
	// reconcile resumes VMs paused without the user's flag).
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := sn.Resume(rctx, spec); err != nil {
			s.d.Log.ErrorContext(ctx, "resume after snapshot failed", "vm", v.Name, "err", err)
			return
		}
		// The clock step need not hold up the snapshot (or a fork's children).
		go s.syncClock(context.WithoutCancel(ctx), v)
	}()
	progress.stage("save_state")
	meta, err := sn.Snapshot(ctx, spec, tmp)
	if err != nil {
		return store.Snapshot{}, fmt.Errorf("snapshot vm %q: %w", v.Name, err)
	}
	if s.d.AfterStep != nil {
		s.d.AfterStep("snapshot:state")
	}
	progress.stage("capture_disks")
	// Still paused: the disks are as of the saved state. The VMM flushed
	// them when the migration completed.
	if _, err := disk.Clone(ctx, s.rootPath(v), filepath.Join(tmp, snapRootFile)); err != nil {
		return store.Snapshot{}, fmt.Errorf("snapshot vm %q: root disk: %w", v.Name, err)
	}
	if _, err := disk.Clone(ctx, s.workPath(v), filepath.Join(tmp, snapWorkFile)); err != nil {
		return store.Snapshot{}, fmt.Errorf("snapshot vm %q: work disk: %w", v.Name, err)
	}
	if err := s.capSnapshot(ctx, v, tmp); err != nil {
		return store.Snapshot{}, fmt.Errorf("snapshot vm %q: %w", v.Name, err)
	}
	metaJSON, err := json.Marshal(meta)
	if err != nil {
		return store.Snapshot{}, err
	}
	row := store.Snapshot{
		ID: id, Name: snapName, SourceVM: v.Name, SourceVMID: v.ID, Image: v.Image, Kernel: v.Kernel,
		VCPU: v.VCPU, MemoryMiB: v.MemoryMiB, DiskBytes: v.DiskBytes, WorkDiskBytes: v.WorkDiskBytes,
		RootFormat: formatOr(v.RootFormat), WorkFormat: formatOr(st.WorkFormat), Meta: string(metaJSON),
		WarmFor: warmFor, Auto: auto,
		// A restored VM's disks may be overlays on its origin's files, and
		// so are the copies of them made here.
		Parent: st.OriginSnapshot,
	}
	row.SizeBytes = dirAllocated(tmp)
	if b, err := json.MarshalIndent(row, "", "  "); err == nil {
		_ = os.WriteFile(filepath.Join(tmp, snapMetaFile), b, 0o600)
	}
	if err := syncDir(tmp); err != nil {
		return store.Snapshot{}, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return store.Snapshot{}, fmt.Errorf("snapshot: %w", err)
	}
	keep = true
	_ = syncDir(s.d.Layout.SnapshotsDir())
	if s.d.AfterStep != nil {
		s.d.AfterStep("snapshot:dir")
	}
	if err := s.d.Store.CreateSnapshot(ctx, &row); err != nil {
		_ = os.RemoveAll(final)
		return store.Snapshot{}, err
	}
	s.d.Log.InfoContext(ctx, "snapshot taken", "vm", v.Name, "snapshot", snapName, "ram", meta.RAM,
		"bytes", row.SizeBytes, "ms", time.Since(started).Milliseconds())
	return row, nil
}

func formatOr(f string) string {
	if f == "" {
		return "raw"
	}
	return f
}

// dirAllocated is the space the files in dir take on disk.
func dirAllocated(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n += disk.Allocated(p)
		}
		return nil
	})
	return n
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// SnapshotView renders a snapshot for the CLI.
func (s *Service) SnapshotView(ctx context.Context, sn store.Snapshot) api.Snapshot {
	var meta vmm.SnapshotMeta
	_ = json.Unmarshal([]byte(sn.Meta), &meta)
	users, _ := s.d.Store.VMsFrom(ctx, sn.ID)
	if users == nil {
		users = []string{}
	}
	return api.Snapshot{
		ID: sn.ID, Name: sn.Name, SourceVM: sn.SourceVM, Image: sn.Image, Kernel: sn.Kernel, VCPU: sn.VCPU,
		MemoryMiB: sn.MemoryMiB, VMM: meta.VMM, VMMVersion: meta.VMMVersion, CPU: meta.CPU, RAM: meta.RAM,
		SizeBytes: sn.SizeBytes, WarmFor: sn.WarmFor, Auto: sn.Auto, UsedBy: users,
		Dir: s.d.Layout.Snapshot(sn.ID), CreatedAt: sn.CreatedAt,
	}
}

// ListSnapshots returns every snapshot.
func (s *Service) ListSnapshots(ctx context.Context) ([]store.Snapshot, error) {
	return s.d.Store.ListSnapshots(ctx)
}

// GetSnapshot returns one snapshot by name or id.
func (s *Service) GetSnapshot(ctx context.Context, name string) (store.Snapshot, error) {
	return s.d.Store.GetSnapshot(ctx, name)
}

// DeleteSnapshot removes a snapshot nothing depends on: VMs restored from
// it keep their disks layered on its files.
func (s *Service) DeleteSnapshot(ctx context.Context, name string) error {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	sn, err := s.d.Store.GetSnapshot(ctx, name)
	if err != nil {
		return err
	}
	vms, snaps, err := s.d.Store.SnapshotUsers(ctx, sn.ID)
	if err != nil {
		return err
	}
	switch {
	case len(vms) > 0:
		return fmt.Errorf("snapshot %q is used by vm %s (restored from it; delete them first): %w",
			sn.Name, strings.Join(vms, ", "), api.ErrBusy)
	case len(snaps) > 0:
		return fmt.Errorf("snapshot %q is used by snapshot %s (their disks read through its files; remove them first): %w",
			sn.Name, strings.Join(snaps, ", "), api.ErrBusy)
	}
	if err := s.removeSnapshot(ctx, sn); err != nil {
		return err
	}
	s.releaseAutoLocked(ctx, sn.Parent)
	return nil
}

// removeSnapshot deletes the row first: a crash in between leaves an
// unrecorded directory, which reconcile removes.
func (s *Service) removeSnapshot(ctx context.Context, sn store.Snapshot) error {
	if err := s.d.Store.DeleteSnapshot(ctx, sn.ID); err != nil {
		return err
	}
	if err := os.RemoveAll(s.d.Layout.Snapshot(sn.ID)); err != nil {
		return fmt.Errorf("snapshot %q: remove files: %w", sn.Name, err)
	}
	return nil
}

// releaseAutoSnapshot removes a fork's snapshot once no VM uses it.
func (s *Service) releaseAutoSnapshot(ctx context.Context, id string) {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	s.releaseAutoLocked(ctx, id)
}

// releaseAutoLocked removes auto snapshot id, and then its parent, while
// nothing uses them. The caller holds snapMu.
func (s *Service) releaseAutoLocked(ctx context.Context, id string) {
	for id != "" {
		sn, err := s.d.Store.GetSnapshot(ctx, id)
		if err != nil || !sn.Auto {
			return
		}
		if vms, snaps, err := s.d.Store.SnapshotUsers(ctx, id); err != nil || len(vms)+len(snaps) > 0 {
			return
		}
		if err := s.removeSnapshot(ctx, sn); err != nil {
			s.d.Log.WarnContext(ctx, "remove fork snapshot", "snapshot", sn.Name, "err", err)
			return
		}
		id = sn.Parent
	}
}

// reconcileSnapshots removes what an interrupted snapshot left: .tmp-
// directories and directories without a row.
func (s *Service) reconcileSnapshots(ctx context.Context) error {
	ents, err := os.ReadDir(s.d.Layout.SnapshotsDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	rows, err := s.d.Store.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, r := range rows {
		known[r.ID] = true
	}
	// A fork's snapshot whose VMs are all gone (a daemon killed between
	// the last delete and the release, or before the first child).
	for _, r := range rows {
		if r.Auto {
			s.releaseAutoSnapshot(ctx, r.ID)
		}
	}
	var errs []error
	for _, e := range ents {
		if known[e.Name()] {
			continue
		}
		p := filepath.Join(s.d.Layout.SnapshotsDir(), e.Name())
		s.d.Log.InfoContext(ctx, "removing unfinished snapshot", "dir", p)
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// resumeInterrupted continues an adopted VM left paused by a snapshot the
// previous daemon did not finish (the user's pause flag is not set).
func (s *Service) resumeInterrupted(ctx context.Context, v store.VM, spec vmm.Spec) {
	sn, ok := s.driverFor(v).(vmm.Snapshotter)
	if !ok || s.paused(ctx, v) {
		return
	}
	if p, err := sn.Paused(ctx, spec); err != nil || !p {
		return
	}
	if err := sn.Resume(ctx, spec); err != nil {
		s.d.Log.WarnContext(ctx, "resume vm paused by an interrupted snapshot", "vm", v.Name, "err", err)
		return
	}
	s.d.Log.InfoContext(ctx, "resumed vm paused by an interrupted snapshot", "vm", v.Name)
}

// restoreFrom is what the start pipeline needs to restore instead of boot.
type restoreFrom struct {
	snap store.Snapshot
	meta vmm.SnapshotMeta
}

// createFrom makes a VM from a snapshot: its disks layered on the
// snapshot's, its own identity, and the snapshot's memory and devices.
func (s *Service) createFrom(ctx context.Context, p api.CreateVMParams, sn store.Snapshot, progress Progress) (store.VM, error) {
	var meta vmm.SnapshotMeta
	if err := json.Unmarshal([]byte(sn.Meta), &meta); err != nil {
		return store.VM{}, fmt.Errorf("snapshot %q: corrupt metadata: %w", sn.Name, err)
	}
	// A restore runs under the VMM that made the snapshot, or not at all.
	drv, err := s.driverNamed(meta.VMM)
	if err != nil {
		return store.VM{}, fmt.Errorf("snapshot %q was made by %s, which this daemon does not run: %w", sn.Name, meta.VMM, vmm.ErrSnapshotMismatch)
	}
	if p.VMM != "" && p.VMM != drv.Name() {
		return store.VM{}, fmt.Errorf("snapshot %q was made by %s; a restore runs under the vmm that made it, not %s: %w", sn.Name, drv.Name(), p.VMM, api.ErrInvalid)
	}
	if _, err := snapshotter(drv); err != nil {
		return store.VM{}, err
	}
	switch {
	case p.NoStart:
		return store.VM{}, fmt.Errorf("--from restores a running vm; --no-start does not apply: %w", api.ErrInvalid)
	case p.VCPU != 0 && p.VCPU != sn.VCPU, p.MemoryMiB != 0 && p.MemoryMiB != sn.MemoryMiB:
		return store.VM{}, fmt.Errorf("snapshot %q has %d vcpu and %d MiB; a restore cannot change them: %w", sn.Name, sn.VCPU, sn.MemoryMiB, api.ErrInvalid)
	case p.Image != "" && p.Image != sn.Image, p.Kernel != "" && p.Kernel != sn.Kernel:
		return store.VM{}, fmt.Errorf("snapshot %q is of image %q, kernel %q: %w", sn.Name, sn.Image, sn.Kernel, api.ErrInvalid)
	case p.Disk != "" || p.WorkDisk != "":
		return store.VM{}, fmt.Errorf("a restore keeps the snapshot's disk sizes (grow them after a stop): %w", api.ErrInvalid)
	}
	kern, err := s.pickKernel(ctx, sn.Kernel)
	if err != nil {
		return store.VM{}, err
	}
	if err := s.checkHost(ctx, drv, kern.Name, kern.Path); err != nil {
		return store.VM{}, err
	}
	dir := s.d.Layout.Snapshot(sn.ID)
	v := store.VM{
		Name: p.Name, Image: sn.Image, Kernel: sn.Kernel, VCPU: sn.VCPU, MemoryMiB: sn.MemoryMiB,
		DiskBytes: sn.DiskBytes, WorkDiskBytes: sn.WorkDiskBytes, VMM: drv.Name(),
	}
	// The row names its snapshot from the start, under snapMu: a snapshot
	// removal either sees this VM or has already removed the snapshot.
	s.snapMu.Lock()
	err = func() error {
		if _, err := s.d.Store.GetSnapshot(ctx, sn.ID); err != nil {
			return err
		}
		if err := s.insertVM(ctx, &v); err != nil {
			return err
		}
		if err := s.d.Store.SetOrigin(ctx, v.ID, sn.ID, disk.FormatRaw); err != nil {
			return s.undoRow(ctx, v.ID, err)
		}
		return nil
	}()
	s.snapMu.Unlock()
	if err != nil {
		return store.VM{}, fmt.Errorf("vm %q: %w", p.Name, err)
	}
	unlock := s.lock(v.ID)
	defer unlock()
	var workFormat string
	var caps []capability.Ref
	steps := []step{
		{name: "vm_dir", do: func(ctx context.Context) error {
			if err := os.MkdirAll(v.Dir, 0o700); err != nil {
				return err
			}
			// The restored guest runs what its capabilities started: the
			// new VM has them too (their hooks run at each start).
			var rerr error
			caps, rerr = s.capRestore(&p, dir)
			return rerr
		}, undo: func(ctx context.Context) error { return os.RemoveAll(v.Dir) }},
		{name: "identity", do: func(ctx context.Context) error { return s.makeIdentity(v) },
			undo: func(ctx context.Context) error { return s.d.KnownHosts.Remove(v.GuestIP, v.Name+".vm") }},
		// Both disks cost what changes: reflinks, else qcow2 overlays on the
		// snapshot's files (QEMU), else copies.
		{name: "root_disk", do: func(ctx context.Context) error {
			src := filepath.Join(dir, snapRootFile)
			m, format, err := disk.Layer(ctx, s.d.Runner, src, formatOr(sn.RootFormat), s.rootPath(v), s.overlays(v.VMM))
			if err != nil {
				return err
			}
			v.CloneMethod, v.RootFormat, v.RootBacking = string(m), format, ""
			if m == disk.MethodQcow2 {
				v.RootBacking = src
			}
			return nil
		}},
		{name: "work_disk", do: func(ctx context.Context) error {
			_, format, err := disk.Layer(ctx, s.d.Runner, filepath.Join(dir, snapWorkFile), formatOr(sn.WorkFormat), s.workPath(v), s.overlays(v.VMM))
			workFormat = format
			return err
		}},
		{name: "record", do: func(ctx context.Context) error {
			v.State = StateStopped
			if err := s.d.Store.UpdateVM(ctx, &v); err != nil {
				return err
			}
			if err := s.d.Store.SetOrigin(ctx, v.ID, sn.ID, formatOr(workFormat)); err != nil {
				return err
			}
			if err := s.recordCaps(ctx, v, caps, nil); err != nil {
				return err
			}
			return s.recordOptions(ctx, v, p)
		}},
	}
	if err := runSteps(ctx, s.d.Log, s.hookSteps(steps), progress.stage); err != nil {
		return store.VM{}, s.undoRow(ctx, v.ID, fmt.Errorf("create vm %q from %q: %w", p.Name, sn.Name, err))
	}
	timeout := DefaultBootTimeout
	if p.BootTimeout > 0 {
		timeout = time.Duration(p.BootTimeout) * time.Second
	}
	if err := s.startWith(ctx, &v, timeout, progress, &restoreFrom{snap: sn, meta: meta}); err != nil {
		// The start's undos stopped the VMM and released the TAP and rules;
		// a restore that failed leaves no VM behind (a boot would be
		// worth debugging in place, a restore is retried from the snapshot).
		err = fmt.Errorf("create vm %q from %q: %w", p.Name, sn.Name, err)
		if !rolledBack(err) {
			// Something of the start could not be undone (a VMM that would
			// not die): the row stays, in error, for reconcile and delete.
			return v, err
		}
		if kerr := s.d.KnownHosts.Remove(v.GuestIP, v.Name+".vm"); kerr != nil {
			err = errors.Join(err, kerr)
		}
		if derr := os.RemoveAll(v.Dir); derr != nil {
			err = errors.Join(err, derr)
		}
		return store.VM{}, s.undoRow(ctx, v.ID, err)
	}
	return v, nil
}

// reidentify makes a restored guest its own: address, MAC, hostname,
// machine-id, SSH host key, a reseeded RNG and the host's time.
func (s *Service) reidentify(ctx context.Context, v store.VM) error {
	key, err := os.ReadFile(s.hostKeyPath(v))
	if err != nil {
		return fmt.Errorf("read host key: %w", err)
	}
	pub, err := os.ReadFile(s.hostKeyPath(v) + ".pub")
	if err != nil {
		return fmt.Errorf("read host key: %w", err)
	}
	ip, err := netip.ParseAddr(v.GuestIP)
	if err != nil {
		return err
	}
	seed := make([]byte, 64)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	id := agent.Identity{
		Hostname: v.Name, MachineID: machineID(v.ID), Interface: "eth0", MAC: v.MAC,
		Address: netip.PrefixFrom(ip, s.d.Subnet.Bits()).String(), Gateway: s.d.Gateway.String(),
		HostKey: key, HostKeyPub: pub, Seed: seed,
	}
	t := s.target(v)
	t.Agent = func(ctx context.Context) (net.Conn, error) { return s.kickAgent(ctx, v) }
	for {
		c, err := s.d.Guest.Agent(ctx, t)
		if err == nil {
			id.Time = time.Now().UTC()
			return c.Reidentify(ctx, id)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest agent of the restored vm: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Fork restores count new VMs from a running VM's state now: each its own
// identity, the parent running on untouched. The fork's snapshot is kept
// while a child uses it (snapshot list shows it as auto).
func (s *Service) Fork(ctx context.Context, p api.ForkParams, progress Progress) ([]store.VM, error) {
	if p.Count < 1 || p.Count > MaxForks {
		return nil, fmt.Errorf("fork count %d: must be 1-%d: %w", p.Count, MaxForks, api.ErrInvalid)
	}
	prefix := p.NamePrefix
	if prefix == "" {
		// Room for "-fork-NN" within a VM name's 32 characters.
		base := p.Name
		if len(base) > 24 {
			base = strings.TrimRight(base[:24], "-")
		}
		prefix = base + "-fork"
	}
	names, err := s.forkNames(ctx, prefix, p.Count)
	if err != nil {
		return nil, err
	}
	v, spec, unlock, err := s.runningLocked(ctx, p.Name)
	if err != nil {
		return nil, err
	}
	id := newID()
	snapName := "fork-" + id[:8]
	sn, err := s.takeSnapshot(ctx, v, spec, snapName, "", true, progress)
	unlock()
	if err != nil {
		return nil, err
	}
	var out []store.VM
	var errs []error
	for i, n := range names {
		progress.stage(fmt.Sprintf("child %d/%d", i+1, len(names)))
		c, err := s.Create(ctx, api.CreateVMParams{Name: n, From: sn.ID}, nil)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		s.releaseAutoSnapshot(context.WithoutCancel(ctx), sn.ID)
	}
	return out, errors.Join(errs...)
}

// forkNames picks count free names <prefix>-<n>.
func (s *Service) forkNames(ctx context.Context, prefix string, count int) ([]string, error) {
	var out []string
	for n := 1; len(out) < count && n < 1000; n++ {
		name := fmt.Sprintf("%s-%d", prefix, n)
		if err := ValidName(name); err != nil {
			return nil, fmt.Errorf("--name-prefix: %w", err)
		}
		if _, err := s.d.Store.GetVM(ctx, name); errors.Is(err, api.ErrNotFound) {
			out = append(out, name)
		}
	}
	if len(out) < count {
		return nil, fmt.Errorf("no free names %s-<n>: %w", prefix, api.ErrExists)
	}
	return out, nil
}

// WarmName is the name of an image's warm template.
func WarmName(image string) string { return image + "-warm" }

// Warm boots a VM of image once, snapshots it when it is ready and deletes
// it: the snapshot is the image's warm template, which `vm run` (Warm in
// CreateVMParams) restores instead of booting. A previous template of the
// image is replaced once the new one exists, unless VMs still use it.
func (s *Service) Warm(ctx context.Context, image string, progress Progress) (store.Snapshot, error) {
	if _, err := snapshotter(s.d.Driver); err != nil {
		return store.Snapshot{}, err
	}
	img, err := s.d.Store.GetImage(ctx, image)
	if err != nil {
		return store.Snapshot{}, fmt.Errorf("image %q: %w", image, err)
	}
	old, oldErr := s.d.Store.WarmSnapshot(ctx, img.Name)
	tmpName := "warm-" + newID()[:8]
	v, err := s.Create(ctx, api.CreateVMParams{Name: tmpName, Image: img.Name}, progress)
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		defer cancel()
		if derr := s.Delete(dctx, tmpName, true); derr != nil && !errors.Is(derr, api.ErrNotFound) {
			s.d.Log.WarnContext(ctx, "remove warm-up vm", "vm", tmpName, "err", derr)
		}
	}()
	if err != nil {
		return store.Snapshot{}, fmt.Errorf("warm image %q: %w", image, err)
	}
	name := WarmName(img.Name)
	for i := 0; i < 8; i++ {
		if _, err := s.d.Store.GetSnapshot(ctx, name); errors.Is(err, api.ErrNotFound) {
			break
		}
		name = WarmName(img.Name) + "-" + newID()[:4]
	}
	v, spec, unlock, err := s.runningLocked(ctx, v.ID)
	if err != nil {
		return store.Snapshot{}, err
	}
	// The template is restored into VMs that hold none of this one's work:
	// let the guest settle its boot, then freeze it.
	sn, err := s.takeSnapshot(ctx, v, spec, name, img.Name, false, progress)
	unlock()
	if err != nil {
		return store.Snapshot{}, fmt.Errorf("warm image %q: %w", image, err)
	}
	if oldErr == nil {
		if err := s.DeleteSnapshot(ctx, old.ID); err != nil {
			s.d.Log.WarnContext(ctx, "previous warm template kept", "snapshot", old.Name, "err", err)
		}
	}
	return sn, nil
}

// warmFor returns the image's warm template when p, to run under drv, can
// be served by it: nothing asked that a restore cannot give.
func (s *Service) warmFor(ctx context.Context, p api.CreateVMParams, drv vmm.Driver) (store.Snapshot, bool) {
	if !p.Warm || p.From != "" || p.NoStart || p.Disk != "" || p.WorkDisk != "" {
		return store.Snapshot{}, false
	}
	if _, ok := drv.(vmm.Snapshotter); !ok {
		return store.Snapshot{}, false
	}
	image := p.Image
	if image == "" {
		image = DefaultImage
	}
	sn, err := s.d.Store.WarmSnapshot(ctx, image)
	if err != nil {
		return store.Snapshot{}, false
	}
	// A template of an image since rebuilt (or removed) is not the image.
	if img, err := s.d.Store.GetImage(ctx, image); err != nil || img.CreatedAt.After(sn.CreatedAt) {
		return store.Snapshot{}, false
	}
	if (p.VCPU != 0 && p.VCPU != sn.VCPU) || (p.MemoryMiB != 0 && p.MemoryMiB != sn.MemoryMiB) ||
		(p.Kernel != "" && p.Kernel != sn.Kernel) {
		return store.Snapshot{}, false
	}
	if _, err := os.Stat(filepath.Join(s.d.Layout.Snapshot(sn.ID), snapRootFile)); err != nil {
		return store.Snapshot{}, false
	}
	// A template another VMM made is not this VM's to restore.
	var meta vmm.SnapshotMeta
	if err := json.Unmarshal([]byte(sn.Meta), &meta); err != nil || meta.VMM != drv.Name() {
		return store.Snapshot{}, false
	}
	return sn, true
}

// overlays reports whether the disks of a VM under the VMM named vmmName
// may be qcow2 overlays (the VMM reads them).
func (s *Service) overlays(vmmName string) bool {
	return s.d.DiskClone != DiskCloneCopy && vmmName == overlayDriver
}

// removeMem deletes the guest RAM file a VMM left in the VM dir.
func (s *Service) removeMem(v store.VM) {
	_ = os.Remove(filepath.Join(v.Dir, paths.VMMemFile))
}

// workFormat is the recorded format of the VM's work disk (qcow2 for VMs
// restored from a snapshot onto an overlay; raw otherwise).
func (s *Service) workFormat(v store.VM) (string, error) {
	st, err := s.d.Store.SnapshotState(context.Background(), v.ID)
	if err != nil {
		// Never guess: a qcow2 file opened as raw is harmless, the
		// other way round would let the guest name a backing file.
		return "", fmt.Errorf("work disk format: %w", err)
	}
	return formatOr(st.WorkFormat), nil
}

// agentKick is what a restored guest's agent gets first: enough bytes to end
// the session it was in when the snapshot was taken (a yamux header of the
// wrong version), and a line a handshake skips as junk.
const agentKick = "\nBANGER-AGENT-KICK\n"

// maxKickReply bounds what is read while waiting for the agent's wake line.
const maxKickReply = 64 << 10

// kickAgent dials a restored VM's agent channel for its first handshake.
// The guest's agent resumes inside the session it had with the snapshot's
// daemon: a HELLO sent now would be read as that session's frames, and
// whatever arrives while the agent reopens its port is discarded. So the
// kick ends that session first, and the conn is handed to the handshake once
// the agent announces its new serve loop (agent.WakeLine), or after a short
// wait when it was already waiting for a host (then it never writes one and
// the kick is skipped as junk).
func (s *Service) kickAgent(ctx context.Context, v store.VM) (net.Conn, error) {
	conn, err := s.driverFor(v).DialAgent(ctx, v.Dir)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write([]byte(agentKick)); err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(kickWait))
	wake := []byte(strings.TrimSpace(agent.WakeLine))
	var seen []byte
	buf := make([]byte, 4096)
	for len(seen) < maxKickReply {
		n, err := conn.Read(buf)
		seen = append(seen, buf[:n]...)
		if bytes.Contains(seen, wake) || err != nil {
			break
		}
	}
	_ = conn.SetReadDeadline(time.Time{})
	return conn, nil
}

// kickWait bounds the wait for the wake line.
const kickWait = time.Second
