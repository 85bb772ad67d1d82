package hostnet

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
)

// inNewNetns moves the test goroutine's locked thread into a fresh network
// namespace for the rest of the test, so the host's links are never touched.
func inNewNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.Set(orig); err != nil {
			// Never hand a thread in the wrong namespace back to the scheduler:
			// leaving it locked makes the runtime destroy it.
			t.Errorf("restore netns: %v", err)
			return
		}
		orig.Close()
		ns.Close()
		runtime.UnlockOSThread()
	})
	if cur, _ := netns.Get(); cur.Equal(orig) {
		t.Fatal("still in the original namespace")
	}
}

// sysfsOwner reads /sys/class/net/<dev>/owner as this namespace sees it: the
// host's /sys shows the host namespace, so mount a private sysfs.
func sysfsOwner(t *testing.T, dev string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("sysfs", dir, "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("mount sysfs: %v", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	b, err := os.ReadFile(filepath.Join(dir, "class/net", dev, "owner"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// ipv6State reads an interface's IPv6 switches in the calling thread's
// namespace ("none" when the kernel keeps no IPv6 state for it).
func ipv6State(t *testing.T, dev string) string {
	t.Helper()
	var out []string
	for _, k := range []string{"accept_ra", "autoconf", "disable_ipv6"} {
		b, err := os.ReadFile(filepath.Join(ipv6Conf, dev, k))
		if errors.Is(err, os.ErrNotExist) {
			return "none"
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, k+"="+strings.TrimSpace(string(b)))
	}
	return strings.Join(out, " ")
}

const ipv6Off = "accept_ra=0 autoconf=0 disable_ipv6=1"

func testManager() *Manager {
	return &Manager{Cfg: Config{Bridge: "bgtest0", Subnet: netip.MustParsePrefix("10.77.0.0/24")}}
}

func TestEnsureBridgeIdempotent(t *testing.T) {
	inNewNetns(t)
	m := testManager()
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if err := m.EnsureBridge(ctx); err != nil {
			t.Fatalf("EnsureBridge #%d: %v", i, err)
		}
	}
	br, err := netlink.LinkByName("bgtest0")
	if err != nil {
		t.Fatal(err)
	}
	if br.Type() != "bridge" || br.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("bridge type %s flags %v", br.Type(), br.Attrs().Flags)
	}
	as, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(as) != 1 || as[0].IPNet.String() != "10.77.0.1/24" {
		t.Fatalf("addresses %v", as)
	}
	if got := ipv6State(t, "bgtest0"); got != ipv6Off {
		t.Fatalf("bridge ipv6: %s, want %s", got, ipv6Off)
	}
	if v6, _ := netlink.AddrList(br, netlink.FAMILY_V6); len(v6) != 0 {
		t.Fatalf("bridge has ipv6 addresses: %v", v6)
	}
	// Switched back on behind banger's back: the next EnsureBridge repairs it.
	if err := os.WriteFile(filepath.Join(ipv6Conf, "bgtest0", "disable_ipv6"), []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ipv6State(t, "bgtest0"); got != ipv6Off {
		t.Fatalf("bridge ipv6 after repair: %s, want %s", got, ipv6Off)
	}
}

func TestEnsureBridgeRefusesNonBridge(t *testing.T) {
	inNewNetns(t)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "bgtest0"}, PeerName: "bgtestp"}); err != nil {
		t.Fatal(err)
	}
	if err := testManager().EnsureBridge(context.Background()); !errors.Is(err, api.ErrExists) {
		t.Fatalf("err = %v, want ErrExists", err)
	}
}

func TestTapLifecycle(t *testing.T) {
	inNewNetns(t)
	m := testManager()
	ctx := context.Background()
	if err := m.CreateTap(ctx, "bgr-abc", 1000); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("CreateTap without bridge: %v", err)
	}
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	if m.TapExists("bgr-abc") {
		t.Fatal("tap exists before creation")
	}
	for i := 0; i < 2; i++ { // the second call reuses
		if err := m.CreateTap(ctx, "bgr-abc", 1000); err != nil {
			t.Fatalf("CreateTap #%d: %v", i, err)
		}
	}
	if !m.TapExists("bgr-abc") {
		t.Fatal("TapExists = false after create")
	}
	link, err := netlink.LinkByName("bgr-abc")
	if err != nil {
		t.Fatal(err)
	}
	br, _ := netlink.LinkByName("bgtest0")
	tt := link.(*netlink.Tuntap)
	if tt.Mode != netlink.TUNTAP_MODE_TAP || tt.NonPersist || tt.Owner != 1000 {
		t.Fatalf("tap mode %v persist %v owner %d", tt.Mode, !tt.NonPersist, tt.Owner)
	}
	if link.Attrs().MasterIndex != br.Attrs().Index || link.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("master %d (bridge %d) flags %v", link.Attrs().MasterIndex, br.Attrs().Index, link.Attrs().Flags)
	}
	if got := sysfsOwner(t, "bgr-abc"); got != "1000" {
		t.Fatalf("sysfs owner %q", got)
	}
	if got := ipv6State(t, "bgr-abc"); got != ipv6Off {
		t.Fatalf("tap ipv6: %s, want %s", got, ipv6Off)
	}

	// Reuse under another uid re-owns the idle device.
	if err := m.CreateTap(ctx, "bgr-abc", 2000); err != nil {
		t.Fatal(err)
	}
	if got := sysfsOwner(t, "bgr-abc"); got != "2000" {
		t.Fatalf("sysfs owner after re-own %q", got)
	}

	// Detached from the bridge behind our back: CreateTap repairs it.
	if err := netlink.LinkSetNoMaster(link); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTap(ctx, "bgr-abc", 2000); err != nil {
		t.Fatal(err)
	}
	link, _ = netlink.LinkByName("bgr-abc")
	if link.Attrs().MasterIndex != br.Attrs().Index {
		t.Fatal("tap not re-attached to the bridge")
	}

	for i := 0; i < 2; i++ { // missing is success
		if err := m.DeleteTap(ctx, "bgr-abc"); err != nil {
			t.Fatalf("DeleteTap #%d: %v", i, err)
		}
	}
	if m.TapExists("bgr-abc") {
		t.Fatal("tap still exists")
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if name := l.Attrs().Name; name != "lo" && name != "bgtest0" {
			t.Errorf("left behind: %s (%s)", name, l.Type())
		}
	}
}

