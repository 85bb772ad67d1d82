package hostnet

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
)

// nftables layout owned by banger (nothing else is ever touched). BR is the
// bridge, GW its gateway address, VM a guest's address:
//
//	table ip banger
//	  set blocked        interval set: 169.254/16 168.63.129.16 (cloud metadata)
//	                     + Config.ExtraBlocked (--nat-block)
//	  set nonpublic      interval set: blocked + 0/8 10/8 100.64/10 127/8 172.16/12
//	                     192.0.0/24 192.0.2/24 192.168/16 198.18/15 198.51.100/24
//	                     203.0.113/24 224/3 (multicast, reserved, broadcast)
//	  set restore-ip-forward   present only while banger holds ip_forward=1
//	                     that it switched on (see enableForwarding)
//	  chain forward     filter hook forward, policy accept
//	    iifname BR ip saddr VM oifname != BR udp sport < 1024 drop  "banger vm=ID ..." (--nat)
//	    iifname BR ip saddr VM oifname != BR tcp sport < 1024 drop  "banger vm=ID ..." (--nat)
//	    iifname BR ip saddr VM ip daddr != @nonpublic accept        "banger vm=ID ..." (--nat)
//	    iifname BR ip saddr VM ip daddr != @blocked accept          "banger vm=ID ..." (--nat --nat-private)
//	    iifname BR oifname BR accept          comment "banger base"  (guest to guest, bridged)
//	    oifname BR ct state established,related accept               "banger base"
//	    oifname BR drop                                               "banger base"
//	    iifname BR drop                                               "banger base"
//	    iifname != BR oifname != BR drop   "banger owns ip_forward"  (only with restore-ip-forward)
//	  chain input       filter hook input, policy accept
//	    iifname BR ip saddr VM ip daddr != 169.254.0.0/16 accept    "banger vm=ID ..." (--host-access)
//	    iifname BR ct state established,related accept               "banger base"
//	    iifname BR ip daddr GW udp dport 53 accept                    "banger base"
//	    iifname BR ip daddr GW tcp dport 53 accept                    "banger base"
//	    iifname BR drop                                               "banger base"
//	  chain postrouting nat hook postrouting (srcnat)
//	    ip saddr VM oifname != BR masquerade comment "banger vm=ID ..."
//	table netdev banger
//	  chain bridge-in   filter hook ingress device BR, policy drop
//	    ether type ip accept; ether type arp accept                  "banger base"
//	  chain guard-TAP   filter hook ingress device TAP, policy drop (one per running VM)
//	    ether saddr MAC ether type ip ip saddr VM accept
//	    ether saddr MAC ether type arp (ethernet/ipv4 arp) sender MAC, VM accept
//
// The input chain is what keeps guests off the host: the hook sees every
// packet for any local address, so keying on the bridge covers all of the
// host's addresses, not just the gateway. The guard is an allowlist on the
// TAP's ingress: a frame passes only with the VM's MAC and either IPv4 from
// its address or ARP for it. It matches the Ethernet header's type field,
// not the skb protocol: the kernel strips a VLAN tag before the ingress hook
// and reports the inner protocol, while the header read by nft still shows
// 802.1Q/802.1ad, so tagged frames fall to the drop policy. bridge-in drops
// whatever else reaches the host through the bridge (IPv6 above all), a
// second wall behind the guards and the bridge's disabled IPv6.
//
// A --nat guest's TCP and UDP from a reserved source port (< 1024) is
// dropped before masquerade: the guest (root in its VM) must not lend the
// host's address a reserved port (NFS "secure", rsh-style trust). When banger is the one that
// switched ip_forward on, the forward chain also drops whatever the host
// would now route between its other interfaces.
//
// Both sets are rewritten (in one transaction) when a table left by an
// older banger or another --nat-block holds something else.
//
// When a VM's rules go (Remove, Prune, or Apply handing its address or TAP
// to another VM), so do the conntrack entries of its address: a later VM on
// the address inherits no established flow or NAT mapping.
//
// Per-VM rules carry "banger vm=ID ip=VM tap=TAP" in their comment and are
// found and deleted by the id; Apply also deletes those of any other id on
// the same address or TAP, so one address and one TAP carry at most one
// VM's rules however many ids a caller invents. The per-TAP chain is named
// after the TAP (durable in the VM row). When no VM holds a rule any more,
// both tables are deleted, so an idle host has no banger ruleset at all.
const (
	TableName     = "banger"
	chainForward  = "forward"
	chainInput    = "input"
	chainPostNAT  = "postrouting"
	chainBridgeIn = "bridge-in"
	setNonPublic  = "nonpublic"
	setBlocked    = "blocked"
	setRestoreFwd = "restore-ip-forward"
	guardPrefix   = "guard-"
	tagVMPrefix   = "banger vm="
	tagBase       = "banger base"
	tagOwnFwd     = "banger owns ip_forward"
	ipForwardPath = "/proc/sys/net/ipv4/ip_forward"
)

