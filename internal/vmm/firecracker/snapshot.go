package firecracker

// Snapshots (vmm.Snapshotter), contract-tested against the v1.16.1 spec and
// Firecracker's docs/snapshotting/snapshot-support.md:
//
//   - Pause/Resume are PATCH /vm {"state": "Paused"|"Resumed"}; repeating
//     either is a no-op for Firecracker. Paused reads GET / (InstanceInfo.state;
//     the spec has no GET /vm).
//   - Snapshot is PUT /snapshot/create, a Full snapshot of the paused VM into
//     <dir>/vmstate and <dir>/mem (SnapshotStateFile, SnapshotMemFile).
//     "Create" resets the guest's live vsock connections
//     (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET): an agent stream is redialled.
//   - Restore launches Firecracker as Start does but sends no boot
//     configuration: PUT /snapshot/load must be the first configuration
//     request ("Only accepted on a fresh Firecracker process"), so not even
//     PUT /serial (the restored console is trimmed but not rate-limited).
//     The memory file is the File backend, which Firecracker maps MAP_PRIVATE
//     ("Firecracker creates a MAP_PRIVATE mapping of the memory file ... Any
//     subsequent memory writes go to a copy-on-write anonymous memory
//     mapping"): the file is only read, must not change while a VM restored
//     from it lives, and serves any number of restores.
//
// What a restored VM keeps from the snapshot. Firecracker reopens every
// device where the snapshot says ("These host-resources need to be accessible
// at the same relative paths to the new Firecracker process as they were to
// the original one"), with two overrides in SnapshotLoadParams:
// network_overrides (the NIC's TAP) and vsock_override (its unix socket).
// There is no drive override, so the load opens the snapshotted VM's own disk
// files, which must still exist at their paths; the VM is loaded paused
// (resume_vm false), and before anything runs each drive is pointed at the
// new VM's disk with PATCH /drives/{id} (allowed once the snapshot is loaded:
// Firecracker's runtime API handles it, paused or not; the drive keeps its
// snapshotted read-only flag). The guest MAC is device state: Firecracker
// cannot change it, so the guest keeps the snapshot's MAC whatever Spec.MAC
// says (logged when they differ); the guest's addresses are the snapshot's
// too. Callers reconfigure the guest network after a restore.
//
// Jailed VMs: refused with errors.ErrUnsupported. The driver does not know a
// running jail's directory (as for DialAgent), and a jailed restore needs the
// state and memory files linked into a fresh chroot, which JailLayout and
// the privileged side's checks do not offer yet. Inside a jail the device
// paths are the same for every VM (/disk<i>.img, /run/fc-vsock.sock), so a
// jailed restore would need no drive PATCH at all.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/vmm"
	"golang.org/x/sys/unix"
)

// Files of a Firecracker snapshot, in the snapshot directory.
const (
	SnapshotStateFile = "vmstate" // device and vCPU state
	SnapshotMemFile   = "mem"     // guest memory, mapped privately on restore
)

// SnapshotCPU is SnapshotMeta.CPU: KVM with the host's CPU model (the driver
// sets no CPU template). Firecracker itself refuses a snapshot from another
// CPU vendor; other CPU models are unsupported (docs/snapshotting/versioning.md).
const SnapshotCPU = "kvm/host"

// maxVersionLine bounds what is quoted of a version string.
const maxVersionLine = 128

var _ vmm.Snapshotter = (*Driver)(nil)

// client returns a client for the live Firecracker of s.
func (d *Driver) client(s vmm.Spec, op string) (*Client, error) {
	if d.Jailer != nil {
		return nil, fmt.Errorf("vm %s: firecracker %s of a jailed vm: %w", s.ID, op, errors.ErrUnsupported)
	}
	if _, ok := d.Find(s); !ok {
		return nil, fmt.Errorf("vm %s: %s: no firecracker running: %w", s.ID, op, api.ErrNotRunning)
	}
	return NewClient(vmFiles(s.Dir).sock), nil
}

// Pause stops the guest's vCPUs.
func (d *Driver) Pause(ctx context.Context, s vmm.Spec) error {
	return d.setState(ctx, s, "pause", VMPaused)
}

// Resume continues a paused guest.
func (d *Driver) Resume(ctx context.Context, s vmm.Spec) error {
	return d.setState(ctx, s, "resume", VMResumed)
}

func (d *Driver) setState(ctx context.Context, s vmm.Spec, op, state string) error {
	c, err := d.client(s, op)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.PatchVM(ctx, state); err != nil {
		return fmt.Errorf("vm %s: %s: %w", s.ID, op, err)
	}
	return nil
}

