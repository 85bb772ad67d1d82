package hostnet

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/api"
)

func TestPoolTapIndex(t *testing.T) {
	for name, want := range map[string]int{"bgr-p0": 0, "bgr-p7": 7, "bgr-p12": 12} {
		if n, ok := PoolTapIndex(name); !ok || n != want {
			t.Errorf("%s: %d %v", name, n, ok)
		}
		if PoolTapName(want) != name || ValidTapName(name) != nil {
			t.Errorf("round trip %s", name)
		}
	}
	for _, name := range []string{"bgr-p", "bgr-p01", "bgr-px", "bgr-abc", "bgr-p-1", "eth0"} {
		if _, ok := PoolTapIndex(name); ok {
			t.Errorf("%s accepted", name)
		}
	}
}

func TestPoolTapsAndRelease(t *testing.T) {
	inNewNetns(t)
	m := testManager()
	ctx := context.Background()
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"bgr-p10", "bgr-p2", "bgr-abc"} {
		if err := m.CreateTap(ctx, n, 1000); err != nil {
			t.Fatal(err)
		}
	}
	// A non-TAP with a pool-like name is not a pool TAP.
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "bgr-p3"}}); err != nil {
		t.Fatal(err)
	}
	got, err := m.PoolTaps(ctx)
	if err != nil || strings.Join(got, ",") != "bgr-p2,bgr-p10" {
		t.Fatalf("PoolTaps = %v, %v", got, err)
	}
	if err := m.ReleaseTap(ctx, "bgr-p2"); err != nil {
		t.Fatal(err)
	}
	link, err := netlink.LinkByName("bgr-p2")
	if err != nil {
		t.Fatal(err)
	}
	br, _ := netlink.LinkByName("bgtest0")
	if link.Attrs().Flags&net.FlagUp != 0 || link.Attrs().MasterIndex != br.Attrs().Index {
		t.Fatalf("released tap: flags %v master %d", link.Attrs().Flags, link.Attrs().MasterIndex)
	}
	// Reacquire: up again, re-owned, and IPv6 off again even if someone
	// switched it back on while the TAP sat in the pool.
	for _, k := range []string{"disable_ipv6=0", "accept_ra=1", "autoconf=1"} {
		kv := strings.SplitN(k, "=", 2)
		if err := os.WriteFile(filepath.Join(ipv6Conf, "bgr-p2", kv[0]), []byte(kv[1]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.CreateTap(ctx, "bgr-p2", 2000); err != nil {
		t.Fatal(err)
	}
	link, _ = netlink.LinkByName("bgr-p2")
	if link.Attrs().Flags&net.FlagUp == 0 || sysfsOwner(t, "bgr-p2") != "2000" {
		t.Fatalf("reacquired tap: flags %v", link.Attrs().Flags)
	}
	if got := ipv6State(t, "bgr-p2"); got != ipv6Off {
		t.Fatalf("reacquired tap ipv6: %s, want %s", got, ipv6Off)
	}
	if err := m.ReleaseTap(ctx, "bgr-p9"); err != nil {
		t.Fatalf("release missing: %v", err)
	}
	if err := m.ReleaseTap(ctx, "bgr-p3"); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("release dummy: %v", err)
	}
	if err := m.ReleaseTap(ctx, "eth0"); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("release eth0: %v", err)
	}
}
