package agent

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/agentinit"
	"github.com/banger-dev/banger/internal/testenv"
)

// fakeProc is a /proc with one process listening on TCP sockets.
type fakeProc struct {
	t    *testing.T
	dir  string
	pid  int
	comm string
}

func newFakeProc(t *testing.T, comm string, inodes ...uint64) *fakeProc {
	p := &fakeProc{t: t, dir: t.TempDir(), pid: 4242, comm: comm}
	p.set(inodes...)
	return p
}

// set makes the process hold and listen on exactly the given sockets. A
// reader in between sees the old sockets gone before the new ones appear,
// never a missing process.
func (p *fakeProc) set(inodes ...uint64) {
	dir := filepath.Join(p.dir, fmt.Sprint(p.pid))
	for _, d := range []string{"fd", "net"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			p.t.Error(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "comm"), []byte(p.comm+"\n"), 0o644)
	old, _ := os.ReadDir(filepath.Join(dir, "fd"))
	for _, e := range old {
		os.Remove(filepath.Join(dir, "fd", e.Name()))
	}
	tcp := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		// an established connection on an inode it also holds: not a listener
		"   0: 0500A8C0:0016 0100A8C0:D431 01 00000000:00000000 02:000AFD2B 00000000     0        0 999 2 0000000000000000 20 4 29 10 -1\n"
	for i, ino := range inodes {
		tcp += fmt.Sprintf("   %d: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000000000 100 0 0 10 0\n", i+1, ino)
	}
	for name, data := range map[string]string{"tcp": tcp, "tcp6": tcp[:strings.Index(tcp, "\n")+1]} {
		tmp := filepath.Join(dir, "net", "."+name)
		os.WriteFile(tmp, []byte(data), 0o644)
		os.Rename(tmp, filepath.Join(dir, "net", name))
	}
	os.Symlink("socket:[999]", filepath.Join(dir, "fd", "9"))
	os.Symlink("/dev/null", filepath.Join(dir, "fd", "0"))
	for i, ino := range inodes {
		os.Symlink(fmt.Sprintf("socket:[%d]", ino), filepath.Join(dir, "fd", fmt.Sprint(3+i)))
	}
}

func (p *fakeProc) reloader(t *testing.T, signal func(pid int) error) sshdReloader {
	pidFile := filepath.Join(t.TempDir(), "sshd.pid")
	os.WriteFile(pidFile, []byte(fmt.Sprintf("%d\n", p.pid)), 0o644)
	return sshdReloader{PidFile: pidFile, Proc: p.dir, Signal: signal, Timeout: 300 * time.Millisecond}
}

