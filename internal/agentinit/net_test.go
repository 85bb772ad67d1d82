package agentinit

import (
	"bytes"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestConfigureNet configures a dummy eth0 inside a network namespace the
// test creates, and reads the result back as text.
func TestConfigureNet(t *testing.T) {
	testenv.RequireRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // also switches this thread into it
	if err != nil {
		testenv.Missing(t, "new netns: %v", err)
	}
	defer func() {
		netns.Set(orig)
		ns.Close()
	}()
	mac, _ := net.ParseMAC("02:00:ac:1f:63:02")
	// veth, not dummy: this host's kernel has veth built in but no dummy.
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", HardwareAddr: mac}, PeerName: "host0"}); err != nil {
		t.Fatal(err)
	}
	// Listen for ARP on the peer to see the gratuitous ARP on the wire.
	peer, _ := netlink.LinkByName("host0")
	if err := netlink.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: peer.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})

	cfg := &NetConfig{Addr: netip.MustParsePrefix("172.31.99.2/24"), Gateway: netip.MustParseAddr("172.31.99.1"), Device: "eth0"}
	if err := ConfigureNet(cfg, time.Second); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, from, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		t.Fatalf("no gratuitous ARP seen on the peer: %v", err)
	}
	want, _ := GratuitousARP(mac, cfg.Addr.Addr())
	if !bytes.Equal(buf[:n], want) {
		t.Fatalf("ARP on the wire % x\nwant % x", buf[:n], want)
	}
	if ll := from.(*unix.SockaddrLinklayer); ll.Pkttype != unix.PACKET_BROADCAST {
		t.Errorf("ARP not broadcast: pkttype %d", ll.Pkttype)
	}
	// Idempotent: a second run (e.g. init restarted) must not fail on EEXIST.
	if err := ConfigureNet(cfg, time.Second); err != nil {
		t.Fatalf("second configure: %v", err)
	}
	link, _ := netlink.LinkByName("eth0")
	addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4)
	routes, _ := netlink.RouteList(link, netlink.FAMILY_V4)
	var b strings.Builder
	b.WriteString("up=" + boolStr(link.Attrs().Flags&net.FlagUp != 0))
	for _, a := range addrs {
		b.WriteString(" addr=" + a.IPNet.String())
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			b.WriteString(" default-via=" + r.Gw.String())
		}
	}
	if got, want := b.String(), "up=true addr=172.31.99.2/24 default-via=172.31.99.1"; got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	lo, _ := netlink.LinkByName("lo")
	if lo.Attrs().Flags&net.FlagUp == 0 {
		t.Error("lo not up")
	}

	if err := ConfigureNet(&NetConfig{Addr: cfg.Addr, Device: "eth9"}, 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), "eth9") {
		t.Fatalf("missing device: err = %v", err)
	}
}

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
