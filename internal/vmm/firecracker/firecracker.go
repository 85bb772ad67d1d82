// Package firecracker drives the Firecracker VMM through its HTTP API on a
// unix socket: the process is launched bare, then configured (machine,
// boot source, drives, NIC, vsock) and started with InstanceStart.
//
// Guest requirements differ from QEMU's: Firecracker boots an uncompressed
// ELF vmlinux (not a bzImage) and on x86_64 describes its virtio-mmio
// devices on the kernel command line (virtio_mmio.device=; Firecracker's
// kernel policy lists CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), which Debian's
// cloud kernel does not build in. The virtio_blk/virtio_net/vsock drivers
// must be built in or be among the modules banger's initramfs loads. No
// disk is marked as the root device: banger's initramfs finds its disks by
// label and content. What the host and a kernel need is checked before a
// VM exists (host.go, vmm.HostChecker).
//
// Pause, snapshot and restore (vmm.Snapshotter) are in snapshot.go.
//
// This driver is contract-tested against Firecracker's published Swagger
// spec (testdata/) but has not booted a guest under a real Firecracker.
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
	"golang.org/x/sys/unix"
)

// DefaultBinary is the Firecracker binary looked up on PATH.
const DefaultBinary = "firecracker"

// Files the driver owns inside Spec.Dir. Firecracker has no pid file of its
// own; the driver writes one after launching it.
const (
	APISocket   = "fc.sock"
	VsockSocket = "fc-vsock.sock"
)

// Launch timeouts; the VMM itself is never bound to a context.
const (
	socketTimeout = 10 * time.Second
	pollInterval  = 20 * time.Millisecond
	consoleTail   = 2048
)

// Limits on a Spec, from the API spec (vcpu_count 1..32) and the kernel.
const (
	maxVCPU       = 32
	minMemoryMiB  = 32
	maxMemoryMiB  = 1 << 20
	maxDisks      = 16
	maxCmdline    = 2047
	maxSocketPath = vmm.MaxSocketPath
)

// DefaultVsockCID is the guest CID New sets: every VM gets a vsock device
// for the guest agent (banger-agent listens on vmm.AgentVsockPort).
const DefaultVsockCID = 3

// Driver is the Firecracker vmm.Driver.
type Driver struct {
	Runner system.Runner
	Log    *slog.Logger
	Binary string // default firecracker
	// VsockCID, when non-zero (>= 3), adds a vsock device whose host side is
	// <Dir>/fc-vsock.sock. Firecracker's vsock is backed by unix sockets, so
	// the CID is only seen by the guest and need not be unique on the host.
	VsockCID uint32

	// Jailer, when set, launches every VM through Firecracker's jailer
	// (root, via the privileged side): chroot, its own uid/gid, /dev/kvm and
	// /dev/net/tun inside the jail, Firecracker's default seccomp filters.
	// Unset, Firecracker runs directly as Spec.UID.
	Jailer Launcher

	// KVM says whether KVM can run guests on this host: Firecracker has no
	// other accelerator. cmd/bangerd passes the QEMU probe's answer (a
	// nested PVM host has a /dev/kvm ordinary guests fail on). nil: a
	// /dev/kvm that opens is taken as usable.
	KVM func(ctx context.Context) (usable bool, why string)
	// KernelConfig reads the build configuration of the kernel a store
	// row names (kernel.ReadConfig); an error means it is not known. nil:
	// kernels are checked for their format only.
	KernelConfig func(path string) (map[string]string, error)

	lookPath func(string) (string, error) // seam for tests; nil = system.LookPath
	// kvmDevice and tunDevice are what CheckHost opens (tests point them
	// elsewhere); "" = /dev/kvm, /dev/net/tun.
	kvmDevice, tunDevice string
	procs                vmm.Registry // pids started or found, with their identity

	consMu   sync.Mutex
	consoles map[string]bool // console logs being trimmed
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver using r to run Firecracker.
func New(r system.Runner, log *slog.Logger) *Driver {
	return &Driver{Runner: r, Log: log, Binary: DefaultBinary, VsockCID: DefaultVsockCID}
}

func (d *Driver) Name() string { return "firecracker" }

func (d *Driver) log() *slog.Logger {
	if d.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Log
}

// Available reports whether the Firecracker binary is on this host, for
// doctor-style checks; the error wraps vmm.ErrNoVMM.
func (d *Driver) Available() (string, error) { return d.binary() }

func (d *Driver) binary() (string, error) {
	name := d.Binary
	if name == "" {
		name = DefaultBinary
	}
	look := d.lookPath
	if look == nil {
		look = system.LookPath
	}
	p, err := look(name)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", vmm.ErrNoVMM, name, err)
	}
	return p, nil
}

