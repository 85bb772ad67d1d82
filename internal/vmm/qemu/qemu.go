// Package qemu drives qemu-system-x86_64 with the microvm machine type, using
// KVM where it really works and TCG otherwise.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/logfile"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
	"golang.org/x/sys/unix"
)

// DefaultBinary is the QEMU binary looked up on PATH.
const DefaultBinary = "qemu-system-x86_64"

// Accel is the QEMU accelerator.
type Accel string

const (
	AccelKVM Accel = "kvm"
	AccelTCG Accel = "tcg"
)

// Timeouts of the launch; the VMM itself is never bound to a context.
const (
	startTimeout = 15 * time.Second
	pollInterval = 20 * time.Millisecond
	qmpTimeout   = 2 * time.Second
	consoleTail  = 2048
)

// Driver is the QEMU vmm.Driver.
type Driver struct {
	Runner system.Runner
	Log    *slog.Logger
	Binary string // default qemu-system-x86_64
	Accel  Accel  // chosen by ProbeAccel unless set
	TSCkHz int    // host TSC rate for tsc_early_khz under TCG; read from /proc/cpuinfo when 0

	mu          sync.Mutex
	accelReason string
	kvm         *kvmAnswer // ProbeKVM's cached answer
	version     string     // of the binary, for snapshots (snapshot.go)
	consMu      sync.Mutex
	consoles    map[string]*pump // console copies by socket path (console.go)
	procs       vmm.Registry     // pids started or found, with their identity
	// Seams for tests; nil means the real thing.
	lookPath   func(string) (string, error)
	cpuinfo    string
	kvmDevice  string
	probeLimit time.Duration
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver using r to run QEMU.
func New(r system.Runner, log *slog.Logger) *Driver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{Runner: r, Log: log, Binary: DefaultBinary}
}

func (d *Driver) Name() string { return "qemu" }

func (d *Driver) log() *slog.Logger {
	if d.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Log
}

// binary resolves the QEMU binary, mapping absence to vmm.ErrNoVMM.
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

// accel returns the accelerator and TSC rate for a launch, probing once.
func (d *Driver) accel(ctx context.Context) (Accel, int) {
	a, _ := d.ProbeAccel(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.TSCkHz == 0 {
		path := d.cpuinfo
		if path == "" {
			path = "/proc/cpuinfo"
		}
		if b, err := os.ReadFile(path); err == nil {
			d.TSCkHz, _ = parseCPUkHz(string(b))
		}
		if d.TSCkHz == 0 && a == AccelTCG {
			d.log().Warn("host cpu frequency unknown; booting without tsc_early_khz")
		}
	}
	return a, d.TSCkHz
}

// Start launches QEMU for s, detached, and returns once QMP reports the
// machine running.
func (d *Driver) Start(ctx context.Context, s vmm.Spec) (int, error) {
	bin, err := d.preflight(s)
	if err != nil {
		return 0, err
	}
	accel, tsc := d.accel(ctx)
	args, err := buildArgs(s, accel, tsc)
	if err != nil {
		return 0, err
	}
	f := vmFiles(s.Dir)
	d.detachConsole(f, 2*time.Second) // a previous run's copy, if it is still draining
	if err := prepareFiles(f); err != nil {
		return 0, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	started := time.Now()
	pid, err := d.Runner.Start(ctx, system.ProcSpec{
		Path:       bin,
		Args:       args,
		Dir:        s.Dir,
		Stdout:     f.vmmLog,
		UID:        s.UID,
		GID:        s.GID,
		ExtraFiles: extraFiles(s),
	})
	if err != nil {
		return 0, fmt.Errorf("vm %s: start qemu: %w", s.ID, err)
	}
	d.procs.Remember(pid, isQEMUOf(f.pid))
	if err := d.waitRunning(ctx, pid, f); err != nil {
		// A half-started VMM must not outlive the failed launch.
		_ = d.procs.Signal(pid, unix.SIGKILL)
		return 0, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	d.log().Info("qemu started", "vm", s.ID, "pid", pid, "accel", string(accel),
		"elapsed_ms", time.Since(started).Milliseconds())
	return pid, nil
}

// preflight checks s, finds the binary and refuses a second VMM for s or
// missing files, before anything is launched.
func (d *Driver) preflight(s vmm.Spec) (string, error) {
	if err := validate(s); err != nil {
		return "", err
	}
	bin, err := d.binary()
	if err != nil {
		return "", err
	}
	if pid, ok := d.Find(s); ok {
		return "", fmt.Errorf("vm %s: vmm already running (pid %d): %w", s.ID, pid, api.ErrBusy)
	}
	return bin, vmm.CheckFiles(s)
}

// prepareFiles clears what a previous run left and creates the empty logs
// of this boot. Both are written by the daemon's side (the console copy; the
// runner opens vmm.log before QEMU drops privileges), never by the VMM user.
func prepareFiles(f files) error {
	for _, p := range []string{f.qmp, f.pid, f.consoleSock} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale %s: %w", p, err)
		}
	}
	if err := logfile.Remove(f.console); err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	for _, p := range []string{f.console, f.vmmLog} {
		// O_NOFOLLOW: the VM dir may be writable by the VMM user, who must
		// not be able to point a log at another file.
		fd, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return fmt.Errorf("log: %w", err)
		}
		fd.Close()
	}
	return nil
}

