package hostnet

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestAllocIP(t *testing.T) {
	p24 := netip.MustParsePrefix("172.30.0.0/24")
	cases := []struct {
		name   string
		subnet netip.Prefix
		used   []netip.Addr
		want   string
	}{
		{"empty", p24, nil, "172.30.0.2"},
		{"gateway in used is harmless", p24, addrs("172.30.0.1"), "172.30.0.2"},
		{"next", p24, addrs("172.30.0.2", "172.30.0.3"), "172.30.0.4"},
		{"gap", p24, addrs("172.30.0.2", "172.30.0.4", "172.30.0.5"), "172.30.0.3"},
		{"unordered", p24, addrs("172.30.0.3", "172.30.0.2"), "172.30.0.4"},
		{"v4-mapped used", p24, addrs("::ffff:172.30.0.2"), "172.30.0.3"},
		{"foreign addresses ignored", p24, addrs("10.0.0.2", "fe80::1"), "172.30.0.2"},
		{"unmasked subnet", netip.MustParsePrefix("172.30.0.77/24"), nil, "172.30.0.2"},
		{"/30 has one guest", netip.MustParsePrefix("10.9.0.4/30"), nil, "10.9.0.6"},
		{"/16 crosses a byte", netip.MustParsePrefix("10.1.0.0/16"), fill("10.1.0.2", 254), "10.1.1.0"},
	}
	for _, c := range cases {
		got, err := AllocIP(c.subnet, c.used)
		if err != nil || got.String() != c.want {
			t.Errorf("%s: AllocIP = %v, %v; want %s", c.name, got, err, c.want)
		}
	}
}

// fill returns n consecutive addresses from start.
func fill(start string, n int) []netip.Addr {
	a := netip.MustParseAddr(start)
	var out []netip.Addr
	for i := 0; i < n; i++ {
		out = append(out, a)
		a = a.Next()
	}
	return out
}

func TestAllocIPFull(t *testing.T) {
	p24 := netip.MustParsePrefix("172.30.0.0/24")
	used := fill("172.30.0.2", 253) // .2 .. .254
	if _, err := AllocIP(p24, used); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("full /24: %v, want ErrBusy", err)
	}
	// Freeing one address makes exactly that one available; never .255.
	got, err := AllocIP(p24, append(used[:100:100], used[101:]...))
	if err != nil || got != used[100] {
		t.Fatalf("one free: %v, %v want %v", got, err, used[100])
	}
	p30 := netip.MustParsePrefix("10.9.0.4/30")
	if _, err := AllocIP(p30, addrs("10.9.0.6")); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("full /30: %v", err)
	}
}

func TestAllocIPBadSubnet(t *testing.T) {
	for _, s := range []string{"10.0.0.0/31", "10.0.0.1/32", "fd00::/64"} {
		if _, err := AllocIP(netip.MustParsePrefix(s), nil); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", s, err)
		}
	}
	if _, err := AllocIP(netip.Prefix{}, nil); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("zero prefix: %v", err)
	}
}

func TestConfigDefaultsAndGateway(t *testing.T) {
	var c Config
	if g := c.Gateway(); g.String() != "172.30.0.1" {
		t.Fatalf("default gateway %s", g)
	}
	c = Config{Subnet: netip.MustParsePrefix("10.20.30.40/22")}
	if g := c.Gateway(); g.String() != "10.20.28.1" {
		t.Fatalf("gateway of /22 %s", g)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Config{
		{Bridge: "a/b"}, {Bridge: "bridge-name-too-long"}, {Bridge: "-x"}, {Bridge: "a b"},
		{Subnet: netip.MustParsePrefix("10.0.0.0/31")}, {Subnet: netip.MustParsePrefix("fd00::/64")},
	} {
		if err := bad.Validate(); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", bad, err)
		}
	}
}

func TestMACForIP(t *testing.T) {
	seen := map[string]string{}
	for _, s := range []string{"172.30.0.2", "172.30.0.3", "172.30.1.2", "10.0.0.2", "255.255.255.255", "0.0.0.0"} {
		ip := netip.MustParseAddr(s)
		mac := MACForIP(ip)
		if len(mac) != 6 {
			t.Fatalf("%s: %d bytes", s, len(mac))
		}
		if mac[0]&0x02 == 0 {
			t.Errorf("%s: %s not locally administered", s, mac)
		}
		if mac[0]&0x01 != 0 {
			t.Errorf("%s: %s is multicast", s, mac)
		}
		if prev, dup := seen[mac.String()]; dup {
			t.Errorf("%s and %s share %s", prev, s, mac)
		}
		seen[mac.String()] = s
	}
	if got := MACForIP(netip.MustParseAddr("172.30.0.2")).String(); got != "02:ba:ac:1e:00:02" {
		t.Errorf("mac = %s", got)
	}
	// Stable, and the v4-mapped form gives the same MAC.
	if MACForIP(netip.MustParseAddr("::ffff:172.30.0.2")).String() != "02:ba:ac:1e:00:02" {
		t.Error("v4-mapped address differs")
	}
	if m := MACForIP(netip.Addr{}); len(m) != 6 || m[0] != 0x02 {
		t.Errorf("zero addr: %s", m)
	}
}

func TestTapName(t *testing.T) {
	cases := map[string]string{
		"abc123":                  "bgr-abc123",
		"0123456789abcdef":        "bgr-0123456789a",
		"ABCdef":                  "bgr-abcdef",
		"a-b_c.d":                 "bgr-abcd",
		"../../etc":               "bgr-etc",
		"0f8e7c6a-1b2c-4d5e-8f90": "bgr-0f8e7c6a1b2",
	}
	for id, want := range cases {
		got := TapName(id)
		if got != want {
			t.Errorf("TapName(%q) = %q, want %q", id, got, want)
		}
		if len(got) > 15 {
			t.Errorf("TapName(%q) too long", id)
		}
		if err := ValidTapName(got); err != nil {
			t.Errorf("TapName(%q) = %q invalid: %v", id, got, err)
		}
	}
	for _, id := range []string{"", "---", "üéï", "//"} {
		if err := ValidTapName(TapName(id)); err == nil {
			t.Errorf("TapName(%q) = %q accepted", id, TapName(id))
		}
	}
}

func TestValidTapNameRejectsHostile(t *testing.T) {
	for _, n := range []string{"", "bgr-", "eth0", "banger0", "lo", "bgr-0123456789ab", "bgr-a/b", "bgr-a b",
		"bgr-..", "bgr-A", "bgr-a\x00", "bgr-a\n", "xbgr-a", "bgr-a-b", "bgr-%d", strings.Repeat("bgr-a", 10)} {
		if err := ValidTapName(n); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("ValidTapName(%q) = %v", n, err)
		}
	}
}