// blocked are the IPv4 destinations no --nat guest reaches, even with
// --nat-private: link-local (169.254.169.254 and the like) and the cloud
// metadata services in public space, here Azure's wireserver. Config's
// ExtraBlocked adds to them.
var blocked = []netip.Prefix{
	netip.MustParsePrefix("168.63.129.16/32"),
	netip.MustParsePrefix("169.254.0.0/16"),
}

// nonPublic are the further IPv4 destinations a --nat guest reaches only
// with --nat-private: "this network", private, shared (CGNAT), loopback,
// IETF protocol assignments, documentation, benchmarking, multicast,
// reserved (240/4) and broadcast.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("224.0.0.0/3"), // multicast 224/4, reserved 240/4, broadcast
}

var linkLocal = netip.MustParsePrefix("169.254.0.0/16")

// VMNet is what the firewall needs to know about one VM. Every field comes
// from the VM's durable row.
type VMNet struct {
	ID  string
	IP  netip.Addr
	MAC net.HardwareAddr
	Tap string
	NAT bool // masquerade and forward the guest's traffic beyond the bridge
	// NATPrivate lets a NAT guest reach private and special ranges beyond
	// the host (never the blocked set: link-local, cloud metadata,
	// Config.ExtraBlocked).
	NATPrivate bool
	// HostAccess lets the guest reach services on any host address (never
	// link-local); without it only the gateway's DNS answers.
	HostAccess bool
}

// Firewall manages banger's nftables tables through netlink.
type Firewall struct {
	Log *slog.Logger
	Cfg Config
	// NetNSFd, when > 0, is the network namespace to program (tests);
	// otherwise the calling thread's namespace. ip_forward is always the
	// calling thread's.
	NetNSFd int

	mu sync.Mutex
	// applied are the VMs whose rules this process put in place, for Watch
	// to put back when someone else's `nft flush ruleset` removed them.
	applied map[string]VMNet
	// ownsForward: this process (or the record it found) switched
	// ip_forward on, so a lost record is put back rather than forgotten.
	ownsForward bool
}

func (f *Firewall) log() *slog.Logger {
	if f.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return f.Log
}

func (f *Firewall) conn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if f.NetNSFd > 0 {
		opts = append(opts, nftables.WithNetNSFd(f.NetNSFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

func ipTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
}

func netdevTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyNetdev}
}

func forwardChain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept}
}

func inputChain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept}
}

func postNATChain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: chainPostNAT, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept}
}

// ipChains are the chains of the ip table that hold per-VM rules.
func ipChains(t *nftables.Table) []*nftables.Chain {
	return []*nftables.Chain{forwardChain(t), inputChain(t), postNATChain(t)}
}

func bridgeInChain(t *nftables.Table, bridge string) *nftables.Chain {
	drop := nftables.ChainPolicyDrop
	return &nftables.Chain{Name: chainBridgeIn, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityFilter, Policy: &drop, Device: bridge}
}

// GuardChain is the name of the per-TAP anti-spoofing chain.
func GuardChain(tap string) string { return guardPrefix + tap }

func guardChain(t *nftables.Table, tap string) *nftables.Chain {
	drop := nftables.ChainPolicyDrop
	return &nftables.Chain{Name: GuardChain(tap), Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityFilter, Policy: &drop, Device: tap}
}

func nonPublicSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: setNonPublic, KeyType: nftables.TypeIPAddr, Interval: true}
}

func blockedSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: setBlocked, KeyType: nftables.TypeIPAddr, Interval: true}
}

// blockedPrefixes is what the blocked set holds: the built-in metadata
// destinations and the configured ones.
func (c Config) blockedPrefixes() []netip.Prefix {
	return append(append([]netip.Prefix{}, blocked...), c.ExtraBlocked...)
}

// nonPublicPrefixes is what the nonpublic set holds: everything blocked
// plus the private and special ranges.
func (c Config) nonPublicPrefixes() []netip.Prefix {
	return append(c.blockedPrefixes(), nonPublic...)
}

// intervalElems are an interval set's elements for ps: overlapping and
// adjacent prefixes merged (the kernel refuses overlapping intervals), each
// range as its start, then the first address past its end (none for the
// range that ends the address space).
func intervalElems(ps []netip.Prefix) []nftables.SetElement {
	type span struct{ lo, hi uint32 }
	var spans []span
	for _, p := range ps {
		if !p.IsValid() || !p.Addr().Is4() {
			continue // Config.Validate refuses these
		}
		lo, hi := p.Masked().Addr().As4(), lastAddr(p).As4()
		spans = append(spans, span{binary.BigEndian.Uint32(lo[:]), binary.BigEndian.Uint32(hi[:])})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].lo < spans[j].lo })
	var merged []span
	for _, s := range spans {
		if n := len(merged); n > 0 && (merged[n-1].hi == ^uint32(0) || s.lo <= merged[n-1].hi+1) {
			merged[n-1].hi = max(merged[n-1].hi, s.hi)
			continue
		}
		merged = append(merged, s)
	}
	key := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	var out []nftables.SetElement
	for _, s := range merged {
		out = append(out, nftables.SetElement{Key: key(s.lo)})
		if s.hi != ^uint32(0) {
			out = append(out, nftables.SetElement{Key: key(s.hi + 1), IntervalEnd: true})
		}
	}
	return out
}

