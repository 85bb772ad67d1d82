// Package hostnet owns the host side of the guest network: the bridge with
// the gateway address, per-VM TAP devices, guest IP and MAC allocation.
// Everything goes through netlink and the tun ioctls, never `ip`.
package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
)

// Manager creates and removes banger's bridge and TAP devices in the network
// namespace of the calling thread.
type Manager struct {
	Log *slog.Logger
	Cfg Config
	// Owner, when set (the helper: its owner's uid), limits which existing
	// TAPs are touched: open, release and delete act only on a TAP owned by
	// that uid, and CreateTap re-owns only such a TAP or an unowned one.
	Owner *int
}

// unownedTap is the owner the kernel reports for a TAP nobody owns.
const unownedTap = ^uint32(0)

func (m *Manager) log() *slog.Logger {
	if m.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Log
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// EnsureBridge creates the bridge if missing, gives it the gateway address
// and brings it up. Safe to call any number of times.
func (m *Manager) EnsureBridge(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cfg := m.Cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	link, err := netlink.LinkByName(cfg.Bridge)
	if isNotFound(err) {
		err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: cfg.Bridge}})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create bridge %s: %w", cfg.Bridge, err)
		}
		m.log().Info("bridge created", "bridge", cfg.Bridge)
		link, err = netlink.LinkByName(cfg.Bridge)
	}
	if err != nil {
		return fmt.Errorf("bridge %s: %w", cfg.Bridge, err)
	}
	if link.Type() != "bridge" {
		return fmt.Errorf("bridge %s: interface exists with type %s: %w", cfg.Bridge, link.Type(), api.ErrExists)
	}
	// Before the link is up, so it never holds an IPv6 address a guest
	// could reach nor learns a route from a guest's Router Advertisement.
	if err := noIPv6(cfg.Bridge); err != nil {
		return fmt.Errorf("bridge %s: %w", cfg.Bridge, err)
	}
	gw := cfg.Gateway()
	want := &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(cfg.Subnet.Bits(), 32)}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("bridge %s: list addresses: %w", cfg.Bridge, err)
	}
	have := false
	for _, a := range addrs {
		if a.IPNet != nil && a.IPNet.String() == want.String() {
			have = true
		}
	}
	if !have {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: want}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("bridge %s: add %s: %w", cfg.Bridge, want, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bridge %s: up: %w", cfg.Bridge, err)
	}
	return nil
}

// tapFlags match what QEMU and Firecracker ask for when they attach, so the
// persistent device accepts them (a multi-queue mismatch would be EINVAL).
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// CreateTap creates a persistent TAP owned by uid (so a VMM running as uid
// may attach without privileges), enslaves it to the bridge and brings it
// up. An existing TAP of that name is reused and re-owned; one that is in
// use by another owner, or an interface that is not a TAP, is an error.
func (m *Manager) CreateTap(ctx context.Context, name string, uid int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := ValidTapName(name); err != nil {
		return err
	}
	if uid < 0 || uid > 1<<31-2 {
		return fmt.Errorf("tap %s: uid %d: %w", name, uid, api.ErrInvalid)
	}
	cfg := m.Cfg.withDefaults()
	br, err := netlink.LinkByName(cfg.Bridge)
	if isNotFound(err) {
		return fmt.Errorf("tap %s: bridge %s missing: %w", name, cfg.Bridge, api.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("tap %s: bridge %s: %w", name, cfg.Bridge, err)
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("tap %s: %s is a %s, not a bridge: %w", name, cfg.Bridge, br.Type(), api.ErrInvalid)
	}

	created := false
	link, err := netlink.LinkByName(name)
	switch {
	case isNotFound(err):
		if err := setupTap(name, uid); err != nil {
			return fmt.Errorf("tap %s: create: %w", name, err)
		}
		created = true
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("tap %s: %w", name, err)
		}
	case err != nil:
		return fmt.Errorf("tap %s: %w", name, err)
	default:
		tt, ok := link.(*netlink.Tuntap)
		if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
			return fmt.Errorf("tap %s: interface exists with type %s: %w", name, link.Type(), api.ErrExists)
		}
		if err := m.checkTap(tt, br.Attrs().Index, "reuse", true); err != nil {
			return err
		}
		if err := setupTap(name, uid); errors.Is(err, unix.EBUSY) {
			// A VMM holds it; fine only if it already belongs to uid.
			if tt.Owner != uint32(uid) {
				return fmt.Errorf("tap %s: in use, owned by uid %d not %d: %w", name, tt.Owner, uid, api.ErrBusy)
			}
		} else if err != nil {
			return fmt.Errorf("tap %s: reuse: %w", name, err)
		}
	}

	undo := func(err error) error {
		if created {
			if derr := netlink.LinkDel(link); derr != nil && !isNotFound(derr) {
				err = errors.Join(err, fmt.Errorf("undo tap %s: %w", name, derr))
			}
		}
		return err
	}
	// Also on every reuse: a pooled TAP must not carry what a previous
	// holder (or anyone) switched on.
	if err := noIPv6(name); err != nil {
		return undo(fmt.Errorf("tap %s: %w", name, err))
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return undo(fmt.Errorf("tap %s: attach to %s: %w", name, cfg.Bridge, err))
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return undo(fmt.Errorf("tap %s: up: %w", name, err))
	}
	m.log().Info("tap ready", "tap", name, "uid", uid, "created", created, "bridge", cfg.Bridge)
	return nil
}

