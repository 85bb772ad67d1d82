package hostnet

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The sandbox boundary, proved with packets rather than rule text. The test's
// namespace is the host: bridge bgtest0 (10.77.0.1/24), a second host
// interface (192.0.2.1) and an uplink to a "remote" namespace holding a
// public-like address, a private one and a metadata-style link-local one.
// The guest is another namespace joined to the bridge by a veth whose host
// end carries the guard chain exactly as a VM's TAP does; it sends crafted
// frames from an AF_PACKET socket and connects with its own kernel.

const (
	guestIP     = "10.77.0.2"
	gatewayIP   = "10.77.0.1"
	otherHost   = "192.0.2.1"       // another interface of the host
	uplinkHost  = "198.20.0.2"      // the host's end of the uplink
	remotePub   = "198.20.0.1"      // beyond NAT, public (just past 198.18.0.0/15)
	remotePriv  = "192.168.50.1"    // beyond NAT, private range
	remoteMeta  = "169.254.169.254" // beyond NAT, link-local metadata address
	remoteWire  = "168.63.129.16"   // beyond NAT, Azure's wireserver (public space)
	remoteBench = "198.18.0.1"      // beyond NAT, benchmarking range
	remoteIETF  = "192.0.0.8"       // beyond NAT, IETF protocol assignments
	svcPort     = 8080
	guestPort   = 2222
	probeWait   = 700 * time.Millisecond
)

type boundary struct {
	t                   *testing.T
	host, guest, remote netns.NsHandle
	guestMAC            net.HardwareAddr
	guestIf             int // ifindex of the guest's eth0 (in the guest namespace)
	bridgeIf            int
	raw                 int // AF_PACKET socket in the guest namespace
	udp                 chan string
}

// in runs f with the test's (locked) thread in namespace ns, then returns to the host.
func (b *boundary) in(ns netns.NsHandle, f func()) {
	b.t.Helper()
	if err := netns.Set(ns); err != nil {
		b.t.Fatalf("setns: %v", err)
	}
	defer func() {
		if err := netns.Set(b.host); err != nil {
			panic(fmt.Sprintf("cannot return to the host namespace: %v", err))
		}
	}()
	f()
}

