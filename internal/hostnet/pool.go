package hostnet

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
)

// PoolTapPrefix names banger's pooled TAPs: bgr-p0, bgr-p1, ... They are
// reused across VMs; which VM holds one is recorded in that VM's row.
const PoolTapPrefix = TapPrefix + "p"

// PoolTapName is the name of pooled TAP n.
func PoolTapName(n int) string { return PoolTapPrefix + strconv.Itoa(n) }

// PoolTapIndex returns n for a pooled TAP name, ok false for any other name.
func PoolTapIndex(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, PoolTapPrefix)
	if !ok || rest == "" || len(rest) > 6 || (len(rest) > 1 && rest[0] == '0') {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// PoolTaps lists the pooled TAP devices that exist, in index order.
func (m *Manager) PoolTaps(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	type tap struct {
		n    int
		name string
	}
	var taps []tap
	for _, l := range links {
		n, ok := PoolTapIndex(l.Attrs().Name)
		if !ok {
			continue
		}
		if tt, ok := l.(*netlink.Tuntap); !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
			continue
		}
		taps = append(taps, tap{n, l.Attrs().Name})
	}
	sort.Slice(taps, func(i, j int) bool { return taps[i].n < taps[j].n })
	out := make([]string, 0, len(taps))
	for _, t := range taps {
		out = append(out, t.name)
	}
	return out, nil
}

// ReleaseTap returns a TAP to the pool: it stays on the bridge but is brought
// down, which also drops the bridge's learned addresses for that port. A
// missing TAP is success; an interface that is not a TAP is left alone.
func (m *Manager) ReleaseTap(ctx context.Context, name string) error {
	link, err := m.ownTap(ctx, name, "release")
	if err != nil || link == nil {
		return err
	}
	if err := netlink.LinkSetDown(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("tap %s: down: %w", name, err)
	}
	m.log().Info("tap released to pool", "tap", name)
	return nil
}
