package privileged

import (
	"fmt"
	"net/netip"
	"regexp"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/hostnet"
)

// vmIDRE is the form of a VM id (internal/vm newID: 12 lower-case hex).
var vmIDRE = regexp.MustCompile(`^[0-9a-f]{12}$`)

// Rules are what the helper accepts: banger's own naming and addressing,
// with the bridge and subnet from the helper's configuration, and the owner
// as the only uid a TAP may be handed to.
type Rules struct {
	Subnet netip.Prefix
	Owner  int
}

func refuse(format string, a ...any) error {
	return fmt.Errorf(format+": %w", append(a, api.ErrInvalid)...)
}

// PoolTap accepts only banger's pooled TAP names (bgr-p<N>): the only ones
// the helper creates or opens.
func (r Rules) PoolTap(name string) error {
	n, ok := hostnet.PoolTapIndex(name)
	if !ok {
		return refuse("tap %q: not a pooled banger tap (%s<N>)", name, hostnet.PoolTapPrefix)
	}
	// The pool hands out the lowest free index, so N stays near the number
	// of VMs; the cap keeps a caller from making links without end.
	if n >= MaxPoolTaps {
		return refuse("tap %q: index beyond the pool's %d", name, MaxPoolTaps)
	}
	return nil
}

// MaxPoolTaps bounds the pooled TAP index the helper accepts.
const MaxPoolTaps = 4096

// AnyTap also accepts the per-VM TAP names of older releases (hostnet.TapName),
// for removal only: a row may still name one.
func (r Rules) AnyTap(name string) error {
	if err := hostnet.ValidTapName(name); err != nil {
		return refuse("tap %q: not a banger tap", name)
	}
	return nil
}

// VMID accepts the form of a VM id.
func (r Rules) VMID(id string) error {
	if !vmIDRE.MatchString(id) {
		return refuse("vm id %q: want 12 lower-case hex digits", id)
	}
	return nil
}

// GuestIP accepts a host address of the subnet other than the gateway.
func (r Rules) GuestIP(ip netip.Addr) error {
	p := r.Subnet.Masked()
	if !p.Addr().Is4() {
		return refuse("helper subnet %v: want ipv4", p)
	}
	gw := p.Addr().Next()
	b := p.Addr().As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n |= 1<<(32-p.Bits()) - 1
	last := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	switch {
	case !ip.Is4():
		return refuse("ip %v: want ipv4", ip)
	case !p.Contains(ip):
		return refuse("ip %v: outside the subnet %v", ip, p)
	case ip == p.Addr() || ip == gw || ip == last:
		return refuse("ip %v: network, gateway or broadcast address of %v", ip, p)
	}
	return nil
}

// VMNet checks a firewall request: id, an address of the subnet, the MAC
// banger derives from it, a banger TAP.
func (r Rules) VMNet(v hostnet.VMNet) error {
	if err := r.VMID(v.ID); err != nil {
		return err
	}
	if err := r.GuestIP(v.IP); err != nil {
		return err
	}
	if want := hostnet.MACForIP(v.IP); v.MAC.String() != want.String() {
		return refuse("mac %v: banger derives %v from %v", v.MAC, want, v.IP)
	}
	return r.PoolTap(v.Tap)
}

// TapOwner accepts only the owner's uid: a TAP is never handed to anyone else.
func (r Rules) TapOwner(uid int) error {
	if uid != r.Owner {
		return refuse("tap owner uid %d: the helper serves uid %d only", uid, r.Owner)
	}
	return nil
}