func (b *boundary) newNS() netns.NsHandle {
	b.t.Helper()
	ns, err := netns.New()
	if err != nil {
		b.t.Fatal(err)
	}
	if err := netns.Set(b.host); err != nil {
		panic(err)
	}
	b.t.Cleanup(func() { ns.Close() })
	return ns
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func addr(t *testing.T, link, cidr string) {
	t.Helper()
	l, err := netlink.LinkByName(link)
	must(t, err)
	a, err := netlink.ParseAddr(cidr)
	must(t, err)
	must(t, netlink.AddrAdd(l, a))
	must(t, netlink.LinkSetUp(l))
}

func up(t *testing.T, link string) {
	t.Helper()
	l, err := netlink.LinkByName(link)
	must(t, err)
	must(t, netlink.LinkSetUp(l))
}

func newBoundary(t *testing.T) (*boundary, *Firewall, *Manager) {
	fw, m := testFirewall(t)
	host, err := netns.Get()
	must(t, err)
	t.Cleanup(func() { host.Close() })
	b := &boundary{t: t, host: host, udp: make(chan string, 64)}
	b.guest, b.remote = b.newNS(), b.newNS()
	gip := netip.MustParseAddr(guestIP)
	b.guestMAC = MACForIP(gip)

	// guest <-> bridge
	must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "bgr-g1"}, PeerName: "eth0",
		PeerHardwareAddr: b.guestMAC, PeerNamespace: netlink.NsFd(b.guest)}))
	br, err := netlink.LinkByName("bgtest0")
	must(t, err)
	b.bridgeIf = br.Attrs().Index
	g1, err := netlink.LinkByName("bgr-g1")
	must(t, err)
	must(t, netlink.LinkSetMaster(g1, br))
	up(t, "bgr-g1")
	// another host interface, and the uplink to the remote
	must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "hostif0"}, PeerName: "hostif1"}))
	addr(t, "hostif0", otherHost+"/24")
	up(t, "hostif1")
	must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink0"}, PeerName: "uplink1",
		PeerNamespace: netlink.NsFd(b.remote)}))
	addr(t, "uplink0", uplinkHost+"/24")
	for _, dst := range []string{remotePriv + "/32", remoteMeta + "/32", remoteWire + "/32", remoteBench + "/32", remoteIETF + "/32"} {
		_, n, _ := net.ParseCIDR(dst)
		l, _ := netlink.LinkByName("uplink0")
		must(t, netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: n, Gw: net.ParseIP(remotePub)}))
	}

	b.in(b.guest, func() {
		up(t, "lo")
		addr(t, "eth0", guestIP+"/24")
		l, _ := netlink.LinkByName("eth0")
		b.guestIf = l.Attrs().Index
		must(t, netlink.RouteAdd(&netlink.Route{LinkIndex: b.guestIf, Gw: net.ParseIP(gatewayIP)}))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		must(t, err)
		b.raw = fd
		t.Cleanup(func() { unix.Close(fd) })
	})
	b.in(b.remote, func() {
		up(t, "lo")
		addr(t, "uplink1", remotePub+"/24")
		l, _ := netlink.LinkByName("uplink1")
		for _, a := range []string{remotePriv + "/32", remoteMeta + "/32", remoteWire + "/32", remoteBench + "/32", remoteIETF + "/32"} {
			must(t, netlink.AddrAdd(l, mustParseAddr(t, a)))
		}
		// No route back to the guest subnet: only masqueraded traffic is answered.
		ln, err := net.Listen("tcp4", ":"+fmt.Sprint(svcPort))
		must(t, err)
		t.Cleanup(func() { ln.Close() })
		go serve(ln)
	})

	// Host services: TCP on every address, UDP on the gateway (53 and another port).
	ln, err := net.Listen("tcp4", ":"+fmt.Sprint(svcPort))
	must(t, err)
	t.Cleanup(func() { ln.Close() })
	go serve(ln)
	dnsTCP, err := net.Listen("tcp4", gatewayIP+":53")
	must(t, err)
	t.Cleanup(func() { dnsTCP.Close() })
	go serve(dnsTCP)
	for _, port := range []string{"53", "5353"} {
		pc, err := net.ListenPacket("udp4", gatewayIP+":"+port)
		must(t, err)
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 256)
			for {
				n, _, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				b.udp <- port + " " + string(buf[:n])
			}
		}()
	}
	return b, fw, m
}

func mustParseAddr(t *testing.T, s string) *netlink.Addr {
	a, err := netlink.ParseAddr(s)
	must(t, err)
	return a
}

func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		fmt.Fprintln(c, "hello")
		c.Close()
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// dial connects from the guest (or the host) and reads the greeting.
func (b *boundary) dial(from netns.NsHandle, target string) bool {
	ok := false
	b.in(from, func() {
		c, err := net.DialTimeout("tcp4", target, probeWait)
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(probeWait))
		buf := make([]byte, 16)
		n, _ := c.Read(buf)
		ok = strings.HasPrefix(string(buf[:n]), "hello")
	})
	return ok
}

// udpReached sends a datagram from the guest's kernel and reports whether
// the host's listener got it.
func (b *boundary) udpReached(port string) bool {
	marker := fmt.Sprintf("udp-%d", time.Now().UnixNano())
	b.in(b.guest, func() {
		c, err := net.Dial("udp4", gatewayIP+":"+port)
		must(b.t, err)
		defer c.Close()
		_, _ = c.Write([]byte(marker))
	})
	deadline := time.After(probeWait)
	for {
		select {
		case got := <-b.udp:
			if got == port+" "+marker {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// frameReached writes a raw frame on the guest's NIC and reports whether it
// came out of the guard onto the bridge (a sniffer on the bridge device sees
// everything the bridge passes up, before any hook of the bridge itself).
func (b *boundary) frameReached(frame, marker []byte) bool {
	s, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	must(b.t, err)
	defer unix.Close(s)
	must(b.t, unix.Bind(s, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: b.bridgeIf}))
	must(b.t, unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000}))
	must(b.t, unix.Sendto(b.raw, frame, 0, &unix.SockaddrLinklayer{Ifindex: b.guestIf, Halen: 6}))
	buf := make([]byte, 2048)
	for end := time.Now().Add(probeWait); time.Now().Before(end); {
		n, _, err := unix.Recvfrom(s, buf, 0)
		if err == nil && bytes.Contains(buf[:n], marker) {
			return true
		}
	}
	return false
}

// --- frame builders ---------------------------------------------------------

var bcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func eth(dst, src net.HardwareAddr, etype uint16, payload []byte) []byte {
	f := append(append(append([]byte{}, dst...), src...), byte(etype>>8), byte(etype))
	return append(f, payload...)
}

// tagged is eth with one VLAN tag (tpid 0x8100 or 0x88a8) before etype.
func tagged(dst, src net.HardwareAddr, tpid, vid, etype uint16, payload []byte) []byte {
	f := append(append(append([]byte{}, dst...), src...), byte(tpid>>8), byte(tpid), byte(vid>>8), byte(vid),
		byte(etype>>8), byte(etype))
	return append(f, payload...)
}

func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

func ipv4UDP(src, dst string, dport uint16, data []byte) []byte {
	udp := make([]byte, 8, 8+len(data))
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(data)))
	udp = append(udp, data...)
	h := make([]byte, 20)
	h[0], h[8], h[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(udp)))
	s4, d4 := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(h[12:], s4[:])
	copy(h[16:], d4[:])
	binary.BigEndian.PutUint16(h[10:], csum(h))
	return append(h, udp...)
}