// sameElems reports whether a set read back from the kernel holds want.
func sameElems(have, want []nftables.SetElement) bool {
	k := func(e nftables.SetElement) string { return fmt.Sprintf("%x/%t", e.Key, e.IntervalEnd) }
	hs, ws := map[string]bool{}, map[string]bool{}
	for _, e := range have {
		hs[k(e)] = true
	}
	for _, e := range want {
		ws[k(e)] = true
	}
	// The kernel may report a leading interval end at 0.0.0.0.
	delete(hs, k(nftables.SetElement{Key: []byte{0, 0, 0, 0}, IntervalEnd: true}))
	if len(hs) != len(ws) {
		return false
	}
	for e := range ws {
		if !hs[e] {
			return false
		}
	}
	return true
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (uint32(1)<<(32-p.Bits()) - 1)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func restoreFwdSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: setRestoreFwd, KeyType: nftables.TypeIPAddr,
		Comment: "banger set net.ipv4.ip_forward=1 (it was 0); 0 again when this table goes"}
}

func vmTag(v VMNet) []byte {
	return userdata.AppendString(nil, userdata.TypeComment,
		fmt.Sprintf("%s%s ip=%s tap=%s", tagVMPrefix, v.ID, v.IP, v.Tap))
}

// vmTagged is what a per-VM comment says ("banger vm=ID ip=IP tap=TAP";
// older releases wrote the id alone).
type vmTagged struct{ id, ip, tap string }

func parseVMTag(comment string) (vmTagged, bool) {
	rest, ok := strings.CutPrefix(comment, tagVMPrefix)
	if !ok {
		return vmTagged{}, false
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return vmTagged{}, false
	}
	t := vmTagged{id: f[0]}
	for _, kv := range f[1:] {
		if v, ok := strings.CutPrefix(kv, "ip="); ok {
			t.ip = v
		} else if v, ok := strings.CutPrefix(kv, "tap="); ok {
			t.tap = v
		}
	}
	return t, true
}

// sameVMSlot reports whether a tagged rule belongs to id, or to any VM on
// v's address or TAP.
func (v VMNet) sameVMSlot(t vmTagged) bool {
	return t.id == v.ID || t.ip == v.IP.String() || t.tap == v.Tap
}

func ruleComment(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

func (v VMNet) validate() error {
	switch {
	case v.ID == "" || strings.ContainsAny(v.ID, " \"\\\n\t"):
		return fmt.Errorf("firewall: vm id %q: %w", v.ID, api.ErrInvalid)
	case !v.IP.Is4():
		return fmt.Errorf("firewall: vm %s: guest ip %v: want ipv4: %w", v.ID, v.IP, api.ErrInvalid)
	case len(v.MAC) != 6:
		return fmt.Errorf("firewall: vm %s: mac %v: %w", v.ID, v.MAC, api.ErrInvalid)
	}
	return ValidTapName(v.Tap)
}

// --- expression helpers -----------------------------------------------------

func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

func metaCmp(key expr.MetaKey, op expr.CmpOp, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

func payloadCmp(base expr.PayloadBase, off, n uint32, op expr.CmpOp, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: n},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

// prefixCmp compares the IPv4 address at network-header offset off with a prefix.
func prefixCmp(off uint32, op expr.CmpOp, p netip.Prefix) []expr.Any {
	mask := net.CIDRMask(p.Bits(), 32)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

// l4Port matches the transport protocol and destination port.
func l4Port(proto byte, port uint16) []expr.Any {
	return join(metaCmp(expr.MetaKeyL4PROTO, expr.CmpOpEq, []byte{proto}),
		payloadCmp(expr.PayloadBaseTransportHeader, 2, 2, expr.CmpOpEq, []byte{byte(port >> 8), byte(port)}))
}

func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryNative(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: binaryNative(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryNative(0)},
	}
}

func verdict(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }

func join(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

var (
	ethIP  = []byte{0x08, 0x00}
	ethARP = []byte{0x08, 0x06}
)

// etherType matches the type field of the Ethernet header as it arrived
// (a VLAN tag shows as 0x8100/0x88a8 here; see the package comment).
func etherType(t []byte) []expr.Any {
	return payloadCmp(expr.PayloadBaseLLHeader, 12, 2, expr.CmpOpEq, t)
}

// isEther is the link-type check nft itself puts before Ethernet header
// matches in the netdev family (and needs to print them as `ether ...`).
func isEther() []expr.Any {
	return metaCmp(expr.MetaKeyIIFTYPE, expr.CmpOpEq, []byte{unix.ARPHRD_ETHER, 0})
}

// baseRules are the static rules of the ip table's chains: guests talk to
// each other; the outside reaches a guest only as a reply; a guest's
// traffic leaves the bridge, or reaches the host beyond its DNS, only when a
// per-VM rule (inserted before these) accepts it.
func (f *Firewall) baseRules(t *nftables.Table, chain string) []*nftables.Rule {
	cfg := f.Cfg.withDefaults()
	br := ifname(cfg.Bridge)
	tag := userdata.AppendString(nil, userdata.TypeComment, tagBase)
	var ch *nftables.Chain
	var exprs [][]expr.Any
	fromBr := metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, br)
	switch chain {
	case chainForward:
		ch = forwardChain(t)
		toBr := metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, br)
		exprs = [][]expr.Any{
			join(fromBr, toBr, []expr.Any{verdict(expr.VerdictAccept)}),
			join(toBr, ctEstablished(), []expr.Any{verdict(expr.VerdictAccept)}),
			join(toBr, []expr.Any{verdict(expr.VerdictDrop)}),
			join(fromBr, []expr.Any{verdict(expr.VerdictDrop)}),
		}
	case chainInput:
		ch = inputChain(t)
		gw := payloadCmp(expr.PayloadBaseNetworkHeader, 16, 4, expr.CmpOpEq, cfg.Gateway().AsSlice())
		exprs = [][]expr.Any{
			join(fromBr, ctEstablished(), []expr.Any{verdict(expr.VerdictAccept)}),
			join(fromBr, gw, l4Port(unix.IPPROTO_UDP, 53), []expr.Any{verdict(expr.VerdictAccept)}),
			join(fromBr, gw, l4Port(unix.IPPROTO_TCP, 53), []expr.Any{verdict(expr.VerdictAccept)}),
			join(fromBr, []expr.Any{verdict(expr.VerdictDrop)}),
		}
	case chainBridgeIn:
		ch = bridgeInChain(t, cfg.Bridge)
		exprs = [][]expr.Any{
			join(isEther(), etherType(ethIP), []expr.Any{verdict(expr.VerdictAccept)}),
			join(isEther(), etherType(ethARP), []expr.Any{verdict(expr.VerdictAccept)}),
		}
	}
	out := make([]*nftables.Rule, 0, len(exprs))
	for _, e := range exprs {
		out = append(out, &nftables.Rule{Table: t, Chain: ch, Exprs: e, UserData: tag})
	}
	return out
}

// ownFwdRule drops what the host would route between interfaces other than
// the bridge. It exists only while banger holds ip_forward=1 that it switched
// on (the restore-ip-forward set): a host that routed before keeps routing.
func (f *Firewall) ownFwdRule(t *nftables.Table) *nftables.Rule {
	br := ifname(f.Cfg.withDefaults().Bridge)
	return &nftables.Rule{Table: t, Chain: forwardChain(t),
		UserData: userdata.AppendString(nil, userdata.TypeComment, tagOwnFwd),
		Exprs: join(metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpNeq, br), metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpNeq, br),
			[]expr.Any{verdict(expr.VerdictDrop)})}
}

