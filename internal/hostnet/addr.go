package hostnet

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"github.com/banger-dev/banger/internal/api"
)

// Defaults of Config.
const (
	DefaultBridge = "banger0"
	TapPrefix     = "bgr-"
	maxIfName     = 15 // IFNAMSIZ minus the NUL
)

// DefaultSubnet is the guest subnet when none is configured.
var DefaultSubnet = netip.MustParsePrefix("172.30.0.0/24")

var (
	ifNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)
	tapRE    = regexp.MustCompile(`^bgr-[a-z0-9]{1,11}$`)
)

// Config is the host side of the guest network.
type Config struct {
	Bridge string       // default "banger0"
	Subnet netip.Prefix // default 172.30.0.0/24; the gateway is its first host
	// ExtraBlocked are IPv4 destinations no NAT guest reaches, with or
	// without --nat-private, on top of the built-in ones (link-local and
	// the cloud metadata addresses): a site's own metadata or control-plane
	// services in public space (bangerd and the helper: --nat-block).
	ExtraBlocked []netip.Prefix
}

func (c Config) withDefaults() Config {
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	c.Subnet = c.Subnet.Masked()
	return c
}

// Validate checks the bridge name and that the subnet is IPv4 with room for
// a gateway and at least one guest.
func (c Config) Validate() error {
	c = c.withDefaults()
	if !ifNameRE.MatchString(c.Bridge) {
		return fmt.Errorf("bridge name %q: %w", c.Bridge, api.ErrInvalid)
	}
	for _, p := range c.ExtraBlocked {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("blocked destination %s: want an ipv4 prefix: %w", p, api.ErrInvalid)
		}
	}
	return checkSubnet(c.Subnet)
}

// ParseBlocked parses a comma-separated list of IPv4 CIDRs (a bare address
// is a /32) for Config.ExtraBlocked; empty gives none.
func ParseBlocked(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return nil, fmt.Errorf("blocked destination %q: want an ipv4 CIDR: %w", f, api.ErrInvalid)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if !p.Addr().Is4() {
			return nil, fmt.Errorf("blocked destination %q: want an ipv4 CIDR: %w", f, api.ErrInvalid)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Gateway is the bridge's address: the first host of the subnet.
func (c Config) Gateway() netip.Addr {
	return c.withDefaults().Subnet.Addr().Next()
}

func checkSubnet(p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("subnet %s: want ipv4: %w", p, api.ErrInvalid)
	}
	if p.Bits() > 30 {
		return fmt.Errorf("subnet %s: no room for gateway and guest: %w", p, api.ErrInvalid)
	}
	return nil
}

// AllocIP returns the lowest free guest address of subnet: from the second
// host up, skipping the gateway (first host), the network and the broadcast
// address. A full subnet is an error wrapping api.ErrBusy.
func AllocIP(subnet netip.Prefix, used []netip.Addr) (netip.Addr, error) {
	if err := checkSubnet(subnet); err != nil {
		return netip.Addr{}, err
	}
	subnet = subnet.Masked()
	taken := make(map[netip.Addr]bool, len(used))
	for _, u := range used {
		taken[u.Unmap()] = true
	}
	bcast := broadcast(subnet)
	for a := subnet.Addr().Next().Next(); a.IsValid() && a.Less(bcast); a = a.Next() {
		if !taken[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("subnet %s: no free address: %w", subnet, api.ErrBusy)
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// MACForIP derives the guest MAC from its IPv4 address (02:ba:a:b:c:d):
// locally administered, unicast, and stable, so a reused IP comes back with
// the same MAC and neighbour caches stay valid. For an IPv6 address the low
// four bytes are used.
func MACForIP(ip netip.Addr) net.HardwareAddr {
	b := ip.Unmap().AsSlice()
	if len(b) < 4 {
		b = make([]byte, 4)
	}
	b = b[len(b)-4:]
	return net.HardwareAddr{0x02, 0xba, b[0], b[1], b[2], b[3]}
}

// TapName is the TAP device name of a VM: "bgr-" plus up to 11 lower-case
// alphanumerics of its id (IFNAMSIZ allows 15). Other characters of the id
// are dropped; an id with none left yields a name ValidTapName rejects.
func TapName(vmID string) string {
	var b strings.Builder
	b.WriteString(TapPrefix)
	for _, r := range strings.ToLower(vmID) {
		if b.Len() == maxIfName {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// ValidTapName accepts only names TapName can produce, so banger never
// creates, takes over or deletes an interface it does not own.
func ValidTapName(name string) error {
	if !tapRE.MatchString(name) {
		return fmt.Errorf("tap name %q: want %s followed by 1-11 of [a-z0-9]: %w", name, TapPrefix, api.ErrInvalid)
	}
	return nil
}
