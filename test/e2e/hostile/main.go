//go:build linux

// Command hostile is the misbehaving guest of the e2e hostile-guest
// scenario (test/e2e/hostile_test.go). The test builds it static
// (CGO_ENABLED=0) and copies it into a guest, where it crafts raw frames,
// probes host services, floods the serial console, listens under a hostile
// process name and serves a sparse-tar bomb in place of the guest's tar.
//
//	hostile frames GW_IP GW_MAC VICTIM_IP HOST_LL|- NONCE
//	hostile connect HOST:PORT SECONDS
//	hostile flood PATH SECONDS
//	hostile listen PORT
//	hostile sparsetar bundle|tip
//
// Every crafted frame carries "BHOSTILE:<kind>:<nonce>" so a capture on the
// host can tell which of them got past the guest's TAP.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: hostile frames|connect|flood|listen|sparsetar ...")
	}
	var err error
	switch a := os.Args[2:]; os.Args[1] {
	case "frames":
		err = frames(a)
	case "connect":
		err = connect(a)
	case "flood":
		err = flood(a)
	case "listen":
		err = listen(a)
	case "sparsetar":
		err = sparseTar(a)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "hostile:", msg)
	os.Exit(1)
}

// --- raw frames ----------------------------------------------------------------

const (
	etIPv4 = 0x0800
	etARP  = 0x0806
	etVLAN = 0x8100
	etIPv6 = 0x86dd
	etExp  = 0x88b5 // IEEE local experimental
)

type frame struct {
	kind string
	dst  net.HardwareAddr
	data []byte
}

func frames(a []string) error {
	if len(a) != 5 {
		return errors.New("frames GW_IP GW_MAC VICTIM_IP HOST_LL|- NONCE")
	}
	gw := net.ParseIP(a[0]).To4()
	gwMAC, err := net.ParseMAC(a[1])
	if err != nil {
		return err
	}
	victim := net.ParseIP(a[2]).To4()
	nonce := a[4]
	ifc, err := net.InterfaceByName("eth0")
	if err != nil {
		return err
	}
	own := ifc.HardwareAddr
	ownIP, err := ipv4Of(ifc)
	if err != nil {
		return err
	}
	mark := func(kind string) []byte { return []byte("BHOSTILE:" + kind + ":" + nonce) }
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	allNodes := net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
	fakeMAC := net.HardwareAddr{0x02, 0xde, 0xad, 0xbe, 0xef, 0x01}
	ll := linkLocal(own)
	ff02 := net.ParseIP("ff02::1")

	fs := []frame{
		// The control: the guest's own MAC and IPv4, which every guard allows.
		{"control", gwMAC, eth(gwMAC, own, etIPv4, ipv4UDP(ownIP, gw, 5555, mark("control")))},
		{"spoof-ip", gwMAC, eth(gwMAC, own, etIPv4, ipv4UDP(victim, gw, 5555, mark("spoof-ip")))},
		{"spoof-ip-gw", gwMAC, eth(gwMAC, own, etIPv4, ipv4UDP(gw, gw, 5555, mark("spoof-ip-gw")))},
		{"spoof-mac", gwMAC, eth(gwMAC, fakeMAC, etIPv4, ipv4UDP(ownIP, gw, 5555, mark("spoof-mac")))},
		// Gratuitous ARP for the gateway and for the victim, and a unicast
		// reply telling the host the victim's address is ours.
		{"arp-gw", bcast, eth(bcast, own, etARP, arp(1, own, gw, bcast, gw, mark("arp-gw")))},
		{"arp-victim", bcast, eth(bcast, own, etARP, arp(1, own, victim, bcast, victim, mark("arp-victim")))},
		{"arp-reply-victim", gwMAC, eth(gwMAC, own, etARP, arp(2, own, victim, gwMAC, gw, mark("arp-reply-victim")))},
		{"vlan", gwMAC, vlanFrame(gwMAC, own, 42, etIPv4, ipv4UDP(ownIP, gw, 5555, mark("vlan")))},
		{"ethertype", bcast, eth(bcast, own, etExp, mark("ethertype"))},
		{"ipv6-mcast", allNodes, eth(allNodes, own, etIPv6, ipv6(ll, ff02, 17, 64, udp6(ll, ff02, 5556, mark("ipv6-mcast"))))},
		{"ra", allNodes, eth(allNodes, own, etIPv6, ipv6(ll, ff02, 58, 255, routerAdvert(ll, ff02, own, mark("ra"))))},
	}
	if a[3] != "-" {
		hostLL := net.ParseIP(a[3])
		fs = append(fs, frame{"ipv6-unicast", gwMAC, eth(gwMAC, own, etIPv6, ipv6(ll, hostLL, 17, 64, udp6(ll, hostLL, 5556, mark("ipv6-unicast"))))})
	}
	fs = append(fs, fs[0]) // the control again, last

	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	for round := 0; round < 3; round++ {
		for _, f := range fs {
			sa := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}
			copy(sa.Addr[:], f.dst)
			if err := unix.Sendto(fd, f.data, 0, sa); err != nil {
				return fmt.Errorf("send %s: %w", f.kind, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var kinds []string
	for _, f := range fs[:len(fs)-1] {
		kinds = append(kinds, f.kind)
	}
	fmt.Println("sent", strings.Join(kinds, " "))
	return nil
}

func ipv4Of(ifc *net.Interface) (net.IP, error) {
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.To4(), nil
		}
	}
	return nil, fmt.Errorf("%s has no ipv4 address", ifc.Name)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// linkLocal is the EUI-64 fe80:: address of mac.
func linkLocal(mac net.HardwareAddr) net.IP {
	ip := make(net.IP, 16)
	ip[0], ip[1] = 0xfe, 0x80
	ip[8], ip[9], ip[10] = mac[0]^2, mac[1], mac[2]
	ip[11], ip[12] = 0xff, 0xfe
	ip[13], ip[14], ip[15] = mac[3], mac[4], mac[5]
	return ip
}

func eth(dst, src net.HardwareAddr, etype uint16, payload []byte) []byte {
	b := append(append([]byte{}, dst...), src...)
	b = binary.BigEndian.AppendUint16(b, etype)
	return append(b, payload...)
}

func vlanFrame(dst, src net.HardwareAddr, vid, etype uint16, payload []byte) []byte {
	b := append(append([]byte{}, dst...), src...)
	b = binary.BigEndian.AppendUint16(b, etVLAN)
	b = binary.BigEndian.AppendUint16(b, vid&0x0fff)
	b = binary.BigEndian.AppendUint16(b, etype)
	return append(b, payload...)
}

func csum(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func ipv4UDP(src, dst net.IP, port uint16, payload []byte) []byte {
	udp := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], port)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	udp = append(udp, payload...) // checksum 0: none, valid over IPv4
	h := make([]byte, 20)
	h[0], h[8], h[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(udp)))
	copy(h[12:], src.To4())
	copy(h[16:], dst.To4())
	binary.BigEndian.PutUint16(h[10:], fold(csum(0, h)))
	return append(h, udp...)
}