// lowPortDrops drop the guest's TCP and UDP from a reserved source port
// (< 1024) on its way beyond the bridge. Masquerade keeps the source port
// when it can, and even remapped it stays below 1024 unless the range is
// flagged NF_NAT_RANGE_PROTO_SPECIFIED, which google/nftables' Masq cannot
// send (its "to :1024-65535" lists the same in nft but the kernel keeps the
// port): so a reserved port is refused rather than lent to the host.
func lowPortDrops(t *nftables.Table, br, ip, tag []byte) []*nftables.Rule {
	var out []*nftables.Rule
	for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
		out = append(out, &nftables.Rule{Table: t, Chain: forwardChain(t), UserData: tag, Exprs: join(
			metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, br),
			payloadCmp(expr.PayloadBaseNetworkHeader, 12, 4, expr.CmpOpEq, ip),
			metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpNeq, br), // guest to guest keeps its ports
			metaCmp(expr.MetaKeyL4PROTO, expr.CmpOpEq, []byte{proto}),
			payloadCmp(expr.PayloadBaseTransportHeader, 0, 2, expr.CmpOpLt, []byte{1024 >> 8, 1024 & 0xff}),
			[]expr.Any{verdict(expr.VerdictDrop)})})
	}
	return out
}

// guardRules is the TAP's allowlist.
func guardRules(t *nftables.Table, g *nftables.Chain, v VMNet) []*nftables.Rule {
	mac, ip := []byte(v.MAC), v.IP.AsSlice()
	fromMAC := join(isEther(), payloadCmp(expr.PayloadBaseLLHeader, 6, 6, expr.CmpOpEq, mac))
	nh := func(off, n uint32, data []byte) []expr.Any {
		return payloadCmp(expr.PayloadBaseNetworkHeader, off, n, expr.CmpOpEq, data)
	}
	tag := vmTag(v)
	return []*nftables.Rule{
		{Table: t, Chain: g, UserData: tag, Exprs: join(fromMAC, etherType(ethIP), nh(12, 4, ip),
			[]expr.Any{verdict(expr.VerdictAccept)})},
		// Ethernet/IPv4 ARP only (htype 1, ptype ip, hlen 6, plen 4), so the
		// sender fields are where the next two compares read them.
		{Table: t, Chain: g, UserData: tag, Exprs: join(fromMAC, etherType(ethARP),
			nh(0, 2, []byte{0, 1}), nh(2, 2, ethIP), nh(4, 1, []byte{6}), nh(5, 1, []byte{4}),
			nh(8, 6, mac), nh(14, 4, ip), []expr.Any{verdict(expr.VerdictAccept)})},
	}
}

