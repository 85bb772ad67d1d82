package doctor

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmm"
)

// fakeVMM answers like the Firecracker driver from fixed facts.
type fakeVMM struct {
	checks  []vmm.HostCheck
	binary  string
	kernels map[string]error // by kernel path
	version string
}

func (f fakeVMM) Name() string { return "firecracker" }
func (f fakeVMM) CheckHost(context.Context) vmm.HostStatus {
	return vmm.HostStatus{Binary: f.binary, Checks: f.checks}
}
func (f fakeVMM) CheckKernel(path string) error { return f.kernels[path] }
func (f fakeVMM) Version(context.Context) (string, error) {
	if f.version == "" {
		return "", errors.New("no version")
	}
	return f.version, nil
}

// render is how `banger doctor` prints checks.
func render(checks []api.DoctorCheck) string {
	var b strings.Builder
	for _, c := range checks {
		fmt.Fprintf(&b, "%s\t%s\t%s\n", c.Mark(), c.Name, c.Detail)
	}
	return b.String()
}

var (
	errNoBinary = fmt.Errorf("firecracker binary not found on bangerd's PATH: install a Firecracker release: %w", vmm.ErrNoVMM)
	errPVM      = errors.New("/dev/kvm opens but cannot run guests (probe: kvm unusable (failed to set MSR 0x10a)): Firecracker has no emulation fallback")
	errNoCmdl   = errors.New("kernel lacks CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES (...)")
)

func TestVMMSection(t *testing.T) {
	ctx := context.Background()
	kernels := []store.Kernel{{Name: "debian-cloud", Path: "/k/debian/vmlinux"}, {Name: "old", Path: "/k/old/vmlinux"}, {Name: "fc", Path: "/k/fc/vmlinux"}}
	for _, tc := range []struct {
		name     string
		d        fakeVMM
		kernels  []store.Kernel
		required bool
		want     string
		wantVMM  api.DoctorVMM
	}{{
		name: "this host: no binary, PVM",
		d: fakeVMM{checks: []vmm.HostCheck{{Name: "binary", Err: errNoBinary}, {Name: "/dev/kvm", Err: errPVM}, {Name: "/dev/net/tun", Detail: "uid 0 opens /dev/net/tun"}},
			kernels: map[string]error{"/k/debian/vmlinux": errNoCmdl, "/k/old/vmlinux": fmt.Errorf("no build configuration kept: %w", vmm.ErrUnchecked), "/k/fc/vmlinux": nil}},
		kernels: kernels,
		want: "no\tfirecracker\t" + errNoBinary.Error() + "\n" +
			"no\tfirecracker /dev/kvm\t" + errPVM.Error() + "\n" +
			"ok\tfirecracker /dev/net/tun\tuid 0 opens /dev/net/tun\n" +
			"no\tfirecracker kernel debian-cloud\t" + errNoCmdl.Error() + "\n" +
			"no\tfirecracker kernel old\tcannot tell: no build configuration kept: cannot be checked\n" +
			"ok\tfirecracker kernel fc\tboots under firecracker\n",
		wantVMM: api.DoctorVMM{Reason: errNoBinary.Error() + "; " + errPVM.Error(), Problems: []string{errNoBinary.Error(), errPVM.Error()},
			Kernels: []api.DoctorKernel{{Name: "debian-cloud", Known: true, Detail: errNoCmdl.Error()},
				{Name: "old", Detail: "cannot tell: no build configuration kept: cannot be checked"},
				{Name: "fc", OK: true, Known: true, Detail: "boots under firecracker"}}},
	}, {
		name: "usable, default vmm",
		d: fakeVMM{binary: "/usr/bin/firecracker", version: "1.16.1", checks: []vmm.HostCheck{{Name: "binary", Detail: "/usr/bin/firecracker"},
			{Name: "/dev/kvm", Detail: "kvm: probe guest ran"}}, kernels: map[string]error{"/k/fc/vmlinux": nil}},
		kernels:  kernels[2:],
		required: true,
		want: "ok\tfirecracker\t/usr/bin/firecracker (1.16.1)\n" +
			"ok\tfirecracker /dev/kvm\tkvm: probe guest ran\n" +
			"ok\tfirecracker kernel fc\tboots under firecracker\n",
		wantVMM: api.DoctorVMM{Available: true, Binary: "/usr/bin/firecracker", Version: "1.16.1",
			Kernels: []api.DoctorKernel{{Name: "fc", OK: true, Known: true, Detail: "boots under firecracker"}}},
	}, {
		name: "host fine, only the debian kernel, required",
		d: fakeVMM{binary: "/usr/bin/firecracker", checks: []vmm.HostCheck{{Name: "binary", Detail: "/usr/bin/firecracker"}},
			kernels: map[string]error{"/k/debian/vmlinux": errNoCmdl}},
		kernels:  kernels[:1],
		required: true,
		want: "ok\tfirecracker\t/usr/bin/firecracker (version unknown: no version)\n" +
			"FAIL\tfirecracker kernel debian-cloud\t" + errNoCmdl.Error() + "\n",
		wantVMM: api.DoctorVMM{Binary: "/usr/bin/firecracker",
			Reason:  "no imported kernel is known to boot under firecracker (debian-cloud: " + errNoCmdl.Error() + ")",
			Kernels: []api.DoctorKernel{{Name: "debian-cloud", Known: true, Detail: errNoCmdl.Error()}}},
	}, {
		name:    "no kernel",
		d:       fakeVMM{binary: "/usr/bin/firecracker", version: "1.16.1", checks: []vmm.HostCheck{{Name: "binary", Detail: "/usr/bin/firecracker"}}},
		want:    "ok\tfirecracker\t/usr/bin/firecracker (1.16.1)\nno\tfirecracker kernel\tnone imported\n",
		wantVMM: api.DoctorVMM{Binary: "/usr/bin/firecracker", Version: "1.16.1", Reason: "no imported kernel is known to boot under firecracker (no kernel imported)"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, checks := vmmSection(ctx, tc.d, tc.kernels, tc.required)
			if r := render(checks); r != tc.want {
				t.Errorf("checks:\n%s\nwant:\n%s", r, tc.want)
			}
			if g, w := fmt.Sprintf("%+v", got), fmt.Sprintf("%+v", tc.wantVMM); g != w {
				t.Errorf("section:\n %s\nwant\n %s", g, w)
			}
		})
	}
}