func arp(op uint16, sha net.HardwareAddr, spa net.IP, tha net.HardwareAddr, tpa net.IP, trailer []byte) []byte {
	b := []byte{0, 1, 8, 0, 6, 4}
	b = binary.BigEndian.AppendUint16(b, op)
	b = append(b, sha...)
	b = append(b, spa.To4()...)
	b = append(b, tha...)
	b = append(b, tpa.To4()...)
	return append(b, trailer...) // ARP ignores what follows its 28 bytes
}

func pseudo6(src, dst net.IP, nh byte, n int) uint32 {
	p := append(append([]byte{}, src.To16()...), dst.To16()...)
	p = binary.BigEndian.AppendUint32(p, uint32(n))
	p = append(p, 0, 0, 0, nh)
	return csum(0, p)
}

func ipv6(src, dst net.IP, nh, hop byte, payload []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6], h[7] = nh, hop
	copy(h[8:], src.To16())
	copy(h[24:], dst.To16())
	return append(h, payload...)
}

func udp6(src, dst net.IP, port uint16, payload []byte) []byte {
	u := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], port)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	u = append(u, payload...)
	binary.BigEndian.PutUint16(u[6:], fold(csum(pseudo6(src, dst, 17, len(u)), u)))
	return u
}

// routerAdvert offers 2001:db8:bad::/64 for SLAAC and the sender as the
// default router for half an hour. The marker rides in an option of an
// experimental type (253), which receivers ignore.
func routerAdvert(src, dst net.IP, mac net.HardwareAddr, marker []byte) []byte {
	m := []byte{134, 0, 0, 0, 64, 0}
	m = binary.BigEndian.AppendUint16(m, 1800) // router lifetime
	m = append(m, 0, 0, 0, 0, 0, 0, 0, 0)      // reachable, retrans
	// Prefix information: L and A set, valid/preferred 1 day.
	m = append(m, 3, 4, 64, 0xc0)
	m = binary.BigEndian.AppendUint32(m, 86400)
	m = binary.BigEndian.AppendUint32(m, 86400)
	m = append(m, 0, 0, 0, 0)
	m = append(m, net.ParseIP("2001:db8:bad::").To16()...)
	// Source link-layer address.
	m = append(m, 1, 1)
	m = append(m, mac...)
	// The marker, padded to a multiple of 8.
	opt := append([]byte{253, 0}, marker...)
	for len(opt)%8 != 0 {
		opt = append(opt, 0)
	}
	opt[1] = byte(len(opt) / 8)
	m = append(m, opt...)
	binary.BigEndian.PutUint16(m[2:], fold(csum(pseudo6(src, dst, 58, len(m)), m)))
	return m
}

// --- probes ------------------------------------------------------------------