func binaryNative(v uint32) []byte {
	b := make([]byte, 4)
	// nftables registers hold host byte order for ct state; x86/arm64 are little-endian.
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	return b
}

// --- operations -------------------------------------------------------------

// ensureBaseLocked creates banger's tables, chains, the nonpublic set and
// the base rules where missing (a table left by an older banger gains what
// it lacks). It only adds, so it never opens a gap in what is enforced.
func (f *Firewall) ensureBaseLocked(c *nftables.Conn) error {
	it, nt := ipTable(), netdevTable()
	c.AddTable(it)
	for _, ch := range ipChains(it) {
		c.AddChain(ch)
	}
	c.AddTable(nt)
	c.AddChain(bridgeInChain(nt, f.Cfg.withDefaults().Bridge))
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: create tables: %w", err)
	}
	sets, err := c.GetSets(it)
	if err != nil {
		return fmt.Errorf("firewall: list sets: %w", err)
	}
	have, ownFwd := map[string]*nftables.Set{}, false
	for _, st := range sets {
		have[st.Name] = st
		ownFwd = ownFwd || st.Name == setRestoreFwd
	}
	cfg := f.Cfg.withDefaults()
	for _, want := range []struct {
		set   *nftables.Set
		elems []nftables.SetElement
	}{
		{blockedSet(it), intervalElems(cfg.blockedPrefixes())},
		{nonPublicSet(it), intervalElems(cfg.nonPublicPrefixes())},
	} {
		if have[want.set.Name] == nil {
			if err := c.AddSet(want.set, want.elems); err != nil {
				return fmt.Errorf("firewall: set %s: %w", want.set.Name, err)
			}
			continue
		}
		// Left by an older banger or another --nat-block: replaced in the
		// same transaction as the base rules, so no packet sees it empty.
		cur, err := c.GetSetElements(want.set)
		if err != nil {
			return fmt.Errorf("firewall: list set %s: %w", want.set.Name, err)
		}
		if !sameElems(cur, want.elems) {
			c.FlushSet(want.set)
			if err := c.SetAddElements(want.set, want.elems); err != nil {
				return fmt.Errorf("firewall: set %s: %w", want.set.Name, err)
			}
			f.log().Info("firewall: set updated", "set", want.set.Name)
		}
	}
	for _, ch := range []struct {
		t    *nftables.Table
		name string
	}{{it, chainForward}, {it, chainInput}, {nt, chainBridgeIn}} {
		rules, err := c.GetRules(ch.t, &nftables.Chain{Name: ch.name, Table: ch.t})
		if err != nil {
			return fmt.Errorf("firewall: list %s rules: %w", ch.name, err)
		}
		have, haveOwnFwd := false, false
		for _, r := range rules {
			have = have || ruleComment(r) == tagBase
			haveOwnFwd = haveOwnFwd || ruleComment(r) == tagOwnFwd
		}
		if !have {
			for _, r := range f.baseRules(ch.t, ch.name) {
				c.AddRule(r)
			}
		}
		// A table from a release without the rule gains it.
		if ch.name == chainForward && ownFwd && !haveOwnFwd {
			c.AddRule(f.ownFwdRule(it))
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: base rules: %w", err)
	}
	return nil
}

