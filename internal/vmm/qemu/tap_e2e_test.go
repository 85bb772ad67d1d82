//go:build e2e

package qemu

import (
	"context"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// QEMU running as an unprivileged uid gets its TAP as an inherited fd
// opened by root (what the helper's open_tap does: /dev/net/tun is 0600 root
// on these hosts), and without one it cannot attach at all. In a netns.
func TestE2ETapAsUnprivilegedUser(t *testing.T) {
	kernel := testKernel(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	runtime.LockOSThread()
	orig, _ := netns.Get()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if netns.Set(orig) == nil {
			orig.Close()
			ns.Close()
			runtime.UnlockOSThread()
		}
	})
	ctx := context.Background()
	m := &hostnet.Manager{Cfg: hostnet.Config{Subnet: netip.MustParsePrefix("10.78.0.0/24")}}
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	if err := m.CreateTap(ctx, "bgr-p0", nobody); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTap(ctx, "bgr-p1", 1000); err != nil {
		t.Fatal(err)
	}
	ip, _ := hostnet.AllocIP(m.Cfg.Subnet, nil)
	d := New(system.Exec{}, nil)
	for _, c := range []struct {
		tap    string
		passFD bool
	}{{"bgr-p0", true}, {"bgr-p1", false}} {
		dir, err := os.MkdirTemp("", "bq")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		if err := os.Chown(dir, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		s := vmm.Spec{ID: "tap1", Dir: dir, VCPU: 1, MemoryMiB: 128, Kernel: kernel, Cmdline: "console=ttyS0",
			Tap: c.tap, MAC: hostnet.MACForIP(ip).String(), UID: nobody, GID: nobody}
		if c.passFD {
			f, err := m.OpenTap(ctx, c.tap)
			if err != nil {
				t.Fatal(err)
			}
			s.TapFile = f
		}
		pid, err := d.Start(ctx, s)
		if s.TapFile != nil {
			s.TapFile.Close()
		}
		if c.passFD {
			if err != nil {
				t.Fatalf("%s: %v", c.tap, err)
			}
			st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
			fd3, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/3")
			// -sandbox: seccomp filter mode, which also set no_new_privs.
			if !strings.Contains(string(st), "Seccomp:\t2\n") || !strings.Contains(string(st), "NoNewPrivs:\t1\n") {
				d.Kill(pid)
				t.Fatalf("%s: qemu is not confined:\n%s", c.tap, st)
			}
			if !strings.Contains(uidLine(string(st)), strconv.Itoa(nobody)) || fd3 != "/dev/net/tun" {
				d.Kill(pid)
				t.Fatalf("%s: qemu %s, fd 3 -> %q; want uid %d holding the tun fd", c.tap, uidLine(string(st)), fd3, nobody)
			}
			t.Logf("%s: qemu pid %d running with the passed fd; %s", c.tap, pid, uidLine(string(st)))
			d.Kill(pid)
		} else {
			if err == nil {
				d.Kill(pid)
				t.Fatalf("%s: qemu as uid %d attached to a tap owned by 1000 without a passed fd", c.tap, nobody)
			}
			t.Logf("%s: refused as expected: %v", c.tap, err)
		}
	}
}

func uidLine(status string) string {
	for _, l := range strings.Split(status, "\n") {
		if strings.HasPrefix(l, "Uid:") {
			return l
		}
	}
	return ""
}
