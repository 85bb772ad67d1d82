package firecracker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// hostDriver is a driver whose host is files in a temp dir: the binary is
// found or not, the devices open or are missing, KVM runs guests or not.
func hostDriver(t *testing.T, binary, kvm, tun, kvmUsable bool) *Driver {
	t.Helper()
	dir := t.TempDir()
	d := New(system.Exec{}, nil)
	d.lookPath = func(name string) (string, error) {
		if !binary {
			return "", errors.New(`exec: "` + name + `": executable file not found in $PATH`)
		}
		return "/opt/fc/" + name, nil
	}
	dev := func(name string, exists bool) string {
		p := filepath.Join(dir, name)
		if exists {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	d.kvmDevice, d.tunDevice = dev("kvm", kvm), dev("tun", tun)
	d.KVM = func(context.Context) (bool, string) {
		if kvmUsable {
			return true, "kvm: probe guest ran"
		}
		return false, "failed to set MSR 0x10a"
	}
	return d
}

func TestCheckHost(t *testing.T) {
	ctx := context.Background()
	good := hostDriver(t, true, true, true, true).CheckHost(ctx)
	var names []string
	for _, c := range good.Checks {
		names = append(names, c.Name+": "+c.Detail)
	}
	if good.Binary != "/opt/fc/firecracker" || len(good.Problems()) != 0 || good.Err("firecracker") != nil ||
		!strings.HasPrefix(strings.Join(names, "\n"), "binary: /opt/fc/firecracker\n/dev/kvm: kvm: probe guest ran\n/dev/net/tun: uid ") {
		t.Fatalf("usable host: %+v\n%s", good, strings.Join(names, "\n"))
	}

	// Every problem is reported, the missing binary first and as ErrNoVMM.
	bad := hostDriver(t, false, true, false, false).CheckHost(ctx)
	err := bad.Err("firecracker")
	msg := err.Error()
	if bad.Binary != "" || len(bad.Problems()) != 3 || !errors.Is(err, vmm.ErrNoVMM) || !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("bad host: %+v %v", bad, err)
	}
	for _, want := range []string{
		"vmm firecracker cannot run vms on this host: firecracker binary not found on bangerd's PATH: install a Firecracker release (" + Releases,
		"kvm opens but cannot run guests (probe: failed to set MSR 0x10a): Firecracker has no emulation fallback",
		"tun: no such file or directory: Firecracker opens its TAP by name",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}

	// No /dev/kvm at all: the probe is not asked.
	d := hostDriver(t, true, false, true, true)
	d.KVM = func(context.Context) (bool, string) { t.Error("probe asked without /dev/kvm"); return true, "" }
	if st := d.CheckHost(ctx); len(st.Problems()) != 1 || !strings.Contains(st.Problems()[0].Error(), "kvm: no such file") {
		t.Fatalf("no kvm: %+v", st)
	}
	// Jailed, the binary and the TUN device are the privileged side's.
	j := hostDriver(t, false, true, false, true)
	j.Jailer = fakeLauncher{}
	if st := j.CheckHost(ctx); len(st.Problems()) != 0 || len(st.Checks) != 1 {
		t.Fatalf("jailed: %+v", st)
	}
}

type fakeLauncher struct{ Launcher }

const fcConfig = "CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\nCONFIG_KVM_GUEST=y\n"
const debianConfig = "CONFIG_VIRTIO_MMIO=m\n# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\nCONFIG_KVM_GUEST=y\nCONFIG_ACPI=y\n"

func TestCheckKernel(t *testing.T) {
	dir := t.TempDir()
	elf := filepath.Join(dir, "vmlinux")
	bz := filepath.Join(dir, "vmlinuz")
	_ = os.WriteFile(elf, []byte("\x7fELF\x02\x01\x01rest"), 0o644)
	_ = os.WriteFile(bz, []byte("MZ....HdrS"), 0o644)
	configs := map[string]string{}
	d := New(system.Exec{}, nil)
	d.KernelConfig = func(path string) (map[string]string, error) {
		text, ok := configs[path]
		if !ok {
			return nil, errors.New("no build configuration kept: not found")
		}
		cfg := map[string]string{}
		for _, l := range strings.Split(text, "\n") {
			if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
				cfg[k] = v
			}
		}
		return cfg, nil
	}

	if err := d.CheckKernel(bz); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "not an uncompressed ELF vmlinux") {
		t.Errorf("bzImage: %v", err)
	}
	if err := d.CheckKernel(elf); !errors.Is(err, vmm.ErrUnchecked) || !strings.Contains(err.Error(), "no build configuration") {
		t.Errorf("unknown config: %v", err)
	}
	configs[elf] = debianConfig
	err := d.CheckKernel(elf)
	if !errors.Is(err, api.ErrInvalid) || errors.Is(err, vmm.ErrUnchecked) {
		t.Fatalf("debian config: %v", err)
	}
	for _, want := range []string{"kernel lacks CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES (", "Debian's cloud kernel leaves it unset", GuestConfig,
		"banger kernel import --name NAME --vmlinux VMLINUX --config CONFIG"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q: %v", want, err)
		}
	}
	configs[elf] = strings.Replace(fcConfig, "CONFIG_KVM_GUEST=y", "CONFIG_KVM_GUEST=n", 1)
	if err := d.CheckKernel(elf); err == nil || !strings.Contains(err.Error(), "lacks CONFIG_KVM_GUEST (") {
		t.Errorf("=n counts as missing: %v", err)
	}
	configs[elf] = fcConfig
	if err := d.CheckKernel(elf); err != nil {
		t.Errorf("firecracker config: %v", err)
	}
	d.KernelConfig = nil
	if err := d.CheckKernel(elf); !errors.Is(err, vmm.ErrUnchecked) {
		t.Errorf("no config reader: %v", err)
	}
}
