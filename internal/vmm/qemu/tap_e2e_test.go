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

// QEMU running as an unprivileged uid attaches to a TAP made by hostnet for
// that uid, and is refused one owned by someone else. All inside a netns.
func TestE2ETapAsUnprivilegedUser(t *testing.T) {
	kernel := testKernel(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	// Distros make /dev/net/tun 0666 (the TAP owner check does the rest);
	// some hosts ship it 0600, and then only a passed fd would work.
	if st, err := os.Stat("/dev/net/tun"); err != nil || st.Mode().Perm()&0o006 != 0o006 {
		t.Skip("/dev/net/tun is not world read-writable on this host")
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
	if err := m.CreateTap(ctx, "bgr-mine", nobody); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTap(ctx, "bgr-theirs", 1000); err != nil {
		t.Fatal(err)
	}
	ip, _ := hostnet.AllocIP(m.Cfg.Subnet, nil)
	d := New(system.Exec{}, nil)
	for _, c := range []struct {
		tap string
		ok  bool
	}{{"bgr-mine", true}, {"bgr-theirs", false}} {
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
		pid, err := d.Start(ctx, s)
		if c.ok {
			if err != nil {
				t.Fatalf("%s: %v", c.tap, err)
			}
			st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
			t.Logf("%s: qemu pid %d running; %s", c.tap, pid, uidLine(string(st)))
			d.Kill(pid)
		} else {
			if err == nil {
				d.Kill(pid)
				t.Fatalf("%s: qemu as uid %d attached to a tap owned by 1000", c.tap, nobody)
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