func ipv6ICMP(src, dst string, hop byte, icmp []byte) []byte {
	s16, d16 := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	pseudo := append(append(append([]byte{}, s16[:]...), d16[:]...), 0, 0, byte(len(icmp)>>8), byte(len(icmp)), 0, 0, 0, 58)
	icmp = append([]byte{}, icmp...)
	binary.BigEndian.PutUint16(icmp[2:], csum(append(pseudo, icmp...)))
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(icmp)))
	h[6], h[7] = 58, hop
	copy(h[8:], s16[:])
	copy(h[24:], d16[:])
	return append(h, icmp...)
}

// routerAdvert announces 2001:db8:bad::/64 (autonomous) and a default route.
func routerAdvert(marker []byte) []byte {
	ra := []byte{134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0} // lifetime 1800 s
	pio := []byte{3, 4, 64, 0xc0, 0, 0, 0x0e, 0x10, 0, 0, 0x07, 0x08, 0, 0, 0, 0,
		0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xad, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	// A source link-layer option carrying the marker would be parsed; put it
	// in an unknown option (type 253, ignored by receivers) instead.
	opt := append([]byte{253, 3}, marker...)
	opt = append(opt, make([]byte, 24-len(opt))...)
	return append(append(ra, pio...), opt...)
}

func arp(sha net.HardwareAddr, spa string, tpa string, marker []byte) []byte {
	p := []byte{0, 1, 8, 0, 6, 4, 0, 1}
	s4, t4 := netip.MustParseAddr(spa).As4(), netip.MustParseAddr(tpa).As4()
	p = append(append(append(p, sha...), s4[:]...), 0, 0, 0, 0, 0, 0)
	p = append(p, t4[:]...)
	return append(p, marker...) // trailing bytes (Ethernet padding) carry the marker
}

// ipv6Learned lists what the host learnt over IPv6: global addresses and
// default routes.
func ipv6Learned(t *testing.T) []string {
	var out []string
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V6)
	must(t, err)
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() && !a.IP.IsLoopback() {
			out = append(out, "address "+a.IPNet.String())
		}
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V6)
	must(t, err)
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			out = append(out, fmt.Sprintf("default route via %v", r.Gw))
		}
	}
	return out
}

