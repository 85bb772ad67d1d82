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
	"github.com/banger-dev/banger/internal/testenv"
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
	testenv.RequireTools(t, "nft")
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

func setIPForward(t *testing.T, v string) {
	t.Helper()
	if err := os.WriteFile(ipForwardPath, []byte(v+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func ipForward(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(ipForwardPath)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// wantRuleset is the full ruleset with bgtest0/10.77.0.0/24: the base sets,
// chains and rules every non-empty ruleset has, plus the per-VM parts.
func wantRuleset(restoreSet bool, forward, input, post, guards string) string {
	set, ownFwd := "", ""
	if restoreSet {
		set = `set restore-ip-forward {
type ipv4_addr
comment "banger set net.ipv4.ip_forward=1 (it was 0); 0 again when this table goes"
}`
		ownFwd = `iifname != "bgtest0" oifname != "bgtest0" drop comment "banger owns ip_forward"`
	}
	return normalize(fmt.Sprintf(`
table ip banger {
%s
%s
chain forward {
type filter hook forward priority filter; policy accept;
%s
iifname "bgtest0" oifname "bgtest0" accept comment "banger base"
oifname "bgtest0" ct state established,related accept comment "banger base"
oifname "bgtest0" drop comment "banger base"
iifname "bgtest0" drop comment "banger base"
%s
}
chain input {
type filter hook input priority filter; policy accept;
%s
iifname "bgtest0" ct state established,related accept comment "banger base"
iifname "bgtest0" ip daddr 10.77.0.1 udp dport 53 accept comment "banger base"
iifname "bgtest0" ip daddr 10.77.0.1 tcp dport 53 accept comment "banger base"
iifname "bgtest0" drop comment "banger base"
}
chain postrouting {
type nat hook postrouting priority srcnat; policy accept;
%s
}
}
table netdev banger {
chain bridge-in {
type filter hook ingress device "bgtest0" priority filter; policy drop;
ether type ip accept comment "banger base"
ether type arp accept comment "banger base"
}
%s
}`, defaultSets, set, forward, ownFwd, input, post, guards))
}

// defaultSets are the blocked and nonpublic sets without --nat-block.
const defaultSets = `set blocked {
type ipv4_addr
flags interval
elements = { 168.63.129.16, 169.254.0.0/16 }
}
set nonpublic {
type ipv4_addr
flags interval
elements = { 0.0.0.0/8, 10.0.0.0/8,
100.64.0.0/10, 127.0.0.0/8,
168.63.129.16, 169.254.0.0/16,
172.16.0.0/12, 192.0.0.0/24,
192.0.2.0/24, 192.168.0.0/16,
198.18.0.0/15, 198.51.100.0/24,
203.0.113.0/24, 224.0.0.0/3 }
}`

// natFwd is a --nat guest's forward rules: its reserved source ports
// dropped, then the accept to dst ("@nonpublic" or a prefix).
func natFwd(id, dst string) string {
	ip, tap := map[string]string{"aaa": "10.77.0.2", "bbb": "10.77.0.3", "ccc": "10.77.0.4"}[id], "bgr-"+id
	tag := fmt.Sprintf("banger vm=%s ip=%s tap=%s", id, ip, tap)
	return fmt.Sprintf(`iifname "bgtest0" ip saddr %[1]s oifname != "bgtest0" udp sport < 1024 drop comment "%[3]s"
iifname "bgtest0" ip saddr %[1]s oifname != "bgtest0" tcp sport < 1024 drop comment "%[3]s"
iifname "bgtest0" ip saddr %[1]s ip daddr != %[2]s accept comment "%[3]s"`, ip, dst, tag)
}

func guardText(id, ip, tap string) string {
	mac := MACForIP(netip.MustParseAddr(ip))
	return fmt.Sprintf(`chain guard-%[3]s {
type filter hook ingress device "%[3]s" priority filter; policy drop;
ether saddr %[4]s ip saddr %[2]s accept comment "banger vm=%[1]s ip=%[2]s tap=%[3]s"
ether saddr %[4]s arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether %[4]s arp saddr ip %[2]s accept comment "banger vm=%[1]s ip=%[2]s tap=%[3]s"
}`, id, ip, tap, mac)
}

// Three VMs: aaa with --nat, bbb with nothing, ccc with --nat --nat-private --host-access.
func TestFirewallApplyRemove(t *testing.T) {
	fw, m := testFirewall(t)
	ctx := context.Background()
	before := nftRuleset(t)
	setIPForward(t, "0")
	for _, tap := range []string{"bgr-aaa", "bgr-bbb", "bgr-ccc"} {
		if err := m.CreateTap(ctx, tap, 0); err != nil {
			t.Fatal(err)
		}
	}
	a, b := vmNet("aaa", "10.77.0.2", "bgr-aaa", true), vmNet("bbb", "10.77.0.3", "bgr-bbb", false)
	c := vmNet("ccc", "10.77.0.4", "bgr-ccc", true)
	c.NATPrivate, c.HostAccess = true, true
	for i := 0; i < 2; i++ { // idempotent
		for _, v := range []VMNet{a, b, c} {
			if err := fw.Apply(ctx, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(when, want string) {
		t.Helper()
		if got := normalize(nftRuleset(t)); got != want {
			t.Fatalf("ruleset %s:\n%s\nwant:\n%s", when, got, want)
		}
	}
	guards := guardText("aaa", "10.77.0.2", "bgr-aaa") + "\n" + guardText("bbb", "10.77.0.3", "bgr-bbb") + "\n" +
		guardText("ccc", "10.77.0.4", "bgr-ccc")
	check("with three vms", wantRuleset(true,
		natFwd("ccc", "@blocked")+"\n"+natFwd("aaa", "@nonpublic"),
		`iifname "bgtest0" ip saddr 10.77.0.4 ip daddr != 169.254.0.0/16 accept comment "banger vm=ccc ip=10.77.0.4 tap=bgr-ccc"`,
		`ip saddr 10.77.0.2 oifname != "bgtest0" masquerade comment "banger vm=aaa ip=10.77.0.2 tap=bgr-aaa"
ip saddr 10.77.0.4 oifname != "bgtest0" masquerade comment "banger vm=ccc ip=10.77.0.4 tap=bgr-ccc"`, guards))
	if got := ipForward(t); got != "1" {
		t.Errorf("ip_forward = %s, want 1", got)
	}

	// NAT off for a: its forward/masquerade rules go, the guard stays.
	a.NAT = false
	if err := fw.Apply(ctx, a); err != nil {
		t.Fatal(err)
	}
	check("after nat off for aaa", wantRuleset(true,
		natFwd("ccc", "@blocked"),
		`iifname "bgtest0" ip saddr 10.77.0.4 ip daddr != 169.254.0.0/16 accept comment "banger vm=ccc ip=10.77.0.4 tap=bgr-ccc"`,
		`ip saddr 10.77.0.4 oifname != "bgtest0" masquerade comment "banger vm=ccc ip=10.77.0.4 tap=bgr-ccc"`, guards))
	if err := fw.Remove(ctx, "aaa", "bgr-aaa"); err != nil {
		t.Fatal(err)
	}
	// ccc's opt-ins dropped: a plain --nat guest again.
	c.NATPrivate, c.HostAccess = false, false
	if err := fw.Apply(ctx, c); err != nil {
		t.Fatal(err)
	}
	check("after removing aaa and ccc's opt-ins", wantRuleset(true,
		natFwd("ccc", "@nonpublic"), ``,
		`ip saddr 10.77.0.4 oifname != "bgtest0" masquerade comment "banger vm=ccc ip=10.77.0.4 tap=bgr-ccc"`,
		guardText("bbb", "10.77.0.3", "bgr-bbb")+"\n"+guardText("ccc", "10.77.0.4", "bgr-ccc")))
	if err := fw.Remove(ctx, "ccc", "bgr-ccc"); err != nil {
		t.Fatal(err)
	}
	check("after removing ccc", wantRuleset(true, ``, ``, ``, guardText("bbb", "10.77.0.3", "bgr-bbb")))
	if got := ipForward(t); got != "1" {
		t.Errorf("ip_forward = %s while banger rules remain, want 1", got)
	}
	// The TAP goes first (as after a crash): the chain must still be
	// removable. A fresh Firewall (a daemon restarted after kill -9) still
	// knows to restore ip_forward.
	if err := m.DeleteTap(ctx, "bgr-bbb"); err != nil {
		t.Fatal(err)
	}
	fw2 := &Firewall{Cfg: fw.Cfg, NetNSFd: fw.NetNSFd}
	if err := fw2.Remove(ctx, "bbb", "bgr-bbb"); err != nil {
		t.Fatal(err)
	}
	if err := fw2.Remove(ctx, "bbb", "bgr-bbb"); err != nil { // again: nothing left is success
		t.Fatal(err)
	}
	if got := nftRuleset(t); got != before {
		t.Fatalf("ruleset after removing everything:\n%s\nwant:\n%s", got, before)
	}
	if got := ipForward(t); got != "0" {
		t.Errorf("ip_forward = %s after the last rule went, want 0 (its value before banger)", got)
	}
}

// ip_forward already on before banger: left on, and nothing is recorded.
func TestFirewallKeepsForwardingItDidNotSet(t *testing.T) {
	fw, m := testFirewall(t)
	ctx := context.Background()
	setIPForward(t, "1")
	if err := m.CreateTap(ctx, "bgr-aaa", 0); err != nil {
		t.Fatal(err)
	}
	if err := fw.Apply(ctx, vmNet("aaa", "10.77.0.2", "bgr-aaa", true)); err != nil {
		t.Fatal(err)
	}
	want := wantRuleset(false, natFwd("aaa", "@nonpublic"), ``,
		`ip saddr 10.77.0.2 oifname != "bgtest0" masquerade comment "banger vm=aaa ip=10.77.0.2 tap=bgr-aaa"`, guardText("aaa", "10.77.0.2", "bgr-aaa"))
	if got := normalize(nftRuleset(t)); got != want {
		t.Fatalf("ruleset:\n%s\nwant:\n%s", got, want)
	}
	if err := fw.Remove(ctx, "aaa", "bgr-aaa"); err != nil {
		t.Fatal(err)
	}
	if got := ipForward(t); got != "1" {
		t.Errorf("ip_forward = %s, want 1 (it was on before banger)", got)
	}
}

func TestFirewallPrune(t *testing.T) {
	fw, m := testFirewall(t)
	ctx := context.Background()
	setIPForward(t, "0")
	for _, tap := range []string{"bgr-aaa", "bgr-bbb", "bgr-ccc"} {
		if err := m.CreateTap(ctx, tap, 0); err != nil {
			t.Fatal(err)
		}
	}
	ccc := vmNet("ccc", "10.77.0.4", "bgr-ccc", false)
	ccc.HostAccess = true
	for _, v := range []VMNet{vmNet("aaa", "10.77.0.2", "bgr-aaa", true), vmNet("bbb", "10.77.0.3", "bgr-bbb", true), ccc} {
		if err := fw.Apply(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := fw.Prune(ctx, map[string]string{"bbb": "bgr-bbb"}); err != nil {
		t.Fatal(err)
	}
	want := wantRuleset(true, natFwd("bbb", "@nonpublic"), ``,
		`ip saddr 10.77.0.3 oifname != "bgtest0" masquerade comment "banger vm=bbb ip=10.77.0.3 tap=bgr-bbb"`, guardText("bbb", "10.77.0.3", "bgr-bbb"))
	if got := normalize(nftRuleset(t)); got != want {
		t.Fatalf("after prune:\n%s\nwant:\n%s", got, want)
	}
	if err := fw.Prune(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got := nftRuleset(t); got != "" {
		t.Fatalf("after pruning everything:\n%s", got)
	}
	if got := ipForward(t); got != "0" {
		t.Errorf("ip_forward = %s after pruning everything, want 0", got)
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

// One address and one TAP carry at most one VM's rules: ids invented per
// call (the helper accepts any well-formed id) replace, never accumulate.
func TestFirewallOneVMPerAddressAndTap(t *testing.T) {
	fw, m := testFirewall(t)
	ctx := context.Background()
	setIPForward(t, "1")
	for _, tap := range []string{"bgr-aaa", "bgr-bbb"} {
		if err := m.CreateTap(ctx, tap, 0); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 50; i++ {
		v := vmNet(fmt.Sprintf("x%03d", i), "10.77.0.2", "bgr-aaa", true)
		v.HostAccess = true
		if err := fw.Apply(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	// The same address on another TAP, then another address on that TAP:
	// each time the previous holder's rules and guard chain go.
	if err := fw.Apply(ctx, vmNet("y000", "10.77.0.2", "bgr-bbb", true)); err != nil {
		t.Fatal(err)
	}
	if err := fw.Apply(ctx, vmNet("aaa", "10.77.0.3", "bgr-bbb", true)); err != nil {
		t.Fatal(err)
	}
	tag := `"banger vm=aaa ip=10.77.0.3 tap=bgr-bbb"`
	want := wantRuleset(false, `iifname "bgtest0" ip saddr 10.77.0.3 oifname != "bgtest0" udp sport < 1024 drop comment `+tag+`
iifname "bgtest0" ip saddr 10.77.0.3 oifname != "bgtest0" tcp sport < 1024 drop comment `+tag+`
iifname "bgtest0" ip saddr 10.77.0.3 ip daddr != @nonpublic accept comment `+tag, ``,
		`ip saddr 10.77.0.3 oifname != "bgtest0" masquerade comment `+tag, guardText("aaa", "10.77.0.3", "bgr-bbb"))
	if got := normalize(nftRuleset(t)); got != want {
		t.Fatalf("ruleset after 52 applies with distinct ids:\n%s\nwant:\n%s", got, want)
	}
	if err := fw.Remove(ctx, "aaa", "bgr-bbb"); err != nil {
		t.Fatal(err)
	}
	if got := nftRuleset(t); got != "" {
		t.Fatalf("ruleset after removing the one VM left:\n%s", got)
	}
}

// The "banger owns ip_forward" drop exists exactly once while the
// restore-ip-forward set does: not doubled when forwarding was switched off
// behind banger's back, and added to a table from a release without it.
func TestFirewallOwnForwardingRuleOnce(t *testing.T) {
	fw, m := testFirewall(t)
	ctx := context.Background()
	setIPForward(t, "0")
	for _, tap := range []string{"bgr-aaa", "bgr-bbb"} {
		if err := m.CreateTap(ctx, tap, 0); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int { return strings.Count(nftRuleset(t), `comment "banger owns ip_forward"`) }
	if err := fw.Apply(ctx, vmNet("aaa", "10.77.0.2", "bgr-aaa", true)); err != nil {
		t.Fatal(err)
	}
	setIPForward(t, "0")
	if err := fw.Apply(ctx, vmNet("bbb", "10.77.0.3", "bgr-bbb", true)); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 || ipForward(t) != "1" {
		t.Fatalf("after forwarding was switched off and on again: %d drop rules, ip_forward %s", n, ipForward(t))
	}
	// An older release's table: the set without the rule.
	c, err := fw.conn()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := c.GetRules(ipTable(), forwardChain(ipTable()))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if ruleComment(r) == tagOwnFwd {
			if err := c.DelRule(r); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := fw.Apply(ctx, vmNet("aaa", "10.77.0.2", "bgr-aaa", true)); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("table with the set but without the rule: %d drop rules after Apply, want 1", n)
	}
}

// Config.ExtraBlocked joins both sets (merged where they overlap or touch,
// as the kernel refuses overlapping intervals), and a table left with other
// contents (an older banger, another --nat-block) is brought up to date.
func TestFirewallExtraBlocked(t *testing.T) {
	fw, m := testFirewall(t)
	ctx := context.Background()
	setIPForward(t, "1")
	if err := m.CreateTap(ctx, "bgr-aaa", 0); err != nil {
		t.Fatal(err)
	}
	fw.Cfg.ExtraBlocked = []netip.Prefix{netip.MustParsePrefix("8.8.8.0/24"), netip.MustParsePrefix("9.9.9.9/32"),
		netip.MustParsePrefix("203.0.113.0/25"), netip.MustParsePrefix("169.254.1.0/24"),
		netip.MustParsePrefix("198.20.0.0/16")}
	if err := fw.Cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := fw.Apply(ctx, vmNet("aaa", "10.77.0.2", "bgr-aaa", true)); err != nil {
		t.Fatal(err)
	}
	sets := func() string {
		got := normalize(nftRuleset(t))
		i, j := strings.Index(got, "set blocked {"), strings.Index(got, "chain forward {")
		if i < 0 || j < i {
			t.Fatalf("no sets in:\n%s", got)
		}
		return strings.TrimSpace(got[i:j])
	}
	want := normalize(`set blocked {
type ipv4_addr
flags interval
elements = { 8.8.8.0/24, 9.9.9.9,
168.63.129.16, 169.254.0.0/16,
198.20.0.0/16, 203.0.113.0/25 }
}
set nonpublic {
type ipv4_addr
flags interval
elements = { 0.0.0.0/8, 8.8.8.0/24,
9.9.9.9, 10.0.0.0/8,
100.64.0.0/10, 127.0.0.0/8,
168.63.129.16, 169.254.0.0/16,
172.16.0.0/12, 192.0.0.0/24,
192.0.2.0/24, 192.168.0.0/16,
198.18.0.0-198.20.255.255, 198.51.100.0/24,
203.0.113.0/24, 224.0.0.0/3 }
}`)
	if got := sets(); got != want {
		t.Fatalf("sets with --nat-block:\n%s\nwant:\n%s", got, want)
	}
	// The next daemon runs without --nat-block: the sets follow.
	fw2 := &Firewall{Cfg: testManager().Cfg, NetNSFd: fw.NetNSFd}
	if err := fw2.Apply(ctx, vmNet("aaa", "10.77.0.2", "bgr-aaa", true)); err != nil {
		t.Fatal(err)
	}
	if got := sets(); got != normalize(defaultSets) {
		t.Fatalf("sets after a restart without --nat-block:\n%s\nwant:\n%s", got, normalize(defaultSets))
	}
	for _, bad := range [][]netip.Prefix{{netip.MustParsePrefix("fd00::/8")}, {{}}} {
		if err := (Config{ExtraBlocked: bad}).Validate(); err == nil {
			t.Errorf("ExtraBlocked %v accepted", bad)
		}
	}
	if _, err := ParseBlocked("10.0.0.0/8,::1"); err == nil {
		t.Error("ParseBlocked accepted an ipv6 address")
	}
	if ps, err := ParseBlocked(" 10.1.2.3/8, 1.2.3.4 ,"); err != nil || len(ps) != 2 || ps[0].String() != "10.0.0.0/8" ||
		ps[1].String() != "1.2.3.4/32" {
		t.Errorf("ParseBlocked = %v, %v", ps, err)
	}
}