func TestSSHDReload(t *testing.T) {
	ctx := testCtx(t, 10*time.Second)
	t.Run("relistens", func(t *testing.T) {
		p := newFakeProc(t, "sshd", 1111, 1112)
		var signalled []int
		r := p.reloader(t, func(pid int) error {
			signalled = append(signalled, pid)
			// sshd closes its sockets, re-executes, listens anew.
			go func() {
				time.Sleep(30 * time.Millisecond)
				p.set()
				time.Sleep(30 * time.Millisecond)
				p.set(2221, 2222)
			}()
			return nil
		})
		start := time.Now()
		if err := r.reload(ctx); err != nil {
			t.Fatal(err)
		}
		if len(signalled) != 1 || signalled[0] != 4242 {
			t.Fatalf("signalled %v", signalled)
		}
		if d := time.Since(start); d < 30*time.Millisecond {
			t.Fatalf("returned after %v, while sshd still listened on its old sockets", d)
		}
	})
	t.Run("never relistens", func(t *testing.T) {
		p := newFakeProc(t, "sshd", 1111)
		r := p.reloader(t, func(int) error { return nil })
		if err := r.reload(ctx); err == nil || !strings.Contains(err.Error(), "still on its old sockets") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("dies", func(t *testing.T) {
		p := newFakeProc(t, "sshd", 1111)
		r := p.reloader(t, func(int) error { return os.RemoveAll(filepath.Join(p.dir, "4242")) })
		if err := r.reload(ctx); err == nil || !strings.Contains(err.Error(), "exited on SIGHUP") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("stale pid file", func(t *testing.T) {
		p := newFakeProc(t, "postgres", 1111)
		r := p.reloader(t, func(int) error { t.Fatal("signalled a process that is not sshd"); return nil })
		if err := r.reload(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("no sshd", func(t *testing.T) {
		r := sshdReloader{PidFile: filepath.Join(t.TempDir(), "none.pid"), Proc: t.TempDir(),
			Signal: func(int) error { t.Fatal("signalled without an sshd"); return nil }}
		if err := r.reload(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("bad pid file", func(t *testing.T) {
		p := newFakeProc(t, "sshd", 1111)
		r := p.reloader(t, func(int) error { t.Fatal("signalled"); return nil })
		os.WriteFile(r.PidFile, []byte("1\n"), 0o644)
		if err := r.reload(ctx); err == nil || !strings.Contains(err.Error(), "not a PID") {
			t.Fatalf("err = %v", err)
		}
	})
}

// The listener inodes of a real process: this test's own.
func TestSSHDListeningSelf(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var st unix.Stat_t
	f, _ := ln.(*net.TCPListener).File()
	defer f.Close()
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	set, err := sshdReloader{Proc: "/proc"}.listening(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !set[st.Ino] {
		t.Fatalf("listener inode %d not in %v", st.Ino, set)
	}
}

// noClock is the kernel, but for the clock: the test host's wall clock
// is not the test's to step.
type noClock struct {
	*kernelIdentity
	set time.Time
}

func (n *noClock) SetClock(t time.Time) error { n.set = t; return nil }

// TestKernelIdentity re-identifies for real, in network and UTS namespaces
// of its own: a veth "eth0" set up as the parent guest left it (address,
// second address, default route, learned and permanent neighbours) moves to
// the new MAC, address and route; the host end sees the gratuitous ARP; the
// host name changes; the RNG takes the seed.
func TestKernelIdentity(t *testing.T) {
	testenv.RequireRoot(t)
	inNewNetUTS(t)
	oldMAC, _ := net.ParseMAC("02:00:ac:10:00:02")
	// veth, not dummy: some test kernels have veth built in but no dummy.
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", HardwareAddr: oldMAC}, PeerName: "host0"}); err != nil {
		t.Fatal(err)
	}
	eth0, _ := netlink.LinkByName("eth0")
	peer, _ := netlink.LinkByName("host0")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(netlink.LinkSetUp(peer))
	must(netlink.LinkSetUp(eth0))
	for _, a := range []string{"172.16.0.2/24", "172.16.0.9/24", "10.9.0.2/16"} {
		must(netlink.AddrAdd(eth0, &netlink.Addr{IPNet: mustIPNet(a)}))
	}
	must(netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("10.9.0.1"), Priority: 50}))
	must(netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("172.16.0.1")}))
	gwMAC, _ := net.ParseMAC("02:00:ac:10:00:01")
	must(netlink.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, IP: net.ParseIP("172.16.0.1"), HardwareAddr: gwMAC, State: netlink.NUD_REACHABLE}))
	must(netlink.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, IP: net.ParseIP("172.16.0.7"), HardwareAddr: gwMAC, State: netlink.NUD_STALE}))
	must(netlink.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, IP: net.ParseIP("172.16.0.99"), HardwareAddr: gwMAC, State: netlink.NUD_PERMANENT}))
	must(unix.Sethostname([]byte("parent")))

	// The gratuitous ARP, seen on the host end.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	must(err)
	defer unix.Close(fd)
	must(unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: peer.Attrs().Index}))
	must(unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2}))

	root := guestRoot(t)
	sys := &noClock{kernelIdentity: newKernelIdentity(root)}
	srv := &Server{Identity: IdentityConfig{Root: root, OS: sys}}
	id := testIdentity(t)
	id.Address, id.Gateway = "172.16.5.9/24", "172.16.5.1"
	if _, err := rand.Read(id.Seed); err != nil {
		t.Fatal(err)
	}
	// Called on this thread, not through a connection: the served
	// operation would run on another thread, outside these namespaces.
	if err := srv.reidentify(context.Background(), &id); err != nil {
		t.Fatal(err)
	}
	// The MAC change alone flushes the neighbours, permanent ones included.
	want := "mac=02:00:ac:10:00:05 up=true addr=172.16.5.9/24 default-via=172.16.5.1 hostname=vm-b"
	if got := netState(t); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if !sys.set.Equal(id.Time) {
		t.Fatalf("clock stepped to %v", sys.set)
	}
	buf := make([]byte, 1500)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		t.Fatalf("no gratuitous ARP on the host end: %v", err)
	}
	newMAC, _ := net.ParseMAC(id.MAC)
	if wantARP, _ := agentinit.GratuitousARP(newMAC, netip.MustParseAddr("172.16.5.9")); string(buf[:n]) != string(wantARP) {
		t.Fatalf("ARP % x\nwant % x", buf[:n], wantARP)
	}
	if data, _ := readFile(t, filepath.Join(root, "etc/hostname")); data != "vm-b\n" {
		t.Fatalf("etc/hostname %q", data)
	}

	// Once more over itself: the MAC stays, so the flush step alone drops
	// the learned neighbours (and keeps the permanent one).
	must(netlink.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, IP: net.ParseIP("172.16.5.1"), HardwareAddr: gwMAC, State: netlink.NUD_REACHABLE}))
	must(netlink.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, IP: net.ParseIP("172.16.5.7"), HardwareAddr: gwMAC, State: netlink.NUD_STALE}))
	must(netlink.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, IP: net.ParseIP("172.16.5.99"), HardwareAddr: gwMAC, State: netlink.NUD_PERMANENT}))
	// and a default route via another gateway, left by someone, goes.
	must(netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("172.16.5.254"), Priority: 100}))
	if err := srv.reidentify(context.Background(), &id); err != nil {
		t.Fatalf("second run: %v", err)
	}
	want = "mac=02:00:ac:10:00:05 up=true addr=172.16.5.9/24 default-via=172.16.5.1 neigh=172.16.5.99(permanent) hostname=vm-b"
	if got := netState(t); got != want {
		t.Fatalf("second run: got  %s\nwant %s", got, want)
	}
	// A missing interface is named.
	id.Interface = "eth9"
	if err := srv.reidentify(context.Background(), &id); err == nil || !strings.HasPrefix(err.Error(), "identity mac: link eth9") {
		t.Fatalf("missing interface: err = %v", err)
	}
}