// Run reports the section under "firecracker" and the default VMM, and its
// failures do not count against a QEMU host.
func TestRunFirecrackerSection(t *testing.T) {
	ctx := context.Background()
	layout := paths.Layout{Root: t.TempDir()}
	st, err := store.Open(ctx, filepath.Join(layout.Root, "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.CreateKernel(ctx, &store.Kernel{Name: "debian-cloud", Version: "6.1", Source: "t", Path: "/k/debian/vmlinux", Initrd: "/k/i"}); err != nil {
		t.Fatal(err)
	}
	c := &Checker{Layout: layout, Store: st,
		LookPath:    func(n string) (string, error) { return "/usr/bin/" + n, nil },
		Accel:       func(context.Context) (string, string) { return "tcg", "kvm unusable" },
		Firecracker: fakeVMM{checks: []vmm.HostCheck{{Name: "binary", Err: errNoBinary}}, kernels: map[string]error{"/k/debian/vmlinux": errNoCmdl}},
		DefaultVMM:  "qemu"}
	res := c.Run(ctx)
	if res.VMM != "qemu" || res.Firecracker == nil || res.Firecracker.Available || !strings.HasPrefix(res.Firecracker.Reason, errNoBinary.Error()) {
		t.Fatalf("result: vmm %q, firecracker %+v", res.VMM, res.Firecracker)
	}
	for _, ch := range res.Checks {
		if strings.HasPrefix(ch.Name, "firecracker") && !ch.Optional {
			t.Errorf("firecracker check %q counts against a qemu host", ch.Name)
		}
	}
	c.DefaultVMM = "firecracker"
	for _, ch := range c.Run(ctx).Checks {
		if strings.HasPrefix(ch.Name, "firecracker") && ch.Optional {
			t.Errorf("firecracker check %q optional on a firecracker host", ch.Name)
		}
	}
}
