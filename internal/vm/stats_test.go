package vm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
)

// fakeHostFiles writes a TAP's counters under sys (a /sys/class/net) and a
// VMM's status under proc (a /proc).
func fakeHostFiles(t *testing.T, sys, proc, tap string, rx, tx uint64, pid int, status string) {
	t.Helper()
	dir := filepath.Join(sys, tap, "statistics")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]uint64{"rx_bytes": rx, "tx_bytes": tx} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(strconv.FormatUint(v, 10)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pdir := filepath.Join(proc, strconv.Itoa(pid))
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pdir, "status"), []byte(status), 0o644); err != nil {
		t.Fatal(err)
	}
}

// statsText prints the parts of a sample a test can predict.
func statsText(s api.VMStats) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:", s.Name)
	if g := s.Guest; g != nil {
		ssh := "?"
		if g.SSHSessions != nil {
			ssh = strconv.Itoa(*g.SSHSessions)
		}
		fmt.Fprintf(&b, " cpu=%.1f%% window>=%t mem=%d/%d load=%.2f/%.2f/%.3f root=%d/%d work=%d/%d up=%ds ssh=%s",
			g.CPUPercent, g.CPUWindowMS >= 200, g.MemUsedBytes>>20, g.MemTotalBytes>>20, g.Load1, g.Load5, g.Load15,
			g.RootUsedBytes>>20, g.RootTotal>>20, g.WorkUsedBytes>>20, g.WorkTotal>>20, g.UptimeSeconds, ssh)
	} else {
		fmt.Fprintf(&b, " guest unavailable (no agent=%t)", strings.Contains(s.GuestError, "agent not available"))
	}
	if s.Net != nil {
		fmt.Fprintf(&b, " rx=%d tx=%d", s.Net.RxBytes, s.Net.TxBytes)
	} else {
		fmt.Fprintf(&b, " net: %s", s.NetError)
	}
	if s.VMMError != "" {
		fmt.Fprintf(&b, " vmm: %s", s.VMMError)
	} else {
		fmt.Fprintf(&b, " rss=%d", s.VMMRSSBytes)
	}
	fmt.Fprintf(&b, " idle=%ds active=%t", s.IdleTimeout, s.LastActivity != nil)
	return b.String()
}

func TestStats(t *testing.T) {
	f, g := idleFixture(t, nil)
	ctx := context.Background()
	sys, proc := t.TempDir(), t.TempDir()
	f.svc.sysClassNet, f.svc.procDir = sys, proc
	up := createIdle(t, f, "up", 1800)
	down := f.create(t, "down")
	f.create(t, "off")
	if _, err := f.svc.Stop(ctx, "off", true); err != nil {
		t.Fatal(err)
	}
	// The TAP receives what the guest sends: rx_bytes is the guest's tx.
	fakeHostFiles(t, sys, proc, up.Tap, 1000, 2000, f.svc.handle(up.ID).PID, "Name:\tqemu\nVmPeak:\t 9 kB\nVmRSS:\t  204800 kB\nThreads: 3\n")
	fakeHostFiles(t, sys, proc, down.Tap, 5, 7, f.svc.handle(down.ID).PID, "Name:\tqemu\nVmRSS:\t lots kB\n")
	g.set(up.ID, func(st *guestState) {
		st.busyPer = 250 // each sample: 25% of all vCPUs busy
		st.ssh = &agent.SSHConns{Count: 2, Peers: []string{"172.30.9.1:40000", "172.30.9.1:40001"}}
	})
	g.setKept(up.ID, netip.MustParseAddrPort("172.30.9.1:40000")) // the daemon's own
	g.set(down.ID, func(st *guestState) { st.down = true })

	st, err := f.svc.Stats(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range st {
		got = append(got, statsText(s))
	}
	want := []string{
		"up: cpu=25.0% window>=true mem=256/1024 load=0.50/0.25/0.125 root=1024/4096 work=64/8192 up=90s ssh=1 rx=2000 tx=1000 rss=209715200 idle=1800s active=true",
		`down: guest unavailable (no agent=true) rx=7 tx=5 vmm: vmm pid ` + strconv.Itoa(f.svc.handle(down.ID).PID) + `: VmRSS "\t lots kB" idle=0s active=true`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The first sample had no predecessor: two agent calls. The next one,
	// within a minute (and not too soon), uses the kept sample: one call.
	before := g.state(up.ID).samples
	time.Sleep(statsMinWindow + 50*time.Millisecond)
	if _, err := f.svc.Stats(ctx, "up"); err != nil {
		t.Fatal(err)
	}
	if n := g.state(up.ID).samples - before; before != 2 || n != 1 {
		t.Fatalf("agent samples: %d for the first stats, %d for the second", before, n)
	}
	if _, err := f.svc.Stats(ctx, "off"); !errors.Is(err, api.ErrNotRunning) {
		t.Fatalf("stats of a stopped vm: %v", err)
	}
	if _, err := f.svc.Stats(ctx, "nope"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("stats of an unknown vm: %v", err)
	}
}

// Stats of a VM is not a use of it: the idle clock does not move.
func TestStatsIsNoActivity(t *testing.T) {
	clock := &fakeClock{t: t0}
	f, _ := idleFixture(t, clock)
	ctx := context.Background()
	f.svc.sysClassNet, f.svc.procDir = t.TempDir(), t.TempDir()
	v := createIdle(t, f, "vm", 60)
	clock.advance(30 * time.Second)
	if _, err := f.svc.Stats(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	if got := f.svc.lastActivity(v.ID); !got.Equal(t0) {
		t.Fatalf("last activity %s after stats, want %s", got, t0)
	}
}

func TestTapCountersRefuseOddNames(t *testing.T) {
	f, _ := idleFixture(t, nil)
	f.svc.sysClassNet = t.TempDir()
	for _, tap := range []string{"", ".", "..", "../x", "a/b"} {
		if _, err := f.svc.tapCounters(tap); err == nil {
			t.Errorf("tap %q accepted", tap)
		}
	}
	dir := filepath.Join(f.svc.sysClassNet, "bgr-p0", "statistics")
	_ = os.MkdirAll(dir, 0o755)
	_ = os.WriteFile(filepath.Join(dir, "rx_bytes"), []byte(strings.Repeat("9", 100)), 0o644)
	_ = os.WriteFile(filepath.Join(dir, "tx_bytes"), []byte("1\n"), 0o644)
	if _, err := f.svc.tapCounters("bgr-p0"); err == nil {
		t.Error("an over-long counter accepted")
	}
}