// Paused reports whether the guest's vCPUs are paused.
func (d *Driver) Paused(ctx context.Context, s vmm.Spec) (bool, error) {
	c, err := d.client(s, "state")
	if err != nil {
		return false, err
	}
	defer c.Close()
	info, err := c.InstanceInfo(ctx)
	if err != nil {
		return false, fmt.Errorf("vm %s: state: %w", s.ID, err)
	}
	switch info.State {
	case StatePaused:
		return true, nil
	case StateRunning, StateNotStarted:
		return false, nil
	}
	return false, fmt.Errorf("vm %s: unknown firecracker state %q", s.ID, info.State)
}

// Snapshot writes a full snapshot of the paused VM of s into dir. The two
// files are made here first (never replacing anything, owned by the VMM's
// user), so Firecracker only truncates and fills them.
func (d *Driver) Snapshot(ctx context.Context, s vmm.Spec, dir string) (vmm.SnapshotMeta, error) {
	if err := checkPath("snapshot dir", dir, true); err != nil {
		return vmm.SnapshotMeta{}, err
	}
	c, err := d.client(s, "snapshot")
	if err != nil {
		return vmm.SnapshotMeta{}, err
	}
	defer c.Close()
	fail := func(err error) (vmm.SnapshotMeta, error) {
		return vmm.SnapshotMeta{}, fmt.Errorf("vm %s: snapshot: %w", s.ID, err)
	}
	info, err := c.InstanceInfo(ctx)
	if err != nil {
		return fail(err)
	}
	if info.State != StatePaused {
		return fail(fmt.Errorf("vm is %q, pause it first: %w", info.State, api.ErrInvalid))
	}
	raw, err := c.Version(ctx)
	if err != nil {
		return fail(err)
	}
	version, err := parseVersion(raw)
	if err != nil {
		return fail(err)
	}
	cfg, err := c.VMConfig(ctx)
	if err != nil {
		return fail(err)
	}
	meta := vmm.SnapshotMeta{
		VMM: d.Name(), VMMVersion: version, CPU: SnapshotCPU, VCPU: s.VCPU, MemoryMiB: s.MemoryMiB,
		RAM: vmm.SnapshotRAMFile, Files: []string{SnapshotStateFile, SnapshotMemFile},
	}
	// What the VMM runs with, should the Spec be stale.
	if m := cfg.MachineConfig; m != nil && m.VCPUCount > 0 && m.MemSizeMiB > 0 {
		meta.VCPU, meta.MemoryMiB = m.VCPUCount, m.MemSizeMiB
	}
	if err := createSnapshotFiles(dir, meta.Files, s.UID, s.GID); err != nil {
		return fail(err)
	}
	err = c.CreateSnapshot(ctx, SnapshotCreateParams{
		SnapshotType: SnapshotFull,
		SnapshotPath: filepath.Join(dir, SnapshotStateFile),
		MemFilePath:  filepath.Join(dir, SnapshotMemFile),
	})
	if err != nil {
		for _, n := range meta.Files {
			_ = os.Remove(filepath.Join(dir, n))
		}
		return fail(err)
	}
	d.log().Info("firecracker snapshot written", "vm", s.ID, "dir", dir, "version", version)
	return meta, nil
}

// createSnapshotFiles makes each named file in dir, which must be a real
// directory; an existing file is api.ErrExists.
func createSnapshotFiles(dir string, names []string, uid, gid int) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("snapshot dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("snapshot dir %s is not a directory: %w", dir, api.ErrInvalid)
	}
	var made []string
	for _, n := range names {
		p := filepath.Join(dir, n)
		fd, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, 0o600)
		if err == nil && uid != 0 && os.Geteuid() == 0 {
			err = fd.Chown(uid, gid)
		}
		if fd != nil {
			err = errors.Join(err, fd.Close())
			made = append(made, p)
		}
		if err != nil {
			for _, m := range made {
				_ = os.Remove(m)
			}
			if errors.Is(err, os.ErrExist) {
				return fmt.Errorf("snapshot file %s: %w", p, api.ErrExists)
			}
			return fmt.Errorf("snapshot file: %w", err)
		}
	}
	return nil
}

