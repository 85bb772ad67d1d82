package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
)

// nftables layout owned by banger (nothing else is ever touched):
//
//	table ip banger
//	  chain forward     filter hook forward, policy accept
//	    iifname BR ip saddr VM_IP accept      comment "banger vm=ID"   (NAT VMs, inserted first)
//	    iifname BR oifname BR accept          comment "banger base"
//	    oifname BR ct state established,related accept               "banger base"
//	    oifname BR drop                                               "banger base"
//	    iifname BR drop                                               "banger base"
//	  chain postrouting nat hook postrouting (srcnat)
//	    ip saddr VM_IP oifname != BR masquerade comment "banger vm=ID"
//	table netdev banger
//	  chain guard-TAP   filter hook ingress device TAP (one per running VM)
//	    ether saddr != MAC drop; ip saddr != VM_IP drop; arp sender != MAC/VM_IP drop
//
// Per-VM rules carry the VM id in their comment and are found and deleted by
// it; the per-TAP chain is named after the TAP (durable in the VM row). When
// no VM holds a rule any more, both tables are deleted, so an idle host has
// no banger ruleset at all.
const (
	TableName     = "banger"
	chainForward  = "forward"
	chainPostNAT  = "postrouting"
	guardPrefix   = "guard-"
	tagVMPrefix   = "banger vm="
	tagBase       = "banger base"
	ipForwardPath = "/proc/sys/net/ipv4/ip_forward"
)

// VMNet is what the firewall needs to know about one VM. Every field comes
// from the VM's durable row.
type VMNet struct {
	ID  string
	IP  netip.Addr
	MAC net.HardwareAddr
	Tap string
	NAT bool // masquerade and forward the guest's traffic beyond the bridge
}

// Firewall manages banger's nftables tables through netlink.
type Firewall struct {
	Log *slog.Logger
	Cfg Config
	// NetNSFd, when > 0, is the network namespace to program (tests);
	// otherwise the calling thread's namespace.
	NetNSFd int

	mu sync.Mutex
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

func postNATChain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: chainPostNAT, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept}
}

// GuardChain is the name of the per-TAP anti-spoofing chain.
func GuardChain(tap string) string { return guardPrefix + tap }

func guardChain(t *nftables.Table, tap string) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: GuardChain(tap), Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityFilter, Policy: &accept, Device: tap}
}

func vmTag(id string) []byte { return userdata.AppendString(nil, userdata.TypeComment, tagVMPrefix+id) }

func ruleComment(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

func (v VMNet) validate() error {
	switch {
	case v.ID == "" || strings.ContainsAny(v.ID, " \"\\\n"):
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

// baseRules are the static forward rules: guests talk to each other; the
// outside reaches a guest only as a reply; a guest's traffic leaves the
// bridge only when a per-VM rule (inserted before these) accepts it.
func (f *Firewall) baseRules(t *nftables.Table, fwd *nftables.Chain) []*nftables.Rule {
	br := ifname(f.Cfg.withDefaults().Bridge)
	tag := userdata.AppendString(nil, userdata.TypeComment, tagBase)
	mk := func(e []expr.Any) *nftables.Rule {
		return &nftables.Rule{Table: t, Chain: fwd, Exprs: e, UserData: tag}
	}
	return []*nftables.Rule{
		mk(join(metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, br), metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, br),
			[]expr.Any{verdict(expr.VerdictAccept)})),
		mk(join(metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, br), []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryNative(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: binaryNative(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryNative(0)},
			verdict(expr.VerdictAccept),
		})),
		mk(join(metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, br), []expr.Any{verdict(expr.VerdictDrop)})),
		mk(join(metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, br), []expr.Any{verdict(expr.VerdictDrop)})),
	}
}

func binaryNative(v uint32) []byte {
	b := make([]byte, 4)
	// nftables registers hold host byte order for ct state; x86/arm64 are little-endian.
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	return b
}

// --- operations -------------------------------------------------------------

