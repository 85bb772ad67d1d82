package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// flushConntrackLocked deletes the IPv4 conntrack entries that involve any
// of ips, in either direction (original source or destination, reply
// source or destination: the masqueraded and the DNATed forms), in the
// namespace the firewall programs. A VM's rules going is not enough: the
// next VM on the address would inherit its established flows (accepted by
// "ct state established" as replies) and its NAT mappings.
func (f *Firewall) flushConntrackLocked(ips map[netip.Addr]bool) error {
	if len(ips) == 0 {
		return nil
	}
	ns := netns.None()
	if f.NetNSFd > 0 {
		ns = netns.NsHandle(f.NetNSFd)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		f.log().Warn("firewall: conntrack netlink unavailable; stale flows remain until they expire", "err", err)
		return nil
	}
	defer h.Close()
	var filters []netlink.CustomConntrackFilter
	var list []string
	for ip := range ips {
		if !ip.Is4() {
			continue
		}
		one := &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}
		for _, tp := range []netlink.ConntrackFilterType{netlink.ConntrackOrigSrcIP, netlink.ConntrackOrigDstIP,
			netlink.ConntrackReplyAnyIP} {
			flt := &netlink.ConntrackFilter{}
			if err := flt.AddIPNet(tp, one); err != nil {
				return fmt.Errorf("firewall: conntrack filter %s: %w", ip, err)
			}
			filters = append(filters, flt)
		}
		list = append(list, ip.String())
	}
	sort.Strings(list)
	n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filters...)
	if err != nil && errors.Is(err, netlink.ErrDumpInterrupted) {
		// Entries came and went during the dump: once more for those missed.
		var m uint
		m, err = h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filters...)
		n += m
	}
	if err != nil {
		// Best effort: a host whose conntrack netlink is missing and cannot
		// be loaded (nfnetlink answers EINVAL for an unknown subsystem; a
		// unit with ProtectKernelModules= cannot autoload it) must still
		// be able to remove a VM's rules. The next VM on the address may
		// then meet the old flows until they time out: said loudly.
		f.log().Warn("firewall: cannot flush conntrack entries; stale flows of the address remain until they expire",
			"ips", list, "err", err)
		return nil
	}
	if n > 0 {
		f.log().Info("firewall: conntrack entries flushed", "ips", list, "entries", n)
	}
	return nil
}