// Apply installs a VM's rules: always the allowlist chain on its TAP; with
// v.NAT the forward-accept (to public destinations, or with v.NATPrivate to
// all but the blocked set) and masquerade rules; with v.HostAccess an input
// accept for the host's addresses. The VM's previous rules are replaced in
// the same transaction, so Apply is idempotent and a re-apply (reconcile)
// never leaves the TAP unguarded. The TAP must exist. With NAT, IPv4
// forwarding is switched on (and restored when the tables go).
func (f *Firewall) Apply(ctx context.Context, v VMNet) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := v.validate(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return err
	}
	if err := f.ensureBaseLocked(c); err != nil {
		return err
	}
	it, nt := ipTable(), netdevTable()
	// The VM's previous rules, and those of any other id on its address or
	// TAP: however many ids a caller invents, one slot keeps one VM's rules.
	displaced, err := f.delTaggedLocked(c, v.sameVMSlot)
	if err != nil {
		return err
	}
	guards, err := f.delOtherGuardsLocked(c, v)
	if err != nil {
		return err
	}
	// Another VM's flows on this address, and those of an address the TAP
	// or the id had before, go with their rules after the transaction below.
	own, err := guardTags(c, v.Tap) // the TAP's guard chain, flushed below
	if err != nil && !isNoEnt(err) {
		return err
	}
	stale := map[netip.Addr]bool{}
	for _, t := range append(append(displaced, guards...), own...) {
		if t.id != v.ID || t.ip != v.IP.String() {
			tagIPs(stale, []vmTagged{t})
		}
	}
	br := ifname(f.Cfg.withDefaults().Bridge)
	ip := v.IP.AsSlice()
	tag := vmTag(v)
	g := c.AddChain(guardChain(nt, v.Tap))
	c.FlushChain(g)
	for _, r := range guardRules(nt, g, v) {
		c.AddRule(r)
	}
	fromVM := join(metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, br),
		payloadCmp(expr.PayloadBaseNetworkHeader, 12, 4, expr.CmpOpEq, ip))
	notLinkLocal := prefixCmp(16, expr.CmpOpNeq, linkLocal)
	accept := []expr.Any{verdict(expr.VerdictAccept)}
	if v.HostAccess {
		c.InsertRule(&nftables.Rule{Table: it, Chain: inputChain(it), UserData: tag, Exprs: join(fromVM, notLinkLocal, accept)})
	}
	if v.NAT {
		set := setNonPublic
		if v.NATPrivate {
			set = setBlocked
		}
		dst := []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: set, Invert: true},
		}
		c.InsertRule(&nftables.Rule{Table: it, Chain: forwardChain(it), UserData: tag, Exprs: join(fromVM, dst, accept)})
		for _, r := range lowPortDrops(it, br, ip, tag) { // above the accept
			c.InsertRule(r)
		}
		c.AddRule(&nftables.Rule{Table: it, Chain: postNATChain(it), UserData: tag, Exprs: join(
			payloadCmp(expr.PayloadBaseNetworkHeader, 12, 4, expr.CmpOpEq, ip),
			metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpNeq, br),
			[]expr.Any{&expr.Masq{}})})
	}
	if err := c.Flush(); err != nil {
		err = fmt.Errorf("firewall: vm %s: add rules: %w", v.ID, err)
		if rerr := f.removeLocked(v.ID, v.Tap, true); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return err
	}
	if err := f.flushConntrackLocked(stale); err != nil {
		return fmt.Errorf("vm %s: %w", v.ID, err)
	}
	if v.NAT {
		if err := f.enableForwardingLocked(c); err != nil {
			return err
		}
	}
	if f.applied == nil {
		f.applied = map[string]VMNet{}
	}
	for id, w := range f.applied {
		if id != v.ID && (w.IP == v.IP || w.Tap == v.Tap) {
			delete(f.applied, id) // its rules went with the slot
		}
	}
	f.applied[v.ID] = v
	f.log().InfoContext(ctx, "firewall rules applied", "vm", v.ID, "tap", v.Tap, "ip", v.IP, "nat", v.NAT,
		"nat_private", v.NATPrivate, "host_access", v.HostAccess)
	return nil
}

// enableForwardingLocked turns net.ipv4.ip_forward on. When banger is the
// one switching it on, it first records that in the ruleset (the
// restore-ip-forward set), which survives a daemon killed at any point and
// goes with the tables: dropEmptyLocked switches forwarding back off.
func (f *Firewall) enableForwardingLocked(c *nftables.Conn) error {
	b, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return fmt.Errorf("firewall: read ipv4 forwarding: %w", err)
	}
	sets, err := c.GetSets(ipTable())
	if err != nil {
		return fmt.Errorf("firewall: list sets: %w", err)
	}
	recorded := false
	for _, st := range sets {
		recorded = recorded || st.Name == setRestoreFwd
	}
	if recorded {
		f.ownsForward = true // also for a daemon that restarted
	}
	if strings.TrimSpace(string(b)) == "1" {
		if f.ownsForward && !recorded {
			// banger turned it on and a `flush ruleset` took the record:
			// put it back, or forwarding would stay on for good.
			if err := c.AddSet(restoreFwdSet(ipTable()), nil); err != nil {
				return fmt.Errorf("firewall: record ip_forward: %w", err)
			}
			c.AddRule(f.ownFwdRule(ipTable()))
			if err := c.Flush(); err != nil {
				return fmt.Errorf("firewall: record ip_forward: %w", err)
			}
		}
		return nil
	}
	// Already recorded (switched off behind banger's back): the set and
	// its drop rule are there (ensureBaseLocked), so none is added twice.
	if !recorded {
		if err := c.AddSet(restoreFwdSet(ipTable()), nil); err != nil {
			return fmt.Errorf("firewall: record ip_forward: %w", err)
		}
		c.AddRule(f.ownFwdRule(ipTable()))
		if err := c.Flush(); err != nil {
			return fmt.Errorf("firewall: record ip_forward: %w", err)
		}
	}
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("firewall: enable ipv4 forwarding: %w", err)
	}
	f.ownsForward = true
	f.log().Info("firewall: ipv4 forwarding enabled (was off; restored when the last vm rule goes)")
	return nil
}

// Remove deletes every rule tagged with the VM's id and the TAP's guard
// chain, and the conntrack entries of the addresses they named. Missing
// rules, chains or tables are success. When nothing of banger's remains,
// its tables are deleted.
func (f *Firewall) Remove(ctx context.Context, id, tap string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("firewall: empty vm id: %w", api.ErrInvalid)
	}
	if tap != "" {
		if err := ValidTapName(tap); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.removeLocked(id, tap, true); err != nil {
		return err
	}
	delete(f.applied, id)
	f.log().InfoContext(ctx, "firewall rules removed", "vm", id, "tap", tap)
	return nil
}