// frames runs every raw-frame probe and renders one line per probe: the text the
// test compares.
func (b *boundary) frames() string {
	t := b.t
	me, other := b.guestMAC, net.HardwareAddr{0x02, 0xba, 0x0a, 0x4d, 0x00, 0x63}
	var lines []string
	res := func(name string, reached bool) {
		lines = append(lines, fmt.Sprintf("%s: %s", name, map[bool]string{true: "reached", false: "blocked"}[reached]))
	}
	n := 0
	mark := func() []byte { n++; return []byte(fmt.Sprintf("banger-probe-%03d", n)) }

	// Controls: the guest's own IPv4 and ARP must pass the guard.
	m := mark()
	res("own ipv4 frame", b.frameReached(eth(bcastMAC, me, 0x0800, ipv4UDP(guestIP, "10.77.0.255", 9, m)), m))
	m = mark()
	res("own arp", b.frameReached(eth(bcastMAC, me, 0x0806, arp(me, guestIP, gatewayIP, m)), m))

	m = mark()
	res("ipv6 router advertisement", b.frameReached(eth(net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, me, 0x86dd,
		ipv6ICMP("fe80::ba:aff:fe4d:2", "ff02::1", 255, routerAdvert(m))), m))
	time.Sleep(300 * time.Millisecond) // SLAAC and the default route appear at once if accepted
	res("host learnt ipv6 address/route", len(ipv6Learned(t)) > 0)
	if l := ipv6Learned(t); len(l) > 0 {
		t.Logf("learnt from the guest's RA: %v", l)
	}
	m = mark()
	res("ipv6 frame", b.frameReached(eth(bcastMAC, me, 0x86dd, ipv6ICMP("fe80::ba:aff:fe4d:2", "ff02::1", 1,
		append([]byte{128, 0, 0, 0, 0, 1, 0, 1}, m...))), m))
	m = mark()
	res("vlan 802.1Q frame, own ipv4 inside", b.frameReached(tagged(bcastMAC, me, 0x8100, 7, 0x0800,
		ipv4UDP(guestIP, "10.77.0.255", 9, m)), m))
	m = mark()
	res("vlan 802.1Q priority tag, own ipv4 inside", b.frameReached(tagged(bcastMAC, me, 0x8100, 0, 0x0800,
		ipv4UDP(guestIP, "10.77.0.255", 9, m)), m))
	m = mark()
	res("vlan 802.1ad frame, own ipv4 inside", b.frameReached(tagged(bcastMAC, me, 0x88a8, 7, 0x0800,
		ipv4UDP(guestIP, "10.77.0.255", 9, m)), m))
	m = mark()
	res("other ethertype", b.frameReached(eth(bcastMAC, me, 0x88b5, m), m))
	m = mark()
	res("ipv4 spoofed source", b.frameReached(eth(bcastMAC, me, 0x0800, ipv4UDP("10.77.0.99", "10.77.0.255", 9, m)), m))
	m = mark()
	res("ipv4 spoofed mac", b.frameReached(eth(bcastMAC, other, 0x0800, ipv4UDP(guestIP, "10.77.0.255", 9, m)), m))
	m = mark()
	res("arp spoofed sender ip", b.frameReached(eth(bcastMAC, me, 0x0806, arp(me, "10.77.0.99", gatewayIP, m)), m))
	m = mark()
	res("arp spoofed sender mac", b.frameReached(eth(bcastMAC, me, 0x0806, arp(other, guestIP, gatewayIP, m)), m))

	return strings.Join(lines, "\n")
}

// services probes what the guest's own kernel reaches: host services and,
// through the uplink, destinations beyond NAT.
func (b *boundary) services() string {
	var lines []string
	res := func(name string, reached bool) {
		lines = append(lines, fmt.Sprintf("%s: %s", name, map[bool]string{true: "reached", false: "blocked"}[reached]))
	}
	res("tcp to host service on the gateway", b.dial(b.guest, fmt.Sprintf("%s:%d", gatewayIP, svcPort)))
	res("tcp to host service on another host interface", b.dial(b.guest, fmt.Sprintf("%s:%d", otherHost, svcPort)))
	res("tcp to host service on the uplink address", b.dial(b.guest, fmt.Sprintf("%s:%d", uplinkHost, svcPort)))
	res("udp to the gateway, port 5353", b.udpReached("5353"))
	res("dns over udp to the gateway", b.udpReached("53"))
	res("dns over tcp to the gateway", b.dial(b.guest, gatewayIP+":53"))
	res("beyond nat: public address", b.dial(b.guest, fmt.Sprintf("%s:%d", remotePub, svcPort)))
	res("beyond nat: private address", b.dial(b.guest, fmt.Sprintf("%s:%d", remotePriv, svcPort)))
	res("beyond nat: link-local metadata address", b.dial(b.guest, fmt.Sprintf("%s:%d", remoteMeta, svcPort)))
	res("beyond nat: azure wireserver", b.dial(b.guest, fmt.Sprintf("%s:%d", remoteWire, svcPort)))
	res("beyond nat: benchmarking address", b.dial(b.guest, fmt.Sprintf("%s:%d", remoteBench, svcPort)))
	res("beyond nat: ietf protocol assignment", b.dial(b.guest, fmt.Sprintf("%s:%d", remoteIETF, svcPort)))
	return strings.Join(lines, "\n")
}

