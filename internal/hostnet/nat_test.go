package hostnet

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/system"
)

// nftRuleset prints the ruleset of the calling (locked) thread's namespace
// with the nft CLI, handles stripped: the text the tests compare.
func nftRuleset(t *testing.T) string {
	t.Helper()
	nsPath := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
	out, err := system.Exec{}.Run(context.Background(), "nsenter", "--net="+nsPath, "nft", "list", "ruleset")
	if err != nil {
		t.Fatalf("nft list ruleset: %v", err)
	}
	return strings.TrimSpace(string(out))
}

var spaceRE = regexp.MustCompile(`[ \t]+`)

func normalize(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(spaceRE.ReplaceAllString(l, " "))
		if l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func testFirewall(t *testing.T) (*Firewall, *Manager) {
	t.Helper()
	inNewNetns(t)
	if _, err := system.LookPath("nft"); err != nil {
		t.Skip("nft not installed")
	}
	h, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	m := testManager()
	if err := m.EnsureBridge(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &Firewall{Cfg: m.Cfg, NetNSFd: int(h)}, m
}

func vmNet(id, ip, tap string, nat bool) VMNet {
	a := netip.MustParseAddr(ip)
	return VMNet{ID: id, IP: a, MAC: MACForIP(a), Tap: tap, NAT: nat}
}

const wantTwoVMs = `
table ip banger {
chain forward {
type filter hook forward priority filter; policy accept;
iifname "bgtest0" ip saddr 10.77.0.2 accept comment "banger vm=aaa"
iifname "bgtest0" oifname "bgtest0" accept comment "banger base"
oifname "bgtest0" ct state established,related accept comment "banger base"
oifname "bgtest0" drop comment "banger base"
iifname "bgtest0" drop comment "banger base"
}
chain postrouting {
type nat hook postrouting priority srcnat; policy accept;
ip saddr 10.77.0.2 oifname != "bgtest0" masquerade comment "banger vm=aaa"
}
}
table netdev banger {
chain guard-bgr-aaa {
type filter hook ingress device "bgr-aaa" priority filter; policy accept;
ether saddr != 02:ba:0a:4d:00:02 drop comment "banger vm=aaa"
ip saddr != 10.77.0.2 drop comment "banger vm=aaa"
arp saddr ether != 02:ba:0a:4d:00:02 drop comment "banger vm=aaa"
arp saddr ip != 10.77.0.2 drop comment "banger vm=aaa"
}
chain guard-bgr-bbb {
type filter hook ingress device "bgr-bbb" priority filter; policy accept;
ether saddr != 02:ba:0a:4d:00:03 drop comment "banger vm=bbb"
ip saddr != 10.77.0.3 drop comment "banger vm=bbb"
arp saddr ether != 02:ba:0a:4d:00:03 drop comment "banger vm=bbb"
arp saddr ip != 10.77.0.3 drop comment "banger vm=bbb"
}
}`

func TestFirewallApplyRemove(t *testing.T) {
	fw, m := testFirewall(t)
	ctx := context.Background()
	before := nftRuleset(t)
	for _, tap := range []string{"bgr-aaa", "bgr-bbb"} {
		if err := m.CreateTap(ctx, tap, 0); err != nil {
			t.Fatal(err)
		}
	}
	a, b := vmNet("aaa", "10.77.0.2", "bgr-aaa", true), vmNet("bbb", "10.77.0.3", "bgr-bbb", false)
	for i := 0; i < 2; i++ { // idempotent
		if err := fw.Apply(ctx, a); err != nil {
			t.Fatal(err)
		}
		if err := fw.Apply(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if got := normalize(nftRuleset(t)); got != normalize(wantTwoVMs) {
		t.Fatalf("ruleset:\n%s\nwant:\n%s", got, normalize(wantTwoVMs))
	}
	if b, _ := os.ReadFile(ipForwardPath); strings.TrimSpace(string(b)) != "1" {
		t.Errorf("ip_forward = %q, want 1", b)
	}
	// NAT off for a: its forward/masquerade rules go, the guard stays.
	a.NAT = false
	if err := fw.Apply(ctx, a); err != nil {
		t.Fatal(err)
	}
	got := nftRuleset(t)
	if strings.Contains(got, "masquerade") || strings.Contains(got, "10.77.0.2 accept") {
		t.Fatalf("nat rules left after nat off:\n%s", got)
	}
	if !strings.Contains(got, "guard-bgr-aaa") {
		t.Fatalf("guard chain gone:\n%s", got)
	}
	if err := fw.Remove(ctx, "aaa", "bgr-aaa"); err != nil {
		t.Fatal(err)
	}
	if got := nftRuleset(t); strings.Contains(got, "aaa") || !strings.Contains(got, "guard-bgr-bbb") {
		t.Fatalf("after removing aaa:\n%s", got)
	}
	// The TAP goes first (as after a crash): the chain must still be removable.
	if err := m.DeleteTap(ctx, "bgr-bbb"); err != nil {
		t.Fatal(err)
	}
	if err := fw.Remove(ctx, "bbb", "bgr-bbb"); err != nil {
		t.Fatal(err)
	}
	if err := fw.Remove(ctx, "bbb", "bgr-bbb"); err != nil { // again: nothing left is success
		t.Fatal(err)
	}
	if got := nftRuleset(t); got != before {
		t.Fatalf("ruleset after removing everything:\n%s\nwant:\n%s", got, before)
	}
}

func TestFirewallPrune(t *testing.T) {
	fw, m := testFirewall(t)
	ctx := context.Background()
	for _, tap := range []string{"bgr-aaa", "bgr-bbb", "bgr-ccc"} {
		if err := m.CreateTap(ctx, tap, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range []VMNet{vmNet("aaa", "10.77.0.2", "bgr-aaa", true), vmNet("bbb", "10.77.0.3", "bgr-bbb", true),
		vmNet("ccc", "10.77.0.4", "bgr-ccc", false)} {
		if err := fw.Apply(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := fw.Prune(ctx, map[string]string{"bbb": "bgr-bbb"}); err != nil {
		t.Fatal(err)
	}
	got := nftRuleset(t)
	if strings.Contains(got, "aaa") || strings.Contains(got, "ccc") || !strings.Contains(got, "banger vm=bbb") ||
		!strings.Contains(got, "guard-bgr-bbb") || !strings.Contains(got, "banger base") {
		t.Fatalf("after prune:\n%s", got)
	}
	if err := fw.Prune(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got := nftRuleset(t); got != "" {
		t.Fatalf("after pruning everything:\n%s", got)
	}
}

func TestFirewallValidates(t *testing.T) {
	fw := &Firewall{}
	ctx := context.Background()
	for _, v := range []VMNet{
		{ID: "", IP: netip.MustParseAddr("10.0.0.2"), MAC: MACForIP(netip.MustParseAddr("10.0.0.2")), Tap: "bgr-a"},
		{ID: "x\"y", IP: netip.MustParseAddr("10.0.0.2"), MAC: MACForIP(netip.MustParseAddr("10.0.0.2")), Tap: "bgr-a"},
		{ID: "a", IP: netip.MustParseAddr("::1"), MAC: MACForIP(netip.MustParseAddr("10.0.0.2")), Tap: "bgr-a"},
		{ID: "a", IP: netip.MustParseAddr("10.0.0.2"), MAC: MACForIP(netip.MustParseAddr("10.0.0.2")), Tap: "eth0"},
	} {
		if err := fw.Apply(ctx, v); err == nil {
			t.Errorf("Apply(%+v) accepted", v)
		}
	}
	if err := fw.Remove(ctx, "a", "eth0"); err == nil {
		t.Error("Remove with a foreign interface name accepted")
	}
}