// Restore launches Firecracker for s from the snapshot in dir: load (paused,
// TAP and vsock socket overridden), check the restored devices against s,
// point each drive at s's disk, resume. Everything that can be refused is
// refused before the launch; after it, any failure kills the process.
func (d *Driver) Restore(ctx context.Context, s vmm.Spec, dir string, meta vmm.SnapshotMeta) (int, error) {
	if d.Jailer != nil {
		return 0, fmt.Errorf("vm %s: firecracker restore of a jailed vm: %w", s.ID, errors.ErrUnsupported)
	}
	if err := d.validate(s); err != nil {
		return 0, err
	}
	if err := checkPath("snapshot dir", dir, true); err != nil {
		return 0, err
	}
	if pid, ok := d.Find(s); ok {
		return 0, fmt.Errorf("vm %s: vmm already running (pid %d): %w", s.ID, pid, api.ErrBusy)
	}
	if err := checkMeta(meta, s); err != nil {
		return 0, fmt.Errorf("vm %s: restore: %w", s.ID, err)
	}
	if err := checkSnapshotFiles(dir, meta); err != nil {
		return 0, fmt.Errorf("vm %s: restore: %w", s.ID, err)
	}
	for i, dk := range s.Disks {
		if _, err := os.Stat(dk.Path); err != nil {
			return 0, fmt.Errorf("vm %s: disk %d: %w: %w", s.ID, i, err, api.ErrNotFound)
		}
	}
	bin, err := d.binary()
	if err != nil {
		return 0, err
	}
	version, err := d.binaryVersion(ctx, bin)
	if err != nil {
		return 0, fmt.Errorf("vm %s: restore: %w", s.ID, err)
	}
	if version != meta.VMMVersion {
		return 0, fmt.Errorf("vm %s: restore: snapshot made by firecracker %s, this is %s: %w",
			s.ID, meta.VMMVersion, version, vmm.ErrSnapshotMismatch)
	}
	started := time.Now()
	pid, f, err := d.launch(ctx, bin, s)
	if err != nil {
		return 0, err
	}
	if err := d.bringUp(ctx, pid, f, d.restoreSteps(s, dir, f)); err != nil {
		return 0, d.abort(pid, f, s.ID, fmt.Errorf("restore: %w", err))
	}
	d.watchConsole(f.console, pid)
	d.log().Info("firecracker restored", "vm", s.ID, "pid", pid, "snapshot", dir,
		"elapsed_ms", time.Since(started).Milliseconds())
	return pid, nil
}

// restoreSteps are the API calls that bring s up from the snapshot in dir.
func (d *Driver) restoreSteps(s vmm.Spec, dir string, f files) []step {
	load := SnapshotLoadParams{
		SnapshotPath: filepath.Join(dir, SnapshotStateFile),
		MemBackend:   &MemoryBackend{BackendType: MemBackendFile, BackendPath: filepath.Join(dir, SnapshotMemFile)},
		ResumeVM:     false, // the drives are repointed first
	}
	if s.Tap != "" {
		load.NetworkOverrides = []NetworkOverride{{IfaceID: nicID, HostDevName: s.Tap}}
	}
	if d.VsockCID != 0 {
		load.VsockOverride = &VsockOverride{UDSPath: f.vsock}
	}
	steps := []step{
		func(ctx context.Context, c *Client) error {
			if err := c.LoadSnapshot(ctx, load); err != nil {
				return fmt.Errorf("%w (a load reopens the snapshotted vm's disks at their original paths)", err)
			}
			return nil
		},
		func(ctx context.Context, c *Client) error {
			cfg, err := c.VMConfig(ctx)
			if err != nil {
				return err
			}
			return d.checkDevices(s, cfg)
		},
	}
	for i, dk := range s.Disks {
		pd := PartialDrive{DriveID: driveID(i), PathOnHost: dk.Path}
		steps = append(steps, func(ctx context.Context, c *Client) error { return c.PatchDrive(ctx, pd) })
	}
	return append(steps, func(ctx context.Context, c *Client) error { return c.PatchVM(ctx, VMResumed) })
}

