// Package agentinit is banger-agent's init mode: PID 1 of banger's generated
// initramfs. It loads the virtio modules, configures eth0 from ip=, finds the
// root, work and seed disks by content, unpacks the seed, and switches root.
package agentinit

import (
	"fmt"
	"net/netip"
	"strings"
)

// The initramfs contract shared with internal/kernel.
const (
	ModuleDir   = "/lib/modules"        // modules, named <name>.ko
	ModuleList  = "/etc/banger/modules" // absolute module paths in load order, one per line
	NewRoot     = "/newroot"
	DefaultInit = "/sbin/init"
)

// NetConfig is the parsed kernel ip= parameter.
type NetConfig struct {
	Addr     netip.Prefix // guest address with mask length
	Gateway  netip.Addr   // invalid when absent
	Hostname string
	Device   string
}

// Cmdline is what init needs from /proc/cmdline.
type Cmdline struct {
	Net   *NetConfig // nil when no usable ip= was given
	Init  string     // init= override, DefaultInit otherwise
	Debug bool       // banger.debug
}

// SplitCmdline splits a kernel command line into words, honoring double
// quotes the way the kernel does (quotes group, and are removed).
func SplitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// ParseCmdline parses a kernel command line. A malformed ip= is an error:
// booting on without the network the host expects would only fail later
// and more obscurely.
func ParseCmdline(s string) (Cmdline, error) {
	c := Cmdline{Init: DefaultInit}
	for _, w := range SplitCmdline(s) {
		k, v, _ := strings.Cut(w, "=")
		switch k {
		case "ip":
			n, err := ParseIP(v)
			if err != nil {
				return c, err
			}
			c.Net = n
		case "init":
			if !strings.HasPrefix(v, "/") {
				return c, fmt.Errorf("init=%q: must be an absolute path", v)
			}
			c.Init = v
		case "banger.debug":
			c.Debug = v == "" || v == "1" || v == "true" || v == "on"
		}
	}
	return c, nil
}

// ParseIP parses client:server:gw:netmask:hostname:device:autoconf (the
// kernel's nfsroot ip= syntax). Autoconf values other than off/none and
// empty client addresses (dhcp) yield nil: init only does static setup.
func ParseIP(v string) (*NetConfig, error) {
	switch v {
	case "", "off", "none", "dhcp", "on", "any", "bootp", "rarp", "both":
		return nil, nil
	}
	f := strings.Split(v, ":")
	if len(f) > 7 {
		// ip= may carry DNS servers after autoconf; ignore them.
		f = f[:7]
	}
	for len(f) < 7 {
		f = append(f, "")
	}
	if f[0] == "" {
		return nil, nil
	}
	if a := f[6]; a != "" && a != "off" && a != "none" {
		return nil, nil
	}
	addr, err := netip.ParseAddr(f[0])
	if err != nil || !addr.Is4() {
		return nil, fmt.Errorf("ip=%q: bad client address %q", v, f[0])
	}
	bits := 24
	if f[3] != "" {
		mask, err := netip.ParseAddr(f[3])
		if err != nil || !mask.Is4() {
			return nil, fmt.Errorf("ip=%q: bad netmask %q", v, f[3])
		}
		b, ok := maskBits(mask.As4())
		if !ok {
			return nil, fmt.Errorf("ip=%q: non-contiguous netmask %q", v, f[3])
		}
		bits = b
	}
	n := &NetConfig{Addr: netip.PrefixFrom(addr, bits), Hostname: f[4], Device: f[5]}
	if n.Device == "" {
		n.Device = "eth0"
	}
	if strings.ContainsAny(n.Device, "/\x00") || len(n.Device) > 15 {
		return nil, fmt.Errorf("ip=%q: bad device %q", v, n.Device)
	}
	if f[2] != "" {
		gw, err := netip.ParseAddr(f[2])
		if err != nil || !gw.Is4() {
			return nil, fmt.Errorf("ip=%q: bad gateway %q", v, f[2])
		}
		n.Gateway = gw
	}
	return n, nil
}

func maskBits(m [4]byte) (int, bool) {
	v := uint32(m[0])<<24 | uint32(m[1])<<16 | uint32(m[2])<<8 | uint32(m[3])
	bits := 0
	for v&0x80000000 != 0 {
		bits++
		v <<= 1
	}
	return bits, v == 0
}