type files struct{ sock, vsock, pid, console string }

func vmFiles(dir string) files {
	return files{
		sock:    filepath.Join(dir, APISocket),
		vsock:   filepath.Join(dir, VsockSocket),
		pid:     filepath.Join(dir, paths.VMPIDFile),
		console: filepath.Join(dir, paths.VMConsoleLog),
	}
}

// Start launches Firecracker for s, configures it over the API and starts the
// guest. Any failure after the launch kills the process.
func (d *Driver) Start(ctx context.Context, s vmm.Spec) (int, error) {
	if err := d.validate(s); err != nil {
		return 0, err
	}
	if pid, ok := d.Find(s); ok {
		return 0, fmt.Errorf("vm %s: vmm already running (pid %d): %w", s.ID, pid, api.ErrBusy)
	}
	if err := vmm.CheckFiles(s); err != nil {
		return 0, err
	}
	if d.Jailer != nil {
		// The binaries are the privileged side's; the pid file is ours.
		if err := os.Remove(vmFiles(s.Dir).pid); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("vm %s: remove stale pid file: %w", s.ID, err)
		}
		return d.startJailed(ctx, s)
	}
	bin, err := d.binary()
	if err != nil {
		return 0, err
	}
	started := time.Now()
	pid, f, err := d.launch(ctx, bin, s)
	if err != nil {
		return 0, err
	}
	if err := d.bringUp(ctx, pid, f, d.config(s, f)); err != nil {
		return 0, d.abort(pid, f, s.ID, err)
	}
	d.watchConsole(f.console, pid)
	d.log().Info("firecracker started", "vm", s.ID, "pid", pid,
		"elapsed_ms", time.Since(started).Milliseconds())
	return pid, nil
}

