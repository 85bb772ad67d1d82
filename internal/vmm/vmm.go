// Package vmm defines the interface banger uses to drive a virtual machine
// monitor process (QEMU, Firecracker). A driver only launches, finds and
// stops processes; everything around them (disks, network, readiness of the
// guest) belongs to the callers.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/banger-dev/banger/internal/api"
)

// ErrNoVMM is returned when the VMM binary cannot be found on the host; it
// is an api.ErrNotFound ("vmm binary not found").
var ErrNoVMM = fmt.Errorf("vmm binary %w", api.ErrNotFound)

// Disk is one block device handed to the guest, in order (the first one is
// /dev/vda).
type Disk struct {
	Path     string
	ReadOnly bool
	Format   string // "raw" (default) or "qcow2"
}

// Spec describes one VM boot.
type Spec struct {
	// ID is the VM id; it appears in the process arguments so the process
	// can be recognised later.
	ID string
	// Dir is the VM directory: the driver keeps its API socket
	// (paths.VMAPISocket), pid file (paths.VMPIDFile), console log
	// (paths.VMConsoleLog, capped; QEMU serves the serial on
	// paths.VMConsoleSock and the driver copies it) and the VMM's own output
	// (paths.VMMLog) there.
	Dir       string
	VCPU      int
	MemoryMiB int
	Kernel    string
	Initrd    string
	// Cmdline is the kernel command line without accelerator-specific bits;
	// the driver appends what it needs.
	Cmdline string
	Disks   []Disk
	// Tap and MAC describe the optional NIC; both or neither.
	Tap string
	MAC string
	// TapFile, when set, is an open queue of Tap (privileged.OpenTap): the
	// VMM inherits it instead of opening /dev/net/tun, which it may not.
	// The caller keeps ownership and closes it after Start.
	TapFile *os.File
	// UID and GID run the VMM as this user (0 = unchanged).
	UID int
	GID int
}

// Driver launches and controls VMM processes.
type Driver interface {
	// Name is the short driver name ("qemu", "firecracker").
	Name() string
	// Start launches the VMM detached from ctx (ctx bounds only the launch)
	// and returns once it is up. If the process dies at once, the error
	// carries the tail of the console log.
	Start(ctx context.Context, s Spec) (pid int, err error)
	// Find rediscovers a live VMM for s: the pid from the pid file, confirmed
	// by the process's command line referencing s.Dir (pids get reused).
	Find(s Spec) (pid int, ok bool)
	// Shutdown asks the VMM to exit (no SIGKILL) and does not wait long.
	Shutdown(ctx context.Context, pid int) error
	// Kill sends SIGKILL without waiting; a missing process is success.
	Kill(pid int) error
	// Alive reports whether pid is a live (not zombie) process.
	Alive(pid int) bool
	// DialAgent connects to the guest agent's channel of the VM in dir
	// (QEMU: the virtio-serial port's socket; Firecracker: its hybrid
	// vsock). The stream is the agent's; the handshake is the caller's.
	DialAgent(ctx context.Context, dir string) (net.Conn, error)
}

// Guest agent channel: the virtio-serial port's name in the guest and the
// vsock port the agent listens on.
const (
	AgentSerialName = "banger.agent"
	AgentVsockPort  = 1024
)

// Snapshots. A driver that can pause a VM and save and restore it
// implements Snapshotter; the VM service checks for it with a type
// assertion and refuses the operation otherwise.
type Snapshotter interface {
	// Pause stops the vCPUs of the running VMM of s; memory and devices
	// stay. Resume continues it. Both are idempotent.
	Pause(ctx context.Context, s Spec) error
	Resume(ctx context.Context, s Spec) error
	// Paused reports whether the VMM of s is paused.
	Paused(ctx context.Context, s Spec) (bool, error)
	// Snapshot saves the device state and memory of the VMM of s, which the
	// caller has paused, into dir (existing, empty, the driver's to fill)
	// and leaves it paused: the caller captures the disks, then resumes.
	// Disks are not the driver's business.
	Snapshot(ctx context.Context, s Spec, dir string) (SnapshotMeta, error)
	// Restore launches a VMM for s (a fresh VM dir, its own disks, TAP
	// and MAC; the same VCPU, MemoryMiB and device list as the snapshot)
	// from the snapshot in dir and returns once the guest runs. It refuses,
	// before launching anything, a snapshot made by another VMM, VMM
	// version or CPU model, or with missing files. On error nothing of the
	// new VMM is left running.
	Restore(ctx context.Context, s Spec, dir string, meta SnapshotMeta) (pid int, err error)
}

// SnapshotMeta describes what a driver saved; it is stored with the
// snapshot and handed back to Restore.
type SnapshotMeta struct {
	VMM        string `json:"vmm"`         // driver name
	VMMVersion string `json:"vmm_version"` // e.g. "7.2.19"
	CPU        string `json:"cpu"`         // accelerator and CPU model, e.g. "tcg/max"
	VCPU       int    `json:"vcpu"`
	MemoryMiB  int    `json:"memory_mib"`
	// RAM says where guest memory is: "file" (a memory file in dir that
	// restores map privately, copy-on-write) or "stream" (inside the
	// device-state file).
	RAM string `json:"ram"`
	// Files are the names (in dir) the snapshot consists of.
	Files []string `json:"files"`
}

// Snapshot RAM kinds.
const (
	SnapshotRAMFile   = "file"
	SnapshotRAMStream = "stream"
)

// ErrSnapshotMismatch is a snapshot that this VMM cannot restore (another
// VMM, version or CPU model).
var ErrSnapshotMismatch = errors.New("snapshot does not match this vmm")