// connect dials addr and prints the first line the server sends.
func connect(a []string) error {
	if len(a) != 2 {
		return errors.New("connect HOST:PORT SECONDS")
	}
	secs, err := strconv.Atoi(a[1])
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", a[0], time.Duration(secs)*time.Second)
	if err != nil {
		return fmt.Errorf("connect %s: %w", a[0], err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(time.Duration(secs) * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Printf("connected %s %s\n", a[0], strings.TrimSpace(line))
	return nil
}

// flood writes to path (the serial console) as fast as it takes it for the
// given time, then prints how many bytes went in.
func flood(a []string) error {
	if len(a) != 2 {
		return errors.New("flood PATH SECONDS")
	}
	secs, err := strconv.Atoi(a[1])
	if err != nil {
		return err
	}
	f, err := os.OpenFile(a[0], os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	line := []byte(strings.Repeat("FLOOD", 15) + "\n")
	chunk := make([]byte, 0, 64<<10)
	for len(chunk)+len(line) <= cap(chunk) {
		chunk = append(chunk, line...)
	}
	var n int64
	done := make(chan struct{})
	deadline := time.Now().Add(time.Duration(secs) * time.Second)
	go func() {
		defer close(done)
		for time.Now().Before(deadline) {
			w, err := f.Write(chunk)
			n += int64(w)
			if err != nil {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Duration(secs+5) * time.Second):
	}
	fmt.Println("flooded", n)
	os.Exit(0) // a writer blocked on the tty must not keep us alive
	return nil
}

func listen(a []string) error {
	if len(a) != 1 {
		return errors.New("listen PORT")
	}
	ln, err := net.Listen("tcp", ":"+a[0])
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		c.Close()
	}
}

// --- sparse tar bomb -----------------------------------------------------------

// sparseTar writes, in place of the pull script's `tar -c`, an archive whose
// entries are PAX 1.0 sparse files (GNU.sparse.* records; readers see them as
// regular files): one block of data on the wire, a logical size of
// gigabytes. "bundle" aims at the host's disk, "tip" at its heap.
func sparseTar(a []string) error {
	if len(a) != 1 {
		return errors.New("sparsetar bundle|tip")
	}
	w := bufio.NewWriter(os.Stdout)
	switch a[0] {
	case "bundle":
		tip := strings.Repeat("ab", 20) + "\n"
		writeEntry(w, "tip", []byte(tip))
		writeEntry(w, "count", []byte("1\n"))
		writeSparse(w, "bundle", 5<<30)
	case "tip":
		writeSparse(w, "tip", 768<<20)
		writeEntry(w, "count", []byte("1\n"))
	default:
		return fmt.Errorf("sparsetar: unknown mode %q", a[0])
	}
	w.Write(make([]byte, 1024)) // end of archive
	return w.Flush()
}

func octal(b []byte, v int64) {
	s := strconv.FormatInt(v, 8)
	for len(s) < len(b)-1 {
		s = "0" + s
	}
	copy(b, s)
	b[len(b)-1] = 0
}

func header(name string, typ byte, size int64) []byte {
	h := make([]byte, 512)
	copy(h[0:100], name)
	octal(h[100:108], 0o644)
	octal(h[108:116], 0)
	octal(h[116:124], 0)
	octal(h[124:136], size)
	octal(h[136:148], time.Now().Unix())
	h[156] = typ
	copy(h[257:265], "ustar\x0000")
	copy(h[265:], "root")
	copy(h[297:], "root")
	copy(h[148:156], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	s := strconv.FormatInt(sum, 8)
	for len(s) < 6 {
		s = "0" + s
	}
	copy(h[148:], s+"\x00 ")
	return h
}

func pad(n int) []byte { return make([]byte, (512-n%512)%512) }

func writeEntry(w *bufio.Writer, name string, data []byte) {
	w.Write(header(name, '0', int64(len(data))))
	w.Write(data)
	w.Write(pad(len(data)))
}

// paxRecord is "<len> key=value\n", len counting itself.
func paxRecord(k, v string) string {
	body := " " + k + "=" + v + "\n"
	n := len(body) + 1
	for len(strconv.Itoa(n))+len(body) != n {
		n++
	}
	return strconv.Itoa(n) + body
}

// writeSparse: one 512-byte data block at the very end, the rest a hole.
func writeSparse(w *bufio.Writer, name string, logical int64) {
	pax := paxRecord("GNU.sparse.major", "1") + paxRecord("GNU.sparse.minor", "0") +
		paxRecord("GNU.sparse.name", name) + paxRecord("GNU.sparse.realsize", strconv.FormatInt(logical, 10))
	w.Write(header("PaxHeaders/"+name, 'x', int64(len(pax))))
	w.Write([]byte(pax))
	w.Write(pad(len(pax)))
	// Data: the sparse map (entries, then offset/size pairs, in decimal),
	// padded to a block, then the data blocks.
	smap := fmt.Sprintf("1\n%d\n512\n", logical-512)
	smap += string(pad(len(smap)))
	w.Write(header("GNUSparseFile.0/"+name, '0', int64(len(smap)+512)))
	w.Write([]byte(smap))
	w.Write([]byte(strings.Repeat("z", 511) + "\n"))
}