// launch starts a bare Firecracker (not jailed) for s with its API socket
// in s.Dir; the caller configures it and kills it on failure.
func (d *Driver) launch(ctx context.Context, bin string, s vmm.Spec) (int, files, error) {
	f := vmFiles(s.Dir)
	if err := prepareFiles(f, s.UID, s.GID); err != nil {
		return 0, f, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	pid, err := d.Runner.Start(ctx, system.ProcSpec{
		Path:   bin,
		Args:   []string{"--api-sock", f.sock},
		Dir:    s.Dir,
		Stdout: f.console,
		UID:    s.UID,
		GID:    s.GID,
	})
	if err != nil {
		return 0, f, fmt.Errorf("vm %s: start firecracker: %w", s.ID, err)
	}
	d.procs.Remember(pid, isFirecrackerOf(f.sock))
	return pid, f, nil
}

// The console log a guest fills: at most ConsoleMaxBytes plus what
// ConsoleRateBytes lets through in one check (the latest half is kept).
const (
	ConsoleMaxBytes  = 4 << 20
	ConsoleRateBytes = 256 << 10 // per second
	consoleCheck     = time.Second
)

// watchConsole trims the console log of the Firecracker at pid until it
// exits; once per log file, also for a VM adopted after a daemon restart.
func (d *Driver) watchConsole(path string, pid int) {
	d.consMu.Lock()
	if d.consoles == nil {
		d.consoles = map[string]bool{}
	}
	if d.consoles[path] {
		d.consMu.Unlock()
		return
	}
	d.consoles[path] = true
	d.consMu.Unlock()
	go func() {
		vmm.WatchLog(path, ConsoleMaxBytes, ConsoleMaxBytes/2, consoleCheck, func() bool { return !vmm.ProcessAlive(pid) })
		d.consMu.Lock()
		delete(d.consoles, path)
		d.consMu.Unlock()
	}()
}

// AttachConsole starts trimming the console log of an adopted VM.
func (d *Driver) AttachConsole(s vmm.Spec) error {
	pid, ok := d.Find(s)
	if !ok {
		return fmt.Errorf("vm %s: no firecracker to attach the console of: %w", s.ID, api.ErrNotRunning)
	}
	f := vmFiles(s.Dir)
	if d.Jailer != nil {
		// A jailed VM's console sits next to its chroot.
		return nil
	}
	d.watchConsole(f.console, pid)
	return nil
}

// abort kills a half-configured VMM: it must not outlive the failed launch.
func (d *Driver) abort(pid int, f files, id string, err error) error {
	_ = d.procs.Signal(pid, unix.SIGKILL)
	_ = os.Remove(f.pid)
	return fmt.Errorf("vm %s: %w", id, err)
}

// bringUp writes the pid file, waits for the API and runs steps in order:
// f are the VMM's files as this process sees them (the steps carry the
// paths as Firecracker sees them, which differ when jailed).
func (d *Driver) bringUp(ctx context.Context, pid int, f files, steps []step) error {
	if err := writePIDFile(f.pid, pid); err != nil {
		return err
	}
	c := NewClient(f.sock)
	defer c.Close()
	if err := waitAPI(ctx, c, pid, f); err != nil {
		return err
	}
	for _, step := range steps {
		if !vmm.ProcessAlive(pid) {
			return died(f)
		}
		if err := step(ctx, c); err != nil {
			// Firecracker answers a failed snapshot load and then exits:
			// keep its answer, and the console when there is no answer.
			if errors.Is(err, ErrAPI) || vmm.ProcessAlive(pid) {
				return err
			}
			return fmt.Errorf("%w (%v)", err, died(f))
		}
	}
	return nil
}

type step func(context.Context, *Client) error

// config is the ordered list of API calls that configures and boots s.
func (d *Driver) config(s vmm.Spec, f files) []step {
	steps := []step{
		func(ctx context.Context, c *Client) error {
			return c.PutMachineConfig(ctx, MachineConfiguration{VCPUCount: s.VCPU, MemSizeMiB: s.MemoryMiB})
		},
		// The guest writes the console and Firecracker appends it to its
		// stdout file: rate-limited here, trimmed by watchConsole.
		func(ctx context.Context, c *Client) error {
			return c.PutSerial(ctx, SerialDevice{RateLimiter: &TokenBucket{Size: ConsoleRateBytes, RefillTime: 1000}})
		},
		func(ctx context.Context, c *Client) error {
			return c.PutBootSource(ctx, BootSource{
				KernelImagePath: s.Kernel, InitrdPath: s.Initrd, BootArgs: bootArgs(s.Cmdline),
			})
		},
	}
	for i, dk := range s.Disks {
		drive := Drive{
			DriveID:    driveID(i),
			PathOnHost: dk.Path,
			IsReadOnly: dk.ReadOnly,
			// Honour the guest's flushes, like QEMU's cache=writeback.
			CacheType: CacheWriteback,
		}
		steps = append(steps, func(ctx context.Context, c *Client) error { return c.PutDrive(ctx, drive) })
	}
	if s.Tap != "" {
		mac, _ := net.ParseMAC(s.MAC) // validated
		nic := NetworkInterface{IfaceID: nicID, HostDevName: s.Tap, GuestMAC: mac.String()}
		steps = append(steps, func(ctx context.Context, c *Client) error { return c.PutNetworkInterface(ctx, nic) })
	}
	if d.VsockCID != 0 {
		v := Vsock{GuestCID: d.VsockCID, UDSPath: f.vsock}
		steps = append(steps, func(ctx context.Context, c *Client) error { return c.PutVsock(ctx, v) })
	}
	return append(steps, func(ctx context.Context, c *Client) error {
		return c.Action(ctx, ActionInstanceStart)
	})
}

// Device ids: disk i is drive "d<i>", the NIC is "n0".
const nicID = "n0"

func driveID(i int) string { return "d" + strconv.Itoa(i) }

// bootArgs appends what Firecracker guests need unless the caller set it:
// reboot=k makes a guest reboot end the VMM (there is no reset), panic=1
// turns a panic into that reboot, pci=off skips probing a bus that is not
// there.
func bootArgs(base string) string {
	c := strings.TrimSpace(base)
	for _, kv := range []string{"reboot=k", "panic=1", "pci=off"} {
		key := kv[:strings.IndexByte(kv, '=')+1]
		if !hasParam(c, key) {
			c = strings.TrimSpace(c + " " + kv)
		}
	}
	return c
}

func hasParam(cmdline, key string) bool {
	for _, f := range strings.Fields(cmdline) {
		if strings.HasPrefix(f, key) {
			return true
		}
	}
	return false
}

// waitAPI polls GET / until the API answers.
func waitAPI(ctx context.Context, c *Client, pid int, f files) error {
	ctx, cancel := context.WithTimeout(ctx, socketTimeout)
	defer cancel()
	var lastErr error
	for {
		if !vmm.ProcessAlive(pid) {
			return died(f)
		}
		_, lastErr = os.Stat(f.sock)
		if lastErr == nil {
			if _, lastErr = c.InstanceInfo(ctx); lastErr == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if !vmm.ProcessAlive(pid) {
				return died(f)
			}
			return fmt.Errorf("firecracker api not ready: %w (last: %v)", ctx.Err(), lastErr)
		case <-time.After(pollInterval):
		}
	}
}

func died(f files) error {
	t := vmm.TailFile(f.console, consoleTail)
	if t == "" {
		t = "(empty)"
	}
	return fmt.Errorf("firecracker exited during start; console: %s", t)
}

// prepareFiles clears what a previous run left (Firecracker refuses to bind
// an existing socket path) and creates an empty console log the VMM user may
// append to.
func prepareFiles(f files, uid, gid int) error {
	for _, p := range []string{f.sock, f.vsock, f.pid} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale %s: %w", p, err)
		}
	}
	fd, err := os.OpenFile(f.console, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	defer fd.Close()
	if uid != 0 && os.Geteuid() == 0 {
		if err := fd.Chown(uid, gid); err != nil {
			return fmt.Errorf("console log: %w", err)
		}
	}
	return nil
}

