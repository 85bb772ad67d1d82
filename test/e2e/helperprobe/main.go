// Command helperprobe runs inside a guest as the owner and drives the
// banger helper's verbs through its socket, as bangerd does for a VM start
// and teardown: it shows that the helper, confined by its systemd unit,
// can still do its job (bridge, TAP and its fd, nftables, ip_forward), and
// still refuses an out-of-range argument. One line per step; exit 1 on the
// first failure.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/privileged"
)

func main() {
	// `helperprobe load DIR`: the guest image has no kmod, so the test
	// loads the modules the helper's verbs need (listed in DIR/order, deps
	// first) with finit_module, as root, before probing.
	if len(os.Args) == 3 && os.Args[1] == "load" {
		if err := load(os.Args[2]); err != nil {
			fmt.Println("FAIL load:", err)
			os.Exit(1)
		}
		return
	}
	sock := privileged.DefaultSocket
	if len(os.Args) > 1 {
		sock = os.Args[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := &privileged.Client{Path: sock}
	ip := netip.MustParseAddr("172.30.0.5")
	v := hostnet.VMNet{ID: "0123456789ab", IP: ip, MAC: hostnet.MACForIP(ip), Tap: "bgr-p0", NAT: true}
	step := func(name string, err error) {
		if err != nil {
			fmt.Printf("FAIL %s: %v\n", name, err)
			os.Exit(1)
		}
		fmt.Printf("ok %s\n", name)
	}
	step("ensure_bridge", c.EnsureBridge(ctx))
	step("create_tap", c.CreateTap(ctx, v.Tap, os.Getuid()))
	f, err := c.OpenTap(ctx, v.Tap)
	step("open_tap", err)
	f.Close()
	step("apply_nat", c.Apply(ctx, v))
	fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	step("read_ip_forward", err)
	fmt.Printf("ip_forward %s", fwd)
	bad := v
	bad.IP = netip.MustParseAddr("10.9.9.9")
	err = c.Apply(ctx, bad)
	if !errors.Is(err, api.ErrInvalid) {
		step("refuse_out_of_subnet", fmt.Errorf("want an invalid-argument refusal, got %v", err))
	}
	fmt.Printf("ok refuse_out_of_subnet (%v)\n", err)
	step("remove_rules", c.Remove(ctx, v.ID, v.Tap))
	step("delete_tap", c.DeleteTap(ctx, v.Tap))
}

func load(dir string) error {
	order, err := os.ReadFile(filepath.Join(dir, "order"))
	if err != nil {
		return err
	}
	for _, name := range strings.Fields(string(order)) {
		f, err := os.Open(filepath.Join(dir, filepath.Base(name)))
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Println("loaded", filepath.Base(name))
	}
	return nil
}