// Prune removes the rules and guard chains of every VM not in keep (VM id ->
// TAP name): reconcile calls it so a crash between acquiring and recording
// never leaves rules behind for a VM that is not running.
func (f *Firewall) Prune(ctx context.Context, keep map[string]string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return err
	}
	keepTap := map[string]bool{}
	for _, t := range keep {
		keepTap[t] = true
	}
	for id := range f.applied {
		if _, k := keep[id]; !k {
			delete(f.applied, id)
		}
	}
	ids := map[string]bool{}
	taps := map[string]bool{}
	it := ipTable()
	for _, ch := range ipChains(it) {
		rules, err := c.GetRules(it, ch)
		if isNoEnt(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("firewall: list %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			if t, ok := parseVMTag(ruleComment(r)); ok {
				if _, k := keep[t.id]; !k {
					ids[t.id] = true
				}
			}
		}
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
	if err != nil && !isNoEnt(err) {
		return fmt.Errorf("firewall: list netdev chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		if tap, ok := strings.CutPrefix(ch.Name, guardPrefix); ok && !keepTap[tap] {
			taps[tap] = true
		}
	}
	var errs []error
	for id := range ids {
		if err := f.removeLocked(id, "", false); err != nil {
			errs = append(errs, err)
		}
	}
	for tap := range taps {
		if err := f.removeLocked("", tap, false); err != nil {
			errs = append(errs, err)
		}
	}
	if err := f.dropEmptyLocked(); err != nil {
		errs = append(errs, err)
	}
	if len(ids)+len(taps) > 0 {
		f.log().InfoContext(ctx, "firewall: pruned stale rules", "vms", len(ids), "taps", len(taps))
	}
	return errors.Join(errs...)
}

func isNoEnt(err error) bool { return err != nil && errors.Is(err, unix.ENOENT) }

// delTaggedLocked queues the deletion of every ip-table rule whose VM tag
// matches on c (not flushed) and returns the tags of those rules.
func (f *Firewall) delTaggedLocked(c *nftables.Conn, match func(vmTagged) bool) ([]vmTagged, error) {
	it := ipTable()
	var out []vmTagged
	for _, ch := range ipChains(it) {
		rules, err := c.GetRules(it, ch)
		if isNoEnt(err) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("firewall: list %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			if t, ok := parseVMTag(ruleComment(r)); ok && match(t) {
				if err := c.DelRule(r); err != nil {
					return out, fmt.Errorf("firewall: delete rule: %w", err)
				}
				out = append(out, t)
			}
		}
	}
	return out, nil
}

// tagIPs adds the addresses named by tags to ips.
func tagIPs(ips map[netip.Addr]bool, tags []vmTagged) {
	for _, t := range tags {
		if a, err := netip.ParseAddr(t.ip); err == nil && a.Is4() {
			ips[a] = true
		}
	}
}

// delOtherGuardsLocked queues the deletion of the guard chains on other TAPs
// that allow v's address or belong to v's id (not flushed) and returns the
// tags of their rules.
func (f *Firewall) delOtherGuardsLocked(c *nftables.Conn, v VMNet) ([]vmTagged, error) {
	nt := netdevTable()
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
	if err != nil && !isNoEnt(err) {
		return nil, fmt.Errorf("firewall: list netdev chains: %w", err)
	}
	var out []vmTagged
	for _, ch := range chains {
		tap, ok := strings.CutPrefix(ch.Name, guardPrefix)
		if ch.Table.Name != TableName || !ok || tap == v.Tap {
			continue
		}
		tags, err := guardTags(c, tap)
		if err != nil {
			return out, err
		}
		for _, t := range tags {
			if v.sameVMSlot(t) {
				g := guardChain(nt, tap)
				c.FlushChain(g)
				c.DelChain(g)
				out = append(out, tags...)
				break
			}
		}
	}
	return out, nil
}

// guardTags are the VM tags of the rules in the TAP's guard chain.
func guardTags(c *nftables.Conn, tap string) ([]vmTagged, error) {
	nt := netdevTable()
	rules, err := c.GetRules(nt, &nftables.Chain{Name: GuardChain(tap), Table: nt})
	if err != nil {
		return nil, fmt.Errorf("firewall: list %s: %w", GuardChain(tap), err)
	}
	var out []vmTagged
	for _, r := range rules {
		if t, ok := parseVMTag(ruleComment(r)); ok {
			out = append(out, t)
		}
	}
	return out, nil
}

