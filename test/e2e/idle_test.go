//go:build e2e

package e2e

import (
	"encoding/json"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// idleView is the idle part of `vm show --json`.
type idleView struct {
	State        string
	IdleTimeout  int        `json:"idle_timeout_s"`
	StopReason   string     `json:"stop_reason"`
	StoppedAt    *time.Time `json:"stopped_at"`
	LastActivity *time.Time `json:"last_activity"`
}

func showIdle(t *testing.T, name string) idleView {
	t.Helper()
	var v idleView
	out := must(t, "vm", "show", name, "--json")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("vm show %s: %v\n%s", name, err, out)
	}
	return v
}

type statsView struct {
	Name  string
	Guest *struct {
		CPUPercent  float64 `json:"cpu_percent"`
		CPUWindowMS int64   `json:"cpu_window_ms"`
		MemUsed     uint64  `json:"mem_used_bytes"`
		MemTotal    uint64  `json:"mem_total_bytes"`
		RootTotal   uint64  `json:"root_total_bytes"`
		WorkTotal   uint64  `json:"work_total_bytes"`
		UptimeS     int64   `json:"uptime_s"`
		SSHSessions *int    `json:"ssh_sessions"`
	}
	GuestError string `json:"guest_error"`
	Net        *struct {
		Rx uint64 `json:"rx_bytes"`
		Tx uint64 `json:"tx_bytes"`
	}
	VMMRSS uint64 `json:"vmm_rss_bytes"`
}

func vmStats(t *testing.T, name string) statsView {
	t.Helper()
	out := must(t, "vm", "stats", name, "--json")
	var s []statsView
	if err := json.Unmarshal([]byte(out), &s); err != nil || len(s) != 1 || s[0].Guest == nil || s[0].Net == nil {
		t.Fatalf("vm stats %s: %v\n%s", name, err, out)
	}
	return s[0]
}