// A TAP held open by a VMM of another uid must not be taken over.
func TestCreateTapInUse(t *testing.T) {
	inNewNetns(t)
	m := testManager()
	ctx := context.Background()
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTap(ctx, "bgr-busy", 1000); err != nil {
		t.Fatal(err)
	}
	// Attach like a VMM does.
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifr, _ := unix.NewIfreq("bgr-busy")
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		t.Fatalf("attach: %v", err)
	}
	if err := m.CreateTap(ctx, "bgr-busy", 1000); err != nil {
		t.Fatalf("reuse by the same owner while attached: %v", err)
	}
	if err := m.CreateTap(ctx, "bgr-busy", 2000); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("takeover by another uid: %v, want ErrBusy", err)
	}
	if got := sysfsOwner(t, "bgr-busy"); got != "1000" {
		t.Fatalf("owner changed to %s", got)
	}
	if err := m.DeleteTap(ctx, "bgr-busy"); err != nil {
		t.Fatal(err)
	}
	if m.TapExists("bgr-busy") {
		t.Fatal("tap survived DeleteTap")
	}
}

func TestTapRefusesForeignInterfaces(t *testing.T) {
	inNewNetns(t)
	m := testManager()
	ctx := context.Background()
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	// Something that is not a TAP under a TAP-like name (no dummy driver here).
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "bgr-dummy"}, PeerName: "bgp-dummy"}); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTap(ctx, "bgr-dummy", 0); !errors.Is(err, api.ErrExists) {
		t.Fatalf("CreateTap over a dummy: %v", err)
	}
	if err := m.DeleteTap(ctx, "bgr-dummy"); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("DeleteTap of a dummy: %v", err)
	}
	if m.TapExists("bgr-dummy") {
		t.Fatal("TapExists true for a dummy")
	}
	if _, err := netlink.LinkByName("bgr-dummy"); err != nil {
		t.Fatalf("dummy was removed: %v", err)
	}
	for _, name := range []string{"lo", "bgtest0", "eth0", "bgr-../x", ""} {
		if err := m.DeleteTap(ctx, name); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("DeleteTap(%q) = %v", name, err)
		}
		if err := m.CreateTap(ctx, name, 0); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("CreateTap(%q) = %v", name, err)
		}
	}
	if _, err := netlink.LinkByName("lo"); err != nil {
		t.Fatal("lo gone")
	}
	if err := m.CreateTap(ctx, "bgr-neg", -1); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("negative uid: %v", err)
	}
}

func TestFlushNeigh(t *testing.T) {
	inNewNetns(t)
	m := testManager()
	ctx := context.Background()
	ip := netip.MustParseAddr("10.77.0.9")
	if err := m.FlushNeigh(ctx, ip); err != nil {
		t.Fatalf("no bridge: %v", err)
	}
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	br, _ := netlink.LinkByName("bgtest0")
	old, _ := net.ParseMAC("02:ba:0a:4d:00:63")
	if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4,
		State: netlink.NUD_REACHABLE, IP: ip.AsSlice(), HardwareAddr: old}); err != nil {
		t.Fatal(err)
	}
	if n := neighCount(t, br, ip); n != 1 {
		t.Fatalf("neighbour entries before flush: %d", n)
	}
	if err := m.FlushNeigh(ctx, ip); err != nil {
		t.Fatal(err)
	}
	if n := neighCount(t, br, ip); n != 0 {
		t.Fatalf("neighbour entries after flush: %d", n)
	}
	if err := m.FlushNeigh(ctx, ip); err != nil {
		t.Fatalf("second flush: %v", err)
	}
	if err := m.FlushNeigh(ctx, netip.MustParseAddr("fd00::1")); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("ipv6: %v", err)
	}
}

func neighCount(t *testing.T, br netlink.Link, ip netip.Addr) int {
	t.Helper()
	ns, err := netlink.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ns {
		if e.IP.Equal(ip.AsSlice()) && e.State&(netlink.NUD_FAILED|netlink.NUD_INCOMPLETE) == 0 {
			n++
		}
	}
	return n
}

func TestCancelledContext(t *testing.T) {
	m := testManager()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for name, err := range map[string]error{
		"EnsureBridge": m.EnsureBridge(ctx),
		"CreateTap":    m.CreateTap(ctx, "bgr-x", 0),
		"DeleteTap":    m.DeleteTap(ctx, "bgr-x"),
		"FlushNeigh":   m.FlushNeigh(ctx, netip.MustParseAddr("10.77.0.2")),
	} {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
