package hostnet

import (
	"context"
	"errors"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/api"
)

// A TAP deleted between OpenTap's lookup and its TUNSETIFF must not be
// recreated (as a fresh non-persistent TAP the VMM would get): attaching to a
// name that is not a persistent TAP is ErrNotFound and leaves no link.
func TestAttachTapNeverCreates(t *testing.T) {
	inNewNetns(t)
	f, err := attachTap("bgr-gone")
	if _, lerr := netlink.LinkByName("bgr-gone"); !isNotFound(lerr) {
		t.Errorf("attach created link bgr-gone (lookup: %v)", lerr)
	}
	if err == nil {
		f.Close()
	}
	if !errors.Is(err, api.ErrNotFound) {
		t.Errorf("attach to a missing tap: %v, want ErrNotFound", err)
	}
	// Control: a persistent TAP still opens.
	m := testManager()
	ctx := context.Background()
	must(t, m.EnsureBridge(ctx))
	must(t, m.CreateTap(ctx, "bgr-p1", 0))
	f, err = m.OpenTap(ctx, "bgr-p1")
	if err != nil {
		t.Fatalf("open a pooled tap: %v", err)
	}
	f.Close()
}

// The helper acts only on its owner's TAPs on its own bridge: a bgr-p TAP
// owned by another uid, or enslaved to another bridge, is refused by open,
// release, delete and reuse, and left as it was.
func TestTapOwnerAndBridgeChecked(t *testing.T) {
	inNewNetns(t)
	ctx := context.Background()
	owner := 1000
	m := testManager()
	m.Owner = &owner
	must(t, m.EnsureBridge(ctx))
	must(t, netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "otherbr0"}}))
	other, err := netlink.LinkByName("otherbr0")
	must(t, err)
	must(t, setupTap("bgr-p1", 2000)) // another uid's, not enslaved
	must(t, setupTap("bgr-p2", owner))
	p2, err := netlink.LinkByName("bgr-p2")
	must(t, err)
	must(t, netlink.LinkSetMaster(p2, other)) // the owner's, on another bridge
	for _, name := range []string{"bgr-p1", "bgr-p2"} {
		f, err := m.OpenTap(ctx, name)
		if err == nil {
			f.Close()
		}
		for verb, err := range map[string]error{
			"open": err, "release": m.ReleaseTap(ctx, name), "delete": m.DeleteTap(ctx, name),
			"reuse": m.CreateTap(ctx, name, owner),
		} {
			if !errors.Is(err, api.ErrInvalid) {
				t.Errorf("%s %s: %v, want ErrInvalid", verb, name, err)
			}
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if tt := l.(*netlink.Tuntap); name == "bgr-p1" && (tt.Owner != 2000 || tt.Attrs().MasterIndex != 0) {
			t.Errorf("bgr-p1 changed: owner %d master %d", tt.Owner, tt.Attrs().MasterIndex)
		}
		if name == "bgr-p2" && l.Attrs().MasterIndex != other.Attrs().Index {
			t.Errorf("bgr-p2 moved off otherbr0")
		}
	}
	// Control: the owner's TAP on the bridge is served.
	must(t, m.CreateTap(ctx, "bgr-p3", owner))
	f, err := m.OpenTap(ctx, "bgr-p3")
	must(t, err)
	f.Close()
	must(t, m.ReleaseTap(ctx, "bgr-p3"))
	must(t, m.DeleteTap(ctx, "bgr-p3"))
}