// TestIdle: a VM with --idle-timeout stops by itself and says why; one with
// an attached session (silent: its only use is the attach) and one whose CPU
// is busy (no exec running) do not, and stop once that ends. (An exec in
// progress holds a VM the same way: internal/vm TestIdleExecInProgress.) `vm stats` sees the busy guest's CPU and memory.
func TestIdle(t *testing.T) {
	const timeout = 20 * time.Second
	lazy, execing, busy := "idle-lazy", "idle-attach", "idle-busy"
	for _, n := range []string{lazy, execing, busy} {
		deleteOnCleanup(t, n)
	}
	t0 := time.Now()
	var wg sync.WaitGroup
	for _, c := range [][]string{
		{"vm", "create", "--name", lazy, "--vcpu", "1", "--idle-timeout", "20s"},
		{"vm", "create", "--name", execing, "--vcpu", "1"},
		{"vm", "create", "--name", busy, "--vcpu", "1"},
	} {
		wg.Go(func() {
			if r := E.bangerRes(c...); r.code != 0 {
				t.Errorf("banger %s: exit %d\n%s", strings.Join(c, " "), r.code, r.stderr)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("3 VMs created in %.1fs", time.Since(t0).Seconds())

	// An attached session that prints nothing: the attach is the only use.
	// The CLI stays attached while its stdin stays open.
	must(t, "vm", "session", "start", execing, "--name", "hold", "--", "sleep 1000")
	sleeper := E.cmd("vm", "session", "attach", execing, "hold")
	attachIn, err := sleeper.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() }()

	// Busy CPU with no exec running: a loop under systemd, not under the agent.
	// A guest just booted is busy for a while (units after sshd, three
	// guests on the host's cores under TCG): the baseline waits for quiet.
	before := vmStats(t, busy)
	for quiet := time.Now(); before.Guest.CPUPercent >= 20; before = vmStats(t, busy) {
		if time.Since(quiet) > 60*time.Second {
			t.Fatalf("guest never quiet after boot: cpu %.1f%%", before.Guest.CPUPercent)
		}
		time.Sleep(time.Second)
	}
	t.Logf("guest quiet (cpu %.1f%%) %.1fs after the creates began", before.Guest.CPUPercent, time.Since(t0).Seconds())
	must(t, "vm", "exec", busy, "--", "systemd-run --unit=spin sh -c 'while :; do :; done'")
	must(t, "vm", "exec", busy, "--", "head -c 200m /dev/zero > /dev/shm/fill")
	time.Sleep(2 * time.Second)
	vmStats(t, busy) // the window since `before` straddles the loop's start
	time.Sleep(2 * time.Second)
	after := vmStats(t, busy)
	t.Logf("stats before: cpu %.1f%% mem %d MiB; during the loop: cpu %.1f%% over %d ms, mem %d MiB; net rx %d tx %d, vmm rss %d MiB",
		before.Guest.CPUPercent, before.Guest.MemUsed>>20, after.Guest.CPUPercent, after.Guest.CPUWindowMS,
		after.Guest.MemUsed>>20, after.Net.Rx, after.Net.Tx, after.VMMRSS>>20)
	if after.Guest.CPUPercent < 50 || after.Guest.CPUPercent < before.Guest.CPUPercent+30 {
		t.Errorf("cpu %.1f%% during a busy loop (before %.1f%%)", after.Guest.CPUPercent, before.Guest.CPUPercent)
	}
	if after.Guest.MemUsed < before.Guest.MemUsed+150<<20 {
		t.Errorf("memory used %d MiB after 200 MiB in /dev/shm (before %d MiB)", after.Guest.MemUsed>>20, before.Guest.MemUsed>>20)
	}
	if g := after.Guest; g.MemTotal < 512<<20 || g.RootTotal == 0 || g.WorkTotal < 4<<30 || g.UptimeS <= 0 ||
		g.SSHSessions == nil || after.VMMRSS < 64<<20 {
		t.Errorf("implausible stats %+v rss %d", *g, after.VMMRSS)
	}

	// --watch prints again every 2 s and ends cleanly on Ctrl-C.
	watch := E.cmd("vm", "stats", busy, "--watch")
	var wout strings.Builder
	watch.Stdout = &wout
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4500 * time.Millisecond)
	_ = watch.Process.Signal(syscall.SIGINT)
	if err := watch.Wait(); err != nil || strings.Count(wout.String(), "LAST ACTIVITY") < 2 {
		t.Errorf("vm stats --watch: %v\n%s", err, wout.String())
	}

	// The two busy VMs get their timeout now, while running.
	setAt := time.Now()
	must(t, "vm", "set", execing, "--idle-timeout", "20s")
	must(t, "vm", "set", busy, "--idle-timeout", "20s")

	// The lazy VM stops by itself within its timeout plus a check interval
	// after its last use (the boot's file sync, the guest's CPU after boot).
	var lastSeen *time.Time
	for {
		v := showIdle(t, lazy)
		if v.LastActivity != nil {
			lastSeen = v.LastActivity
		}
		if v.State == "stopped" {
			if lastSeen != nil {
				t.Logf("lazy vm: last activity seen %.1fs after the creates began", lastSeen.Sub(t0).Seconds())
			}
			if v.StopReason != "idle for 20s" || v.StoppedAt == nil || v.IdleTimeout != 20 {
				t.Fatalf("stopped lazy vm: %+v", v)
			}
			t.Logf("lazy vm stopped %.1fs after the creates began: %s at %s", v.StoppedAt.Sub(t0).Seconds(), v.StopReason, v.StoppedAt)
			break
		}
		if time.Since(t0) > 90*time.Second {
			t.Fatalf("lazy vm still %s after 90s: %+v", v.State, v)
		}
		time.Sleep(time.Second)
	}
	if out := must(t, "vm", "show", lazy); !strings.Contains(out, "stopped:") || !strings.Contains(out, "idle for 20s at ") {
		t.Errorf("vm show of an idle-stopped vm:\n%s", out)
	}

	// Past timeout + two check intervals the busy ones still run.
	for time.Since(setAt) < timeout+2*timeout/4+5*time.Second {
		for _, n := range []string{execing, busy} {
			if v := showIdle(t, n); v.State != "running" || v.IdleTimeout != 20 {
				t.Fatalf("%s while in use: %+v (%.0fs after set)", n, v, time.Since(setAt).Seconds())
			}
		}
		time.Sleep(2 * time.Second)
	}

	// When the use ends, they stop too.
	attachIn.Close() // end of stdin detaches; the session keeps running
	if err := sleeper.Wait(); err != nil {
		t.Errorf("session attach after its stdin closed: %v", err)
	}
	must(t, "vm", "exec", busy, "--", "systemctl stop spin")
	ended := time.Now()
	left := map[string]bool{execing: true, busy: true}
	for len(left) > 0 {
		for n := range left {
			if v := showIdle(t, n); v.State == "stopped" {
				t.Logf("%s stopped %.1fs after its use ended: %s", n, time.Since(ended).Seconds(), v.StopReason)
				delete(left, n)
			}
		}
		if time.Since(ended) > 60*time.Second {
			t.Fatalf("still running 60s after their use ended: %v", left)
		}
		time.Sleep(time.Second)
	}
	t.Logf("TestIdle total %.1fs", time.Since(t0).Seconds())
}