// removeLocked deletes the VM's tagged rules (id != "") and the TAP's guard
// chain (tap != ""), with the conntrack entries of the addresses they
// named, then, if dropEmpty, banger's tables once unused. Conntrack is
// flushed before the rules go, so that a failure leaves the rules (and the
// address in them) for a retry, and again after, for what arrived between.
func (f *Firewall) removeLocked(id, tap string, dropEmpty bool) error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	n := 0
	ips := map[netip.Addr]bool{}
	if id != "" {
		tags, err := f.delTaggedLocked(c, func(t vmTagged) bool { return t.id == id })
		if err != nil {
			return err
		}
		n += len(tags)
		tagIPs(ips, tags)
	}
	if tap != "" {
		nt := netdevTable()
		// (ListChain flattens ENOENT into text; list the family and look.)
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
		if err != nil && !isNoEnt(err) {
			return fmt.Errorf("firewall: list netdev chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table.Name == TableName && ch.Name == GuardChain(tap) {
				tags, err := guardTags(c, tap)
				if err != nil {
					return err
				}
				tagIPs(ips, tags)
				g := guardChain(nt, tap)
				c.FlushChain(g)
				c.DelChain(g)
				n++
			}
		}
	}
	if w, ok := f.applied[id]; ok && id != "" {
		ips[w.IP] = true // (a rule of an older release names no address)
	}
	if n > 0 {
		if err := f.flushConntrackLocked(ips); err != nil {
			return fmt.Errorf("vm %s / tap %s: %w", id, tap, err)
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("firewall: delete rules of vm %s / tap %s: %w", id, tap, err)
		}
		if err := f.flushConntrackLocked(ips); err != nil {
			return fmt.Errorf("vm %s / tap %s: %w", id, tap, err)
		}
	}
	if dropEmpty {
		return f.dropEmptyLocked()
	}
	return nil
}

// dropEmptyLocked deletes banger's tables when no VM holds anything in them,
// first switching IPv4 forwarding back off if banger switched it on.
func (f *Firewall) dropEmptyLocked() error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	it, nt := ipTable(), netdevTable()
	used := false
	ipExists := false
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyIPv4); err == nil {
		ipExists = true
		for _, ch := range ipChains(it) {
			rules, err := c.GetRules(it, ch)
			if isNoEnt(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("firewall: list %s: %w", ch.Name, err)
			}
			for _, r := range rules {
				if strings.HasPrefix(ruleComment(r), tagVMPrefix) {
					used = true
				}
			}
		}
	}
	ntExists := false
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyNetdev); err == nil {
		ntExists = true
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
		if err != nil {
			return fmt.Errorf("firewall: list netdev chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table.Name == TableName && strings.HasPrefix(ch.Name, guardPrefix) {
				used = true
			}
		}
	}
	if used || (!ipExists && !ntExists) {
		return nil
	}
	if ipExists {
		// Restore before deleting: a crash in between restores again next time.
		if err := f.restoreForwardingLocked(c); err != nil {
			return err
		}
		c.DelTable(it)
	}
	if ntExists {
		c.DelTable(nt)
	}
	if err := c.Flush(); err != nil && !isNoEnt(err) {
		return fmt.Errorf("firewall: delete tables: %w", err)
	}
	return nil
}

func (f *Firewall) restoreForwardingLocked(c *nftables.Conn) error {
	sets, err := c.GetSets(ipTable())
	if err != nil && !isNoEnt(err) {
		return fmt.Errorf("firewall: list sets: %w", err)
	}
	for _, st := range sets {
		if st.Name != setRestoreFwd {
			continue
		}
		if err := os.WriteFile(ipForwardPath, []byte("0\n"), 0o644); err != nil {
			return fmt.Errorf("firewall: restore ipv4 forwarding: %w", err)
		}
		f.ownsForward = false
		f.log().Info("firewall: ipv4 forwarding restored to off")
	}
	return nil
}

// Watch puts back, every interval until ctx ends, the rules of the VMs this
// process applied when their tables or guard chains are gone: a host's
// `nft -f /etc/nftables.conf` starts with `flush ruleset`, which would
// otherwise leave running guests unguarded until the next daemon start.
// It checks only that banger's chains exist (two netlink dumps a tick).
func (f *Firewall) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		missing, err := f.missing()
		if err != nil {
			f.log().Warn("firewall watch: list rules", "err", err)
			continue
		}
		for _, v := range missing {
			if err := f.Apply(ctx, v); err != nil {
				f.log().Error("firewall watch: re-apply failed; the guest is unguarded", "vm", v.ID, "tap", v.Tap, "err", err)
				continue
			}
			f.log().Warn("firewall watch: rules were missing (ruleset flushed?); re-applied", "vm", v.ID, "tap", v.Tap)
		}
	}
}

// missing lists the applied VMs whose guard chain, or banger's input chain,
// is not in the kernel.
func (f *Firewall) missing() ([]VMNet, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.applied) == 0 {
		return nil, nil
	}
	c, err := f.conn()
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyNetdev, nftables.TableFamilyIPv4} {
		chains, err := c.ListChainsOfTableFamily(fam)
		if err != nil && !isNoEnt(err) {
			return nil, err
		}
		for _, ch := range chains {
			if ch.Table.Name == TableName {
				have[fmt.Sprintf("%d/%s", fam, ch.Name)] = true
			}
		}
	}
	inputOK := have[fmt.Sprintf("%d/%s", nftables.TableFamilyIPv4, chainInput)]
	var out []VMNet
	for _, v := range f.applied {
		if !inputOK || !have[fmt.Sprintf("%d/%s", nftables.TableFamilyNetdev, GuardChain(v.Tap))] {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
