package firecracker

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/vmm"
)

var _ vmm.HostChecker = (*Driver)(nil)

// Releases is where Firecracker's binaries are published.
const Releases = "https://github.com/firecracker-microvm/firecracker/releases"

// GuestConfig is the guest kernel configuration Firecracker builds its CI
// kernels from (in its repository), one that has what CheckKernel wants.
const GuestConfig = "resources/guest_configs/microvm-kernel-ci-x86_64-6.1.config"

// kernelNeeds are the build options CheckKernel requires, with why.
var kernelNeeds = []struct {
	sym  string
	vals string // accepted values
	why  string
}{
	{"CONFIG_VIRTIO_MMIO", "ym", "every Firecracker device is virtio-mmio"},
	{"CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "y", "Firecracker lists its devices on the kernel command line as virtio_mmio.device=, so without it the guest finds no disk; Debian's cloud kernel leaves it unset"},
	{"CONFIG_KVM_GUEST", "y", "part of Firecracker's minimal x86_64 boot requirements"},
}

// Names of CheckHost's checks besides vmm.HostBinary.
const (
	CheckKVM = "/dev/kvm"
	CheckTun = "/dev/net/tun"
)

// CheckHost reports what stops Firecracker on this host: its binary on
// bangerd's PATH, a /dev/kvm that runs guests, and (not jailed) a
// /dev/net/tun bangerd's uid may open, since Firecracker opens its TAP by
// name rather than inheriting an open queue as QEMU does.
func (d *Driver) CheckHost(ctx context.Context) vmm.HostStatus {
	var st vmm.HostStatus
	add := func(name, detail string, err error) {
		st.Checks = append(st.Checks, vmm.HostCheck{Name: name, Detail: detail, Err: err})
	}
	if d.Jailer == nil {
		if p, err := d.binary(); err != nil {
			add(vmm.HostBinary, "", fmt.Errorf("%s binary not found on bangerd's PATH: install a Firecracker release (%s; banger is tested against the v1.16 API) as %q there: %w",
				d.binaryName(), Releases, d.binaryName(), vmm.ErrNoVMM))
		} else {
			st.Binary = p
			add(vmm.HostBinary, p, nil)
		}
	}
	kvm := orDefault(d.kvmDevice, "/dev/kvm")
	switch err := openRW(kvm); {
	case err != nil:
		add(CheckKVM, "", fmt.Errorf("%s: %v: Firecracker needs KVM and has no emulation fallback (--vmm qemu falls back to TCG): %w", kvm, err, api.ErrInvalid))
	case d.KVM == nil:
		add(CheckKVM, kvm+" opens", nil)
	default:
		if ok, why := d.KVM(ctx); ok {
			add(CheckKVM, why, nil)
		} else {
			add(CheckKVM, "", fmt.Errorf("%s opens but cannot run guests (probe: %s): Firecracker has no emulation fallback (--vmm qemu falls back to TCG): %w", kvm, why, api.ErrInvalid))
		}
	}
	if d.Jailer == nil {
		tun := orDefault(d.tunDevice, "/dev/net/tun")
		if err := openRW(tun); err != nil {
			add(CheckTun, "", fmt.Errorf("%s: %v: Firecracker opens its TAP by name as bangerd's uid %d; run bangerd as root (the all-in-one mode) or let that uid open %s (the jailer is not wired yet): %w",
				tun, err, os.Geteuid(), tun, api.ErrInvalid))
		} else {
			add(CheckTun, fmt.Sprintf("uid %d opens %s (Firecracker opens its TAP by name)", os.Geteuid(), tun), nil)
		}
	}
	return st
}

// CheckKernel reports whether the stored kernel at path boots under
// Firecracker: an uncompressed ELF whose build configuration has what
// kernelNeeds lists. A configuration that is not known wraps
// vmm.ErrUnchecked.
func (d *Driver) CheckKernel(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", path, err)
	}
	var magic [4]byte
	_, err = io.ReadFull(f, magic[:])
	f.Close()
	if err != nil || string(magic[:]) != "\x7fELF" {
		return fmt.Errorf("kernel %s is not an uncompressed ELF vmlinux, the only form Firecracker boots on x86_64 (banger extracts one at import when it can): %w", path, api.ErrInvalid)
	}
	if d.KernelConfig == nil {
		return fmt.Errorf("kernel %s: build configuration not read: %w", path, vmm.ErrUnchecked)
	}
	cfg, err := d.KernelConfig(path)
	if err != nil {
		return fmt.Errorf("%w: %v", vmm.ErrUnchecked, err)
	}
	var missing, why []string
	for _, n := range kernelNeeds {
		if v := cfg[n.sym]; v == "" || len(v) != 1 || !strings.Contains(n.vals, v) {
			missing = append(missing, n.sym)
			why = append(why, n.why)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	them := "them"
	if len(missing) == 1 {
		them = "it"
	}
	return fmt.Errorf("kernel lacks %s (%s); use a kernel built with %s, e.g. from Firecracker's %s, imported with `banger kernel import --name NAME --vmlinux VMLINUX --config CONFIG`: %w",
		strings.Join(missing, ", "), strings.Join(why, "; "), them, GuestConfig, api.ErrInvalid)
}

// Version is the Firecracker binary's version ("1.16.1").
func (d *Driver) Version(ctx context.Context) (string, error) {
	bin, err := d.binary()
	if err != nil {
		return "", err
	}
	return d.binaryVersion(ctx, bin)
}

func (d *Driver) binaryName() string { return orDefault(d.Binary, DefaultBinary) }

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// openRW opens a device read-write and closes it: a TUN fd that attaches
// to no interface, a KVM fd that creates no VM.
func openRW(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}
