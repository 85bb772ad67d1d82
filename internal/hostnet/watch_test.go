package hostnet

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/system"
)

// nftFlush is what `nft -f /etc/nftables.conf` starts with on Debian.
func nftFlush(t *testing.T) {
	t.Helper()
	nsPath := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
	if out, err := (system.Exec{}).Run(context.Background(), "nsenter", "--net="+nsPath, "nft", "flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v %s", err, out)
	}
}

// A ruleset flushed under running guests is put back by Watch; the rules of
// a VM removed since are not.
func TestFirewallWatchRestoresFlushedRules(t *testing.T) {
	fw, m := testFirewall(t)
	ctx := context.Background()
	setIPForward(t, "0")
	for _, tap := range []string{"bgr-aaa", "bgr-bbb"} {
		if err := m.CreateTap(ctx, tap, 0); err != nil {
			t.Fatal(err)
		}
	}
	a, b := vmNet("aaa", "10.77.0.2", "bgr-aaa", true), vmNet("bbb", "10.77.0.3", "bgr-bbb", false)
	for _, v := range []VMNet{a, b} {
		if err := fw.Apply(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	want := normalize(nftRuleset(t))
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { fw.Watch(wctx, 50*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()

	nftFlush(t)
	waitRuleset := func(want string) string {
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := normalize(nftRuleset(t))
			if got == want || time.Now().After(deadline) {
				return got
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if got := waitRuleset(want); got != want {
		t.Fatalf("after a flush the rules did not come back:\n%s\nwant:\n%s", got, want)
	}

	// b is removed; a later flush brings back a's rules only.
	if err := fw.Remove(ctx, "bbb", "bgr-bbb"); err != nil {
		t.Fatal(err)
	}
	wantA := normalize(nftRuleset(t))
	nftFlush(t)
	if got := waitRuleset(wantA); got != wantA {
		t.Fatalf("after remove and flush:\n%s\nwant:\n%s", got, wantA)
	}
	// The flush took the record that banger switched ip_forward on; it was
	// put back, so the last removal still switches it off.
	if err := fw.Remove(ctx, "aaa", "bgr-aaa"); err != nil {
		t.Fatal(err)
	}
	if got := ipForward(t); got != "0" {
		t.Fatalf("ip_forward = %s after the last vm went, want 0", got)
	}
}