// checkDevices refuses a restored VM whose devices are not s's: a drive left
// out of s would keep writing the snapshotted VM's disk, a NIC without a TAP
// override would use the snapshotted VM's TAP.
func (d *Driver) checkDevices(s vmm.Spec, cfg FullVMConfig) error {
	var got, want []string
	for _, dr := range cfg.Drives {
		got = append(got, fmt.Sprintf("%s ro=%v", dr.DriveID, dr.IsReadOnly))
	}
	for i, dk := range s.Disks {
		want = append(want, fmt.Sprintf("%s ro=%v", driveID(i), dk.ReadOnly))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("snapshot drives [%s], spec drives [%s]: %w",
			strings.Join(got, ", "), strings.Join(want, ", "), vmm.ErrSnapshotMismatch)
	}
	var nics, wantNICs []string
	for _, n := range cfg.NetworkInterfaces {
		nics = append(nics, n.IfaceID)
	}
	if s.Tap != "" {
		wantNICs = []string{nicID}
	}
	if !slices.Equal(nics, wantNICs) {
		return fmt.Errorf("snapshot network interfaces %q, spec %q (tap %q): %w",
			nics, wantNICs, s.Tap, vmm.ErrSnapshotMismatch)
	}
	if (cfg.Vsock != nil) != (d.VsockCID != 0) {
		return fmt.Errorf("snapshot vsock %v, driver vsock cid %d: %w", cfg.Vsock != nil, d.VsockCID, vmm.ErrSnapshotMismatch)
	}
	if s.Tap != "" {
		guest, _ := net.ParseMAC(cfg.NetworkInterfaces[0].GuestMAC)
		spec, _ := net.ParseMAC(s.MAC)
		if guest.String() != spec.String() {
			d.log().Warn("restored guest keeps the snapshot's mac", "vm", s.ID,
				"guest_mac", guest.String(), "spec_mac", spec.String())
		}
	}
	return nil
}

// checkMeta refuses a snapshot this driver cannot restore for s.
func checkMeta(m vmm.SnapshotMeta, s vmm.Spec) error {
	mismatch := func(format string, a ...any) error {
		return fmt.Errorf(format+": %w", append(a, vmm.ErrSnapshotMismatch)...)
	}
	switch {
	case m.VMM != "firecracker":
		return mismatch("snapshot made by %q, not firecracker", m.VMM)
	case m.CPU != SnapshotCPU:
		return mismatch("snapshot cpu %q, this driver runs %q", m.CPU, SnapshotCPU)
	case m.RAM != vmm.SnapshotRAMFile:
		return mismatch("snapshot ram %q, firecracker keeps it in a file", m.RAM)
	case m.VCPU != s.VCPU:
		return mismatch("snapshot has %d vcpus, spec %d", m.VCPU, s.VCPU)
	case m.MemoryMiB != s.MemoryMiB:
		return mismatch("snapshot has %d MiB, spec %d", m.MemoryMiB, s.MemoryMiB)
	}
	for _, need := range []string{SnapshotStateFile, SnapshotMemFile} {
		if !slices.Contains(m.Files, need) {
			return mismatch("snapshot files %q lack %q", m.Files, need)
		}
	}
	return nil
}

// checkSnapshotFiles requires every file of the snapshot to be a regular
// file (not a symlink) in dir, and the memory file to hold all the memory.
func checkSnapshotFiles(dir string, m vmm.SnapshotMeta) error {
	for _, n := range m.Files {
		if n == "" || n == "." || n == ".." || strings.ContainsRune(n, '/') {
			return fmt.Errorf("snapshot file name %q: %w", n, api.ErrInvalid)
		}
		p := filepath.Join(dir, n)
		st, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("snapshot file %s: %w", p, api.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("snapshot file: %w", err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("snapshot file %s is not a regular file (%s): %w", p, st.Mode().Type(), api.ErrInvalid)
		}
		if n == SnapshotMemFile && st.Size() < int64(m.MemoryMiB)<<20 {
			return fmt.Errorf("memory file %s holds %d bytes, %d MiB need %d (corrupt snapshot): %w",
				p, st.Size(), m.MemoryMiB, int64(m.MemoryMiB)<<20, api.ErrInvalid)
		}
	}
	return nil
}

// binaryVersion asks bin for its version ("Firecracker v1.16.1" on the
// first line of --version) without starting a VMM.
func (d *Driver) binaryVersion(ctx context.Context, bin string) (string, error) {
	out, err := d.Runner.Run(ctx, bin, "--version")
	if err != nil {
		return "", fmt.Errorf("firecracker version: %w", err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	name, v, ok := strings.Cut(strings.TrimSpace(line), " ")
	if !ok || name != "Firecracker" {
		return "", fmt.Errorf("firecracker version: unexpected output %q", truncate(line, maxVersionLine))
	}
	return parseVersion(v)
}

// parseVersion normalises "v1.16.1" and "1.16.1" to "1.16.1".
func parseVersion(v string) (string, error) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	parts := strings.SplitN(v, ".", 3)
	if len(v) > maxVersionLine || len(parts) != 3 {
		return "", fmt.Errorf("firecracker version %q: want major.minor.patch", truncate(v, maxVersionLine))
	}
	for _, p := range parts[:2] {
		if _, err := strconv.ParseUint(p, 10, 32); err != nil {
			return "", fmt.Errorf("firecracker version %q: want major.minor.patch", v)
		}
	}
	return v, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
