package agentinit

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestSplitCmdline(t *testing.T) {
	got := SplitCmdline(`console=ttyS0  rw foo="a b" "x y"=z  end` + "\n")
	want := []string{"console=ttyS0", "rw", "foo=a b", "x y=z", "end"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := SplitCmdline(`""`); !reflect.DeepEqual(got, []string{""}) {
		t.Fatalf("empty quotes: %q", got)
	}
}

func TestParseCmdline(t *testing.T) {
	c, err := ParseCmdline("console=ttyS0 rw net.ifnames=0 ip=172.31.99.2::172.31.99.1:255.255.255.0:vm1:eth0:off quiet banger.debug\n")
	if err != nil {
		t.Fatal(err)
	}
	want := Cmdline{
		Net: &NetConfig{
			Addr:     netip.MustParsePrefix("172.31.99.2/24"),
			Gateway:  netip.MustParseAddr("172.31.99.1"),
			Hostname: "vm1",
			Device:   "eth0",
		},
		Init:  "/sbin/init",
		Debug: true,
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %+v / %+v\nwant %+v / %+v", c, c.Net, want, want.Net)
	}

	c, err = ParseCmdline("init=/lib/systemd/systemd banger.debug=0")
	if err != nil || c.Init != "/lib/systemd/systemd" || c.Debug || c.Net != nil {
		t.Fatalf("got %+v, %v", c, err)
	}
	if _, err := ParseCmdline("init=sbin/init"); err == nil {
		t.Fatal("relative init accepted")
	}
}

func TestParseIP(t *testing.T) {
	cases := []struct {
		in   string
		want string // fmt of *NetConfig, or "nil", or "error"
	}{
		{"10.0.0.2::10.0.0.1:255.255.255.252::eth1:off", "10.0.0.2/30 gw 10.0.0.1 host  dev eth1"},
		{"10.0.0.2::::::", "10.0.0.2/24 gw invalid IP host  dev eth0"},
		{"10.0.0.2", "10.0.0.2/24 gw invalid IP host  dev eth0"},
		{"10.0.0.2::10.0.0.1:255.0.0.0:h:eth0:none:8.8.8.8", "10.0.0.2/8 gw 10.0.0.1 host h dev eth0"},
		{"10.0.0.2:::0.0.0.0::eth0:off", "10.0.0.2/0 gw invalid IP host  dev eth0"},
		{"dhcp", "nil"},
		{"off", "nil"},
		{"", "nil"},
		{"::::::dhcp", "nil"},
		{"10.0.0.2::10.0.0.1:255.255.255.0::eth0:dhcp", "nil"},
		{"10.0.0.300::::::", "error"},
		{"fe80::1::::::", "error"},
		{"10.0.0.2::gw:255.255.255.0::eth0:off", "error"},
		{"10.0.0.2::10.0.0.1:255.0.255.0::eth0:off", "error"},
		{"10.0.0.2::10.0.0.1:garbage::eth0:off", "error"},
		{"10.0.0.2::10.0.0.1:255.255.255.0::../../x:off", "error"},
		{"10.0.0.2::10.0.0.1:255.255.255.0::averyveryverylongname:off", "error"},
	}
	for _, c := range cases {
		n, err := ParseIP(c.in)
		got := "nil"
		switch {
		case err != nil:
			got = "error"
		case n != nil:
			got = fmt.Sprintf("%s gw %s host %s dev %s", n.Addr, n.Gateway, n.Hostname, n.Device)
		}
		if got != c.want {
			t.Errorf("ParseIP(%q) = %s (err %v), want %s", c.in, got, err, c.want)
		}
	}
}

func FuzzParseCmdline(f *testing.F) {
	f.Add("console=ttyS0 ip=172.31.99.2::172.31.99.1:255.255.255.0::eth0:off")
	f.Add(`init="/sbin/x y" banger.debug ip=::::::`)
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCmdline(s)
		if err != nil {
			return
		}
		if !strings.HasPrefix(c.Init, "/") {
			t.Fatalf("init %q not absolute", c.Init)
		}
		if n := c.Net; n != nil {
			if !n.Addr.Addr().Is4() || n.Device == "" || strings.Contains(n.Device, "/") || len(n.Device) > 15 {
				t.Fatalf("bad net config %+v", n)
			}
		}
	})
}