// writePIDFile writes pid atomically (temp file + rename), so Find never
// reads half a number.
func writePIDFile(path string, pid int) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".vmm.pid-*")
	if err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	_, werr := tmp.WriteString(strconv.Itoa(pid) + "\n")
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("pid file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("pid file: %w", err)
	}
	return nil
}

// Find rediscovers the Firecracker of s: the pid file first, then a /proc
// scan; the process must carry "--api-sock <Dir>/fc.sock" in its arguments.
func (d *Driver) Find(s vmm.Spec) (int, bool) {
	if checkPath("dir", s.Dir, true) != nil {
		return 0, false
	}
	f := vmFiles(s.Dir)
	match := isFirecrackerOf(f.sock)
	if d.Jailer != nil {
		match = isJailedFirecrackerOf(s.ID)
	}
	pid, ok := vmm.FindProcess(f.pid, match)
	if ok {
		d.procs.Remember(pid, match)
	}
	return pid, ok
}

// isFirecrackerOf recognises the Firecracker of one VM by its "--api-sock".
func isFirecrackerOf(sock string) func([]string) bool {
	return func(args []string) bool { return vmm.HasArgPair(args, "--api-sock", sock) }
}

// Shutdown sends SIGTERM: Firecracker exits at once; its block devices write
// straight to the backing files, so nothing is lost that the guest synced.
// Callers sync the guest first.
func (d *Driver) Shutdown(ctx context.Context, pid int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.procs.Signal(pid, unix.SIGTERM)
}

// Kill sends SIGKILL, only to a pid this driver started or found and only
// while it is still that Firecracker (see vmm.Registry).
func (d *Driver) Kill(pid int) error { return d.procs.Signal(pid, unix.SIGKILL) }

func (d *Driver) Alive(pid int) bool { return vmm.ProcessAlive(pid) }

func invalid(format string, a ...any) error { return vmm.Invalid("firecracker", format, a...) }

var limits = vmm.Limits{MaxVCPU: maxVCPU, MinMemoryMiB: minMemoryMiB, MaxMemoryMiB: maxMemoryMiB,
	MaxDisks: maxDisks, MaxCmdline: maxCmdline, Formats: []string{"raw"}} // firecracker takes raw images only

func (d *Driver) validate(s vmm.Spec) error {
	if err := vmm.Validate("firecracker", s, bootArgs(s.Cmdline), limits); err != nil {
		return err
	}
	f := vmFiles(s.Dir)
	if n := len(f.sock); n > maxSocketPath {
		return invalid("vm dir %q too long for a unix socket path (%d > %d)", s.Dir, n, maxSocketPath)
	}
	if n := len(f.vsock) + len("_4294967295"); d.VsockCID != 0 && n > maxSocketPath {
		return invalid("vm dir %q too long for the vsock socket paths", s.Dir)
	}
	if d.VsockCID != 0 && d.VsockCID < 3 {
		return invalid("vsock cid %d (want >= 3)", d.VsockCID)
	}
	return nil
}

func checkPath(what, p string, required bool) error {
	return vmm.CheckPath("firecracker", what, p, required)
}