// hostToGuest checks the host still reaches a guest service (the replies
// come back through the input chain as established traffic).
func (b *boundary) hostToGuest() bool {
	var ln net.Listener
	b.in(b.guest, func() {
		var err error
		ln, err = net.Listen("tcp4", fmt.Sprintf("%s:%d", guestIP, guestPort))
		must(b.t, err)
	})
	defer ln.Close()
	go serve(ln)
	return b.dial(b.host, fmt.Sprintf("%s:%d", guestIP, guestPort))
}

func TestGuestBoundary(t *testing.T) {
	b, fw, _ := newBoundary(t)
	ctx := context.Background()
	v := VMNet{ID: "g1", IP: netip.MustParseAddr(guestIP), MAC: b.guestMAC, Tap: "bgr-g1", NAT: true}
	must(t, fw.Apply(ctx, v))

	want := `own ipv4 frame: reached
own arp: reached
ipv6 router advertisement: blocked
host learnt ipv6 address/route: blocked
ipv6 frame: blocked
vlan 802.1Q frame, own ipv4 inside: blocked
vlan 802.1Q priority tag, own ipv4 inside: blocked
vlan 802.1ad frame, own ipv4 inside: blocked
other ethertype: blocked
ipv4 spoofed source: blocked
ipv4 spoofed mac: blocked
arp spoofed sender ip: blocked
arp spoofed sender mac: blocked`
	if got := b.frames(); got != want {
		t.Errorf("frames from the guest:\n%s\nwant:\n%s", got, want)
	}
	for _, c := range []struct {
		name string
		set  func(*VMNet)
		want string
	}{
		{"--nat", func(v *VMNet) {}, `tcp to host service on the gateway: blocked
tcp to host service on another host interface: blocked
tcp to host service on the uplink address: blocked
udp to the gateway, port 5353: blocked
dns over udp to the gateway: reached
dns over tcp to the gateway: reached
beyond nat: public address: reached
beyond nat: private address: blocked
beyond nat: link-local metadata address: blocked
beyond nat: azure wireserver: blocked
beyond nat: benchmarking address: blocked
beyond nat: ietf protocol assignment: blocked`},
		{"--nat --nat-private --host-access", func(v *VMNet) { v.NATPrivate, v.HostAccess = true, true },
			`tcp to host service on the gateway: reached
tcp to host service on another host interface: reached
tcp to host service on the uplink address: reached
udp to the gateway, port 5353: reached
dns over udp to the gateway: reached
dns over tcp to the gateway: reached
beyond nat: public address: reached
beyond nat: private address: reached
beyond nat: link-local metadata address: blocked
beyond nat: azure wireserver: blocked
beyond nat: benchmarking address: reached
beyond nat: ietf protocol assignment: reached`},
		{"no options", func(v *VMNet) { v.NAT = false }, `tcp to host service on the gateway: blocked
tcp to host service on another host interface: blocked
tcp to host service on the uplink address: blocked
udp to the gateway, port 5353: blocked
dns over udp to the gateway: reached
dns over tcp to the gateway: reached
beyond nat: public address: blocked
beyond nat: private address: blocked
beyond nat: link-local metadata address: blocked
beyond nat: azure wireserver: blocked
beyond nat: benchmarking address: blocked
beyond nat: ietf protocol assignment: blocked`},
	} {
		v := v
		c.set(&v)
		must(t, fw.Apply(ctx, v))
		if got := b.services(); got != c.want {
			t.Errorf("guest with %s:\n%s\nwant:\n%s", c.name, got, c.want)
		}
		if !b.hostToGuest() {
			t.Errorf("guest with %s: the host cannot reach the guest's service", c.name)
		}
	}
	// --nat-block: a public destination is off limits, with and without
	// --nat-private.
	fw.Cfg.ExtraBlocked = []netip.Prefix{netip.MustParsePrefix(remotePub + "/32")}
	for _, private := range []bool{false, true} {
		v.NAT, v.NATPrivate = true, private
		must(t, fw.Apply(ctx, v))
		if b.dial(b.guest, fmt.Sprintf("%s:%d", remotePub, svcPort)) {
			t.Errorf("--nat-block %s (nat-private %t): the guest reached it", remotePub, private)
		}
		if private != b.dial(b.guest, fmt.Sprintf("%s:%d", remotePriv, svcPort)) {
			t.Errorf("--nat-block %s (nat-private %t): private address reached: %t", remotePub, private, !private)
		}
	}
}

