package hostnet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// conntrackOf lists the IPv4 conntrack entries of the calling thread's
// namespace (the test's host) that involve ip in either direction, or with
// origOnly, whose original source is ip.
func conntrackOf(t *testing.T, ip string, origOnly bool) []string {
	t.Helper()
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		t.Fatalf("conntrack dump failed: the kernel needs nf_conntrack_netlink (modprobe nf_conntrack_netlink; "+
			"CONFIG_NF_CT_NETLINK) for banger to flush a removed VM's flows: %v", err)
	}
	a := net.ParseIP(ip)
	var out []string
	for _, f := range flows {
		if f.Forward.SrcIP.Equal(a) ||
			!origOnly && (f.Forward.DstIP.Equal(a) || f.Reverse.SrcIP.Equal(a) || f.Reverse.DstIP.Equal(a)) {
			out = append(out, fmt.Sprintf("%d %s:%d>%s:%d", f.Forward.Protocol, f.Forward.SrcIP, f.Forward.SrcPort,
				f.Forward.DstIP, f.Forward.DstPort))
		}
	}
	sort.Strings(out)
	return out
}

// guestFlows makes the guest's flows that leave conntrack entries: TCP
// through NAT to the remote, DNS over UDP to the gateway, TCP from the host
// to a guest service. It fails the test if any does not get through.
func (b *boundary) guestFlows() {
	b.t.Helper()
	if !b.dial(b.guest, fmt.Sprintf("%s:%d", remotePub, svcPort)) {
		b.t.Fatal("the --nat guest did not reach the remote")
	}
	if !b.udpReached("53") {
		b.t.Fatal("the guest's DNS query did not reach the gateway")
	}
	if !b.hostToGuest() {
		b.t.Fatal("the host did not reach the guest")
	}
}

// A VM's rules going takes its conntrack entries with them: a new VM on the
// same address must not inherit established flows or NAT mappings.
// Entries of other addresses stay.
func TestFirewallRemoveFlushesConntrack(t *testing.T) {
	b, fw, _ := newBoundary(t)
	ctx := context.Background()
	v := VMNet{ID: "g1", IP: netip.MustParseAddr(guestIP), MAC: b.guestMAC, Tap: "bgr-g1", NAT: true}
	// A flow of the host's own, to the remote: not the guest's. (Conntrack
	// starts in a namespace with the first ruleset that needs it.)
	must(t, fw.Apply(ctx, VMNet{ID: "x", IP: netip.MustParseAddr("10.77.0.9"), MAC: b.guestMAC, Tap: "bgr-g1"}))
	if !b.dial(b.host, fmt.Sprintf("%s:%d", remotePub, svcPort)) {
		t.Fatal("the host did not reach the remote")
	}
	other := conntrackOf(t, uplinkHost, true)
	if len(other) == 0 {
		t.Fatal("no conntrack entry for the host's own flow")
	}
	for _, c := range []struct {
		name   string
		remove func() error
	}{
		{"Remove", func() error { return fw.Remove(ctx, v.ID, v.Tap) }},
		{"Prune", func() error { return fw.Prune(ctx, nil) }},
		{"Apply of another VM on the address", func() error {
			w := v
			w.ID = "g2"
			return fw.Apply(ctx, w)
		}},
	} {
		must(t, fw.Apply(ctx, v))
		b.guestFlows()
		before := conntrackOf(t, guestIP, false)
		t.Logf("%s: before: %v", c.name, before)
		var orig, reply bool
		for _, e := range before {
			orig = orig || strings.Contains(e, " "+guestIP+":")
			reply = reply || strings.Contains(e, ">"+guestIP+":")
		}
		if !orig || !reply {
			t.Fatalf("%s: want entries from and to the guest before, have %v", c.name, before)
		}
		must(t, c.remove())
		if left := conntrackOf(t, guestIP, false); len(left) > 0 {
			t.Errorf("%s: conntrack entries of the guest's address left: %v (of %v)", c.name, left, before)
		}
		if got := conntrackOf(t, uplinkHost, true); len(got) < len(other) || got[0] != other[0] {
			t.Errorf("%s: the host's own entries went too: %v, had %v", c.name, got, other)
		}
		must(t, fw.Remove(ctx, "g2", ""))
	}
}