func (d *Driver) waitRunning(ctx context.Context, pid int, f files) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var lastErr error
	resumed := false
	for {
		if !vmm.ProcessAlive(pid) {
			return d.died(f)
		}
		status, err := qmpStatus(ctx, f.qmp)
		switch {
		case err == nil && status == "running":
			// Normally after our "cont"; attach anyway if it runs already.
			return d.attachConsole(f)
		case err == nil && status == "prelaunch" && !resumed:
			// Started with -S: the console is attached before the guest runs.
			if err := d.resume(ctx, f); err != nil {
				return err
			}
			resumed = true
		case err == nil:
			lastErr = fmt.Errorf("qemu status %q", status)
			if status == "shutdown" || status == "internal-error" || status == "guest-panicked" {
				return fmt.Errorf("%w; console: %s", lastErr, consoleTailOrNone(f.console))
			}
		default:
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if !vmm.ProcessAlive(pid) {
				return d.died(f)
			}
			return fmt.Errorf("qemu not ready: %w (last: %v)", ctx.Err(), lastErr)
		case <-time.After(pollInterval):
		}
	}
}

func (d *Driver) died(f files) error {
	return fmt.Errorf("qemu exited during start: %s; console: %s", tailOrNone(f.vmmLog), consoleTailOrNone(f.console))
}

func tailOrNone(path string) string {
	if t := vmm.TailFile(path, consoleTail); t != "" {
		return t
	}
	return "(empty)"
}

// Find rediscovers the QEMU of s: the pid file first, then a /proc scan; the
// process must carry "-pidfile <Dir>/vmm.pid" in its arguments.
func (d *Driver) Find(s vmm.Spec) (int, bool) {
	if checkPath("dir", s.Dir, true) != nil {
		return 0, false
	}
	pidFile := vmFiles(s.Dir).pid
	pid, ok := vmm.FindProcess(pidFile, isQEMUOf(pidFile))
	if ok {
		d.procs.Remember(pid, isQEMUOf(pidFile))
	}
	return pid, ok
}

// isQEMUOf recognises the QEMU of one VM by its "-pidfile <Dir>/vmm.pid".
func isQEMUOf(pidFile string) func([]string) bool {
	return func(args []string) bool { return vmm.HasArgPair(args, "-pidfile", pidFile) }
}

// Shutdown sends SIGTERM: QEMU flushes its block devices and exits without
// waiting for the guest. Callers sync the guest first.
func (d *Driver) Shutdown(ctx context.Context, pid int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.procs.Signal(pid, unix.SIGTERM)
}

// Kill sends SIGKILL, only to a pid this driver started or found and only
// while it is still that QEMU (see vmm.Registry).
func (d *Driver) Kill(pid int) error { return d.procs.Signal(pid, unix.SIGKILL) }

func (d *Driver) Alive(pid int) bool { return vmm.ProcessAlive(pid) }

// firstLine returns the first non-empty line of s, for short reasons.
func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

// DialAgent connects to the VM's virtio-serial agent port. QEMU serves one
// client at a time: a second connection waits unanswered until the first
// closes, so the daemon keeps one per VM.
func (d *Driver) DialAgent(ctx context.Context, dir string) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, "unix", vmFiles(dir).agentSock)
}