// inNewNetUTS moves the test goroutine's locked thread into new network
// and UTS namespaces and back when the test ends. A thread that cannot go
// back stays locked: it ends with the goroutine (unless it is the main
// thread, which then stays parked where it is).
func inNewNetUTS(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	var orig []*os.File
	for _, ns := range []string{"net", "uts"} {
		f, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/%s", unix.Gettid(), ns))
		if err != nil {
			runtime.UnlockOSThread()
			testenv.Missing(t, "namespace of this thread: %v", err)
		}
		orig = append(orig, f)
	}
	if err := unix.Unshare(unix.CLONE_NEWNET | unix.CLONE_NEWUTS); err != nil {
		runtime.UnlockOSThread()
		testenv.Missing(t, "unshare network and UTS namespaces: %v", err)
	}
	t.Cleanup(func() {
		errNet := unix.Setns(int(orig[0].Fd()), unix.CLONE_NEWNET)
		errUTS := unix.Setns(int(orig[1].Fd()), unix.CLONE_NEWUTS)
		orig[0].Close()
		orig[1].Close()
		if errNet != nil || errUTS != nil {
			t.Errorf("back to the test's namespaces: net %v, uts %v", errNet, errUTS)
			return
		}
		runtime.UnlockOSThread()
	})
}

func mustIPNet(s string) *net.IPNet {
	p := netip.MustParsePrefix(s)
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}

// netState prints eth0 as the operation leaves it.
func netState(t *testing.T) string {
	t.Helper()
	link, err := netlink.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "mac=%s up=%v", link.Attrs().HardwareAddr, link.Attrs().Flags&net.FlagUp != 0)
	addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4)
	for _, a := range addrs {
		b.WriteString(" addr=" + a.IPNet.String())
	}
	routes, _ := netlink.RouteList(link, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			b.WriteString(" default-via=" + r.Gw.String())
		}
	}
	neighs, _ := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	for _, n := range neighs {
		state := "dynamic"
		if n.State&netlink.NUD_PERMANENT != 0 {
			state = "permanent"
		}
		fmt.Fprintf(&b, " neigh=%s(%s)", n.IP, state)
	}
	var u unix.Utsname
	_ = unix.Uname(&u)
	b.WriteString(" hostname=" + unix.ByteSliceToString(u.Nodename[:]))
	return b.String()
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
