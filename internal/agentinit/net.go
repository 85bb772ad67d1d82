package agentinit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ConfigureNet brings up lo and cfg.Device with the static address, the
// default route via the gateway, and announces the address with one
// gratuitous ARP (the host may hold a stale neighbour entry for a reused IP).
// wait bounds how long to wait for the device to appear.
func ConfigureNet(cfg *NetConfig, wait time.Duration) error {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo)
	}
	var link netlink.Link
	deadline := time.Now().Add(wait)
	for {
		var err error
		link, err = netlink.LinkByName(cfg.Device)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("device %s: %w", cfg.Device, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   net.IP(cfg.Addr.Addr().AsSlice()),
		Mask: net.CIDRMask(cfg.Addr.Bits(), 32),
	}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", cfg.Addr, cfg.Device, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("link %s up: %w", cfg.Device, err)
	}
	if cfg.Gateway.IsValid() {
		route := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Gw:        net.IP(cfg.Gateway.AsSlice()),
			Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("default route via %s: %w", cfg.Gateway, err)
		}
	}
	if err := SendGratuitousARP(link.Attrs().Index, link.Attrs().HardwareAddr, cfg.Addr.Addr()); err != nil {
		return fmt.Errorf("gratuitous arp: %w", err)
	}
	return nil
}

// GratuitousARP builds an ARP request announcing ip at mac (sender and
// target address both ip), without the Ethernet header.
func GratuitousARP(mac net.HardwareAddr, ip netip.Addr) ([]byte, error) {
	if len(mac) != 6 || !ip.Is4() {
		return nil, errors.New("need a 6-byte MAC and an IPv4 address")
	}
	p := make([]byte, 28)
	binary.BigEndian.PutUint16(p[0:], 1)      // htype Ethernet
	binary.BigEndian.PutUint16(p[2:], 0x0800) // ptype IPv4
	p[4], p[5] = 6, 4
	binary.BigEndian.PutUint16(p[6:], 1) // request
	copy(p[8:], mac)
	a := ip.As4()
	copy(p[14:], a[:])
	// target MAC stays zero
	copy(p[24:], a[:])
	return p, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// SendGratuitousARP broadcasts one gratuitous ARP on the interface.
func SendGratuitousARP(ifindex int, mac net.HardwareAddr, ip netip.Addr) error {
	pkt, err := GratuitousARP(mac, ip)
	if err != nil {
		return err
	}
	// SOCK_DGRAM: the kernel adds the Ethernet header for the given address.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrLinklayer{
		Protocol: htons(unix.ETH_P_ARP),
		Ifindex:  ifindex,
		Halen:    6,
		Addr:     [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	}
	return unix.Sendto(fd, pkt, 0, sa)
}