// ipv6Conf is where the kernel keeps per-interface IPv6 settings. /proc/sys/net
// is per network namespace: the writing thread's.
const ipv6Conf = "/proc/sys/net/ipv6/conf"

// noIPv6 turns IPv6 off on one of banger's interfaces: no router
// advertisements, no autoconfiguration, no addresses. A host without IPv6
// (no /proc/sys/net/ipv6), or an interface the kernel gave no IPv6 state,
// already has none.
func noIPv6(dev string) error {
	if _, err := os.Stat(ipv6Conf); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	dir := filepath.Join(ipv6Conf, dev)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	for _, kv := range [][2]string{{"accept_ra", "0"}, {"autoconf", "0"}, {"disable_ipv6", "1"}} {
		if err := os.WriteFile(filepath.Join(dir, kv[0]), []byte(kv[1]+"\n"), 0o644); err != nil {
			return fmt.Errorf("disable ipv6: %w", err)
		}
	}
	return nil
}

// setupTap opens (creating if needed) the named TAP, makes it persistent and
// sets its owner. No group is set: a group would further restrict who may
// attach, and uid alone is what we mean.
func setupTap(name string, uid int) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(tapFlags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("TUNSETIFF: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, uid); err != nil {
		return fmt.Errorf("TUNSETOWNER: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("TUNSETPERSIST: %w", err)
	}
	return nil
}

// ownTap looks up a banger TAP by name for verb ("delete", "release",
// "open"): nil when it does not exist. An interface that is not a TAP, a TAP
// of another owner (with m.Owner set) or one enslaved to another bridge is
// refused, so banger never acts on a link it does not own.
func (m *Manager) ownTap(ctx context.Context, name, verb string) (netlink.Link, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := ValidTapName(name); err != nil {
		return nil, err
	}
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	tt, ok := link.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
		return nil, fmt.Errorf("tap %s: refusing to %s a %s: %w", name, verb, link.Type(), api.ErrInvalid)
	}
	brIndex := -1
	if br, err := netlink.LinkByName(m.Cfg.withDefaults().Bridge); err == nil {
		brIndex = br.Attrs().Index
	}
	if err := m.checkTap(tt, brIndex, verb, false); err != nil {
		return nil, err
	}
	return link, nil
}

// checkTap refuses a TAP enslaved to anything but the bridge (index
// brIndex) and, with m.Owner set, one owned by another uid (unowned too,
// unless unownedOK: reuse).
func (m *Manager) checkTap(tt *netlink.Tuntap, brIndex int, verb string, unownedOK bool) error {
	name := tt.Attrs().Name
	if mi := tt.Attrs().MasterIndex; mi != 0 && mi != brIndex {
		return fmt.Errorf("tap %s: refusing to %s a tap enslaved to interface %d, not bridge %s: %w",
			name, verb, mi, m.Cfg.withDefaults().Bridge, api.ErrInvalid)
	}
	if m.Owner != nil && tt.Owner != uint32(*m.Owner) && !(unownedOK && tt.Owner == unownedTap) {
		return fmt.Errorf("tap %s: refusing to %s a tap owned by uid %d (this helper serves uid %d): %w",
			name, verb, int32(tt.Owner), *m.Owner, api.ErrInvalid)
	}
	return nil
}

// DeleteTap removes the TAP; a missing one is success. Interfaces that are
// not TAPs are left alone.
func (m *Manager) DeleteTap(ctx context.Context, name string) error {
	link, err := m.ownTap(ctx, name, "delete")
	if err != nil || link == nil {
		return err
	}
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("tap %s: delete: %w", name, err)
	}
	m.log().Info("tap deleted", "tap", name)
	return nil
}

// TapExists reports whether a TAP device of that name exists.
func (m *Manager) TapExists(name string) bool {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return false
	}
	tt, ok := link.(*netlink.Tuntap)
	return ok && tt.Mode == netlink.TUNTAP_MODE_TAP
}

// FlushNeigh drops the bridge's neighbour entry for ip, so a guest that got
// a reused address is reachable at once rather than after the stale entry
// times out. No bridge or no entry is success.
func (m *Manager) FlushNeigh(ctx context.Context, ip netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ip = ip.Unmap()
	if !ip.Is4() {
		return fmt.Errorf("flush neighbour %s: want ipv4: %w", ip, api.ErrInvalid)
	}
	cfg := m.Cfg.withDefaults()
	br, err := netlink.LinkByName(cfg.Bridge)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("flush neighbour %s: %w", ip, err)
	}
	n := &netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4, IP: ip.AsSlice()}
	if err := netlink.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("flush neighbour %s on %s: %w", ip, cfg.Bridge, err)
	}
	return nil
}
