package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/vmm"
)

// Limits on what a Spec may ask for; beyond them QEMU or the guest kernel
// would fail with a less helpful message.
const (
	maxVCPU       = 64
	minMemoryMiB  = 32
	maxMemoryMiB  = 1 << 20
	maxDisks      = 16
	maxCmdline    = 2047 // x86 COMMAND_LINE_SIZE is 2048 including the NUL
	maxSocketPath = vmm.MaxSocketPath
)

// sandbox is QEMU's seccomp filter for every VMM (the guest is hostile).
const sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// tapFD is the fd the inherited TAP (Spec.TapFile) has in QEMU.
const tapFD = 3

// files are the per-VM paths the driver owns inside Spec.Dir.
type files struct{ qmp, pid, console, consoleSock, vmmLog, agentSock, mem string }

func vmFiles(dir string) files {
	return files{
		qmp:         filepath.Join(dir, paths.VMAPISocket),
		pid:         filepath.Join(dir, paths.VMPIDFile),
		console:     filepath.Join(dir, paths.VMConsoleLog),
		consoleSock: filepath.Join(dir, paths.VMConsoleSock),
		vmmLog:      filepath.Join(dir, paths.VMMLog),
		agentSock:   filepath.Join(dir, paths.VMAgentSock),
		mem:         filepath.Join(dir, paths.VMMemFile),
	}
}

func invalid(format string, a ...any) error { return vmm.Invalid("qemu", format, a...) }

var limits = vmm.Limits{MaxVCPU: maxVCPU, MinMemoryMiB: minMemoryMiB, MaxMemoryMiB: maxMemoryMiB,
	MaxDisks: maxDisks, MaxCmdline: maxCmdline, Formats: []string{"raw", "qcow2"}}

// validate rejects a Spec QEMU would misparse or that could smuggle options
// into a comma-separated option string.
func validate(s vmm.Spec) error {
	if err := vmm.Validate("qemu", s, s.Cmdline, limits); err != nil {
		return err
	}
	f := vmFiles(s.Dir)
	if n := max(len(f.qmp), len(f.consoleSock)); n > maxSocketPath {
		return invalid("vm dir %q too long for a unix socket path (%d > %d)", s.Dir, n, maxSocketPath)
	}
	return nil
}

func checkPath(what, p string, required bool) error { return vmm.CheckPath("qemu", what, p, required) }

// optEsc escapes a value inside a QEMU comma-separated option string: a
// literal comma is written twice.
func optEsc(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// cmdline returns the kernel command line with the accelerator's additions.
func cmdline(base string, accel Accel, tscKHz int) string {
	c := strings.TrimSpace(base)
	if accel == AccelTCG && tscKHz > 0 && !strings.Contains(c, "tsc_early_khz=") {
		// Under TCG the guest's PIT calibration can hang; hand it the host TSC rate.
		c = strings.TrimSpace(c + " tsc_early_khz=" + strconv.Itoa(tscKHz))
	}
	return c
}

// buildArgs is the QEMU command line for s (without the binary). It assumes
// validate(s) passed.
func buildArgs(s vmm.Spec, accel Accel, tscKHz int) ([]string, error) {
	return buildArgsMem(s, accel, tscKHz, memory{path: vmFiles(s.Dir).mem, share: true})
}

// memory is the guest RAM's backing file. A booted VM's RAM is its own
// file, mapped shared, so a snapshot needs only the device state in the
// migration stream plus a copy of the file; a VM restored from a snapshot's
// memory file maps it privately (copy-on-write, never written back).
type memory struct {
	path     string
	share    bool
	incoming bool // -incoming defer: the state comes from a migration
}

// cpuModel is the -cpu of each accelerator; a snapshot records it.
func cpuModel(accel Accel) string {
	if accel == AccelKVM {
		return "host"
	}
	return "max"
}

func buildArgsMem(s vmm.Spec, accel Accel, tscKHz int, mem memory) ([]string, error) {
	f := vmFiles(s.Dir)
	a := []string{"-name", "guest=banger-" + s.ID}
	switch accel {
	case AccelKVM:
		a = append(a, "-M", "microvm,memory-backend=mem", "-accel", "kvm", "-cpu", cpuModel(accel))
	case AccelTCG:
		a = append(a, "-M", "microvm,pit=on,pic=on,rtc=on,memory-backend=mem", "-accel", "tcg", "-cpu", cpuModel(accel))
	default:
		return nil, invalid("unknown accelerator %q", accel)
	}
	share := "off"
	if mem.share {
		share = "on"
	}
	a = append(a,
		"-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=%s", s.MemoryMiB, optEsc(mem.path), share),
		"-m", strconv.Itoa(s.MemoryMiB),
		"-smp", strconv.Itoa(s.VCPU),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		// seccomp: no obsolete syscalls, no setuid/setgid, no fork/exec,
		// no scheduler/affinity changes; it also sets no_new_privs.
		"-sandbox", sandbox,
		"-monitor", "none",
		// Paused until the driver has attached the console (see console.go).
		"-S",
		// The serial console goes to a socket the daemon copies into a
		// capped file: QEMU itself never writes guest bytes to disk.
		"-chardev", "socket,id=console,path="+optEsc(f.consoleSock)+",server=on,wait=off",
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,path="+optEsc(f.qmp)+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-pidfile", f.pid,
		"-kernel", s.Kernel,
	)
	if s.Initrd != "" {
		a = append(a, "-initrd", s.Initrd)
	}
	cl := cmdline(s.Cmdline, accel, tscKHz)
	if len(cl) > maxCmdline {
		return nil, invalid("kernel command line is %d bytes, at most %d", len(cl), maxCmdline)
	}
	a = append(a, "-append", cl)
	for i, d := range s.Disks {
		format := d.Format
		if format == "" {
			format = "raw"
		}
		// writeback: a guest flush becomes an fsync on the host file, so a
		// synced write survives a VMM kill; discard keeps sparse files sparse.
		drive := fmt.Sprintf("id=d%d,file=%s,format=%s,if=none,cache=writeback", i, optEsc(d.Path), format)
		if d.ReadOnly {
			drive += ",readonly=on"
		} else {
			drive += ",discard=unmap"
		}
		a = append(a, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-device,drive=d%d", i))
	}
	if s.Tap != "" {
		netdev := "tap,id=n0,ifname=" + s.Tap + ",script=no,downscript=no"
		if s.TapFile != nil {
			// The first of ProcSpec.ExtraFiles is fd 3 in the VMM.
			netdev = "tap,id=n0,fd=" + strconv.Itoa(tapFD)
		}
		a = append(a,
			"-netdev", netdev,
			"-device", "virtio-net-device,netdev=n0,mac="+strings.ToLower(s.MAC),
		)
	}
	if mem.incoming {
		a = append(a, "-incoming", "defer")
	}
	// The guest agent's channel, last so the disks and NIC keep their
	// virtio-mmio slots: a named virtio-serial port, served to the daemon
	// on a socket in the VM directory (0700, so only the owner reaches it).
	a = append(a,
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path="+optEsc(f.agentSock)+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name="+vmm.AgentSerialName,
	)
	return a, nil
}

// extraFiles are the fds QEMU inherits: the TAP at tapFD when given.
func extraFiles(s vmm.Spec) []*os.File {
	if s.TapFile == nil {
		return nil
	}
	return []*os.File{s.TapFile}
}