// Apply installs a VM's rules: always the anti-spoofing chain on its TAP,
// and, when v.NAT, the forward-accept and masquerade rules. Rules already
// tagged with the VM's id are replaced, so Apply is idempotent. The TAP must
// exist. With NAT, IPv4 forwarding is switched on for the namespace.
func (f *Firewall) Apply(ctx context.Context, v VMNet) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := v.validate(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.removeLocked(v.ID, v.Tap, false); err != nil {
		return err
	}
	c, err := f.conn()
	if err != nil {
		return err
	}
	it, nt := ipTable(), netdevTable()
	c.AddTable(it)
	fwd := c.AddChain(forwardChain(it))
	post := c.AddChain(postNATChain(it))
	c.AddTable(nt)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: create tables: %w", err)
	}
	rules, err := c.GetRules(it, fwd)
	if err != nil {
		return fmt.Errorf("firewall: list forward rules: %w", err)
	}
	haveBase := false
	for _, r := range rules {
		if ruleComment(r) == tagBase {
			haveBase = true
		}
	}
	if !haveBase {
		for _, r := range f.baseRules(it, fwd) {
			c.AddRule(r)
		}
	}

	br := ifname(f.Cfg.withDefaults().Bridge)
	ip := v.IP.AsSlice()
	tag := vmTag(v.ID)
	// Anti-spoofing on the TAP's ingress: the guest may only send from its own MAC and IP.
	g := c.AddChain(guardChain(nt, v.Tap))
	mac := []byte(v.MAC)
	for _, e := range [][]expr.Any{
		join(metaCmp(expr.MetaKeyIIFTYPE, expr.CmpOpEq, []byte{unix.ARPHRD_ETHER, 0}),
			payloadCmp(expr.PayloadBaseLLHeader, 6, 6, expr.CmpOpNeq, mac), []expr.Any{verdict(expr.VerdictDrop)}),
		join(metaCmp(expr.MetaKeyPROTOCOL, expr.CmpOpEq, ethIP),
			payloadCmp(expr.PayloadBaseNetworkHeader, 12, 4, expr.CmpOpNeq, ip), []expr.Any{verdict(expr.VerdictDrop)}),
		join(metaCmp(expr.MetaKeyPROTOCOL, expr.CmpOpEq, ethARP),
			payloadCmp(expr.PayloadBaseNetworkHeader, 8, 6, expr.CmpOpNeq, mac), []expr.Any{verdict(expr.VerdictDrop)}),
		join(metaCmp(expr.MetaKeyPROTOCOL, expr.CmpOpEq, ethARP),
			payloadCmp(expr.PayloadBaseNetworkHeader, 14, 4, expr.CmpOpNeq, ip), []expr.Any{verdict(expr.VerdictDrop)}),
	} {
		c.AddRule(&nftables.Rule{Table: nt, Chain: g, Exprs: e, UserData: tag})
	}
	if v.NAT {
		c.InsertRule(&nftables.Rule{Table: it, Chain: fwd, UserData: tag, Exprs: join(
			metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, br),
			payloadCmp(expr.PayloadBaseNetworkHeader, 12, 4, expr.CmpOpEq, ip),
			[]expr.Any{verdict(expr.VerdictAccept)})})
		c.AddRule(&nftables.Rule{Table: it, Chain: post, UserData: tag, Exprs: join(
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
	if v.NAT {
		if err := enableForwarding(); err != nil {
			return err
		}
	}
	f.log().InfoContext(ctx, "firewall rules applied", "vm", v.ID, "tap", v.Tap, "ip", v.IP, "nat", v.NAT)
	return nil
}

func enableForwarding() error {
	b, err := os.ReadFile(ipForwardPath)
	if err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("firewall: enable ipv4 forwarding: %w", err)
	}
	return nil
}

// Remove deletes every rule tagged with the VM's id and the TAP's guard
// chain. Missing rules, chains or tables are success. When nothing of
// banger's remains, its tables are deleted.
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
	ids := map[string]bool{}
	taps := map[string]bool{}
	it := ipTable()
	for _, ch := range []*nftables.Chain{forwardChain(it), postNATChain(it)} {
		rules, err := c.GetRules(it, ch)
		if isNoEnt(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("firewall: list %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			if id, ok := strings.CutPrefix(ruleComment(r), tagVMPrefix); ok {
				if _, k := keep[id]; !k {
					ids[id] = true
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

// removeLocked deletes the VM's tagged rules (id != "") and the TAP's guard
// chain (tap != ""), then, if dropEmpty, banger's tables once unused.
func (f *Firewall) removeLocked(id, tap string, dropEmpty bool) error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	n := 0
	if id != "" {
		it := ipTable()
		want := tagVMPrefix + id
		for _, ch := range []*nftables.Chain{forwardChain(it), postNATChain(it)} {
			rules, err := c.GetRules(it, ch)
			if isNoEnt(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("firewall: list %s: %w", ch.Name, err)
			}
			for _, r := range rules {
				if ruleComment(r) == want {
					if err := c.DelRule(r); err != nil {
						return fmt.Errorf("firewall: delete rule: %w", err)
					}
					n++
				}
			}
		}
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
				g := guardChain(nt, tap)
				c.FlushChain(g)
				c.DelChain(g)
				n++
			}
		}
	}
	if n > 0 {
		if err := c.Flush(); err != nil {
			return fmt.Errorf("firewall: delete rules of vm %s / tap %s: %w", id, tap, err)
		}
	}
	if dropEmpty {
		return f.dropEmptyLocked()
	}
	return nil
}

// dropEmptyLocked deletes banger's tables when no VM holds anything in them.
func (f *Firewall) dropEmptyLocked() error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	it, nt := ipTable(), netdevTable()
	used := false
	ipExists := false
	for _, ch := range []*nftables.Chain{forwardChain(it), postNATChain(it)} {
		rules, err := c.GetRules(it, ch)
		if isNoEnt(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("firewall: list %s: %w", ch.Name, err)
		}
		ipExists = true
		for _, r := range rules {
			if strings.HasPrefix(ruleComment(r), tagVMPrefix) {
				used = true
			}
		}
	}
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyIPv4); err == nil {
		ipExists = true
	}
	ntExists := false
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyNetdev); err == nil {
		ntExists = true
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
		if err != nil {
			return fmt.Errorf("firewall: list netdev chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table.Name == TableName {
				used = true
			}
		}
	}
	if used || (!ipExists && !ntExists) {
		return nil
	}
	if ipExists {
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
