// Package vmm defines the interface banger uses to drive a virtual machine
// monitor process (QEMU, Firecracker). A driver only launches, finds and
// stops processes; everything around them (disks, network, readiness of the
// guest) belongs to the callers.
package vmm

import (
	"context"
	"errors"
	"net"
	"os"
)

// ErrNoVMM is returned when the VMM binary cannot be found on the host.
var ErrNoVMM = errors.New("vmm binary not found")

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