// sourcePortSeen connects from the guest to the remote, bound to source port
// sport, and returns the source port the remote saw (0: not reached).
func (b *boundary) sourcePortSeen(sport int) int {
	var ln net.Listener
	b.in(b.remote, func() {
		var err error
		ln, err = net.Listen("tcp4", net.JoinHostPort(remotePub, fmt.Sprint(svcPort+1)))
		must(b.t, err)
	})
	defer ln.Close()
	seen := make(chan int, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		seen <- c.RemoteAddr().(*net.TCPAddr).Port
		c.Close()
	}()
	b.in(b.guest, func() {
		d := net.Dialer{Timeout: probeWait, LocalAddr: &net.TCPAddr{IP: net.ParseIP(guestIP), Port: sport}}
		if c, err := d.Dial("tcp4", net.JoinHostPort(remotePub, fmt.Sprint(svcPort+1))); err == nil {
			c.Close()
		}
	})
	select {
	case p := <-seen:
		return p
	case <-time.After(probeWait):
		return 0
	}
}

// A guest (root in its VM) binding a reserved source port must not lend the
// host a reserved port beyond NAT.
func TestMasqueradeUnprivilegedPorts(t *testing.T) {
	b, fw, _ := newBoundary(t)
	must(t, fw.Apply(context.Background(),
		VMNet{ID: "g1", IP: netip.MustParseAddr(guestIP), MAC: b.guestMAC, Tap: "bgr-g1", NAT: true}))
	if b.sourcePortSeen(0) == 0 {
		t.Fatal("the remote was not reached through NAT from an ephemeral port")
	}
	if p := b.sourcePortSeen(700); p != 0 && p < 1024 {
		t.Fatalf("the remote saw source port %d for the guest's port 700, want none or >= 1024", p)
	}
}

// addRouted joins a new namespace to the host by a veth: host side hostCIDR,
// namespace side nsCIDR with a default route via the host; returns the namespace.
func (b *boundary) addRouted(name, hostCIDR, nsCIDR, gw string) netns.NsHandle {
	t := b.t
	ns := b.newNS()
	must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(ns)}))
	addr(t, name, hostCIDR)
	b.in(ns, func() {
		up(t, "lo")
		addr(t, "eth0", nsCIDR)
		l, _ := netlink.LinkByName("eth0")
		must(t, netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}))
	})
	return ns
}

// When banger switches ip_forward on, the host must not start routing
// between its other interfaces; a host that routed before keeps routing.
func TestForwardingOnlyForTheBridge(t *testing.T) {
	b, fw, _ := newBoundary(t)
	ctx := context.Background()
	lanA := b.addRouted("lana0", "10.98.1.1/24", "10.98.1.2/24", "10.98.1.1")
	lanB := b.addRouted("lanb0", "10.98.2.1/24", "10.98.2.2/24", "10.98.2.1")
	b.in(lanB, func() {
		ln, err := net.Listen("tcp4", fmt.Sprintf("10.98.2.2:%d", svcPort))
		must(t, err)
		t.Cleanup(func() { ln.Close() })
		go serve(ln)
	})
	v := VMNet{ID: "g1", IP: netip.MustParseAddr(guestIP), MAC: b.guestMAC, Tap: "bgr-g1", NAT: true}
	for _, c := range []struct {
		before, want string
	}{{"0", "blocked"}, {"1", "reached"}} {
		setIPForward(t, c.before)
		must(t, fw.Apply(ctx, v))
		if ipForward(t) != "1" {
			t.Fatal("ip_forward not switched on")
		}
		got := map[bool]string{true: "reached", false: "blocked"}[b.dial(lanA, fmt.Sprintf("10.98.2.2:%d", svcPort))]
		if got != c.want {
			t.Errorf("ip_forward was %s before banger: routing between two other host interfaces %s, want %s",
				c.before, got, c.want)
		}
		if !b.dial(b.guest, fmt.Sprintf("%s:%d", remotePub, svcPort)) {
			t.Errorf("ip_forward was %s before banger: the --nat guest lost its way out", c.before)
		}
		must(t, fw.Remove(ctx, v.ID, v.Tap))
	}
}
