//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

type snapView struct {
	ID, Name, RAM string
	UsedBy        []string `json:"used_by"`
	Auto          bool
	WarmFor       string `json:"warm_for"`
	Dir           string
	SizeBytes     int64 `json:"size_bytes"`
}

func listSnapshots(t *testing.T) []snapView {
	t.Helper()
	var out []snapView
	if err := json.Unmarshal([]byte(must(t, "snapshot", "list", "--json")), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func findSnapshot(t *testing.T, name string) (snapView, bool) {
	for _, s := range listSnapshots(t) {
		if s.Name == name {
			return s, true
		}
	}
	return snapView{}, false
}

// guestFacts are what must differ between a VM and its copies.
type guestFacts struct{ hostname, machineID, ip, mac, hostKey string }

func facts(t *testing.T, name string) guestFacts {
	t.Helper()
	out := must(t, "vm", "exec", name, "--", "hostname; cat /etc/machine-id; ip -4 -o addr show eth0 | awk '{print $4}'; cat /sys/class/net/eth0/address; cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub")
	f := strings.Fields(out)
	if len(f) != 5 {
		t.Fatalf("%s: facts %q", name, out)
	}
	return guestFacts{f[0], f[1], f[2], f[3], f[4]}
}

// counter reads the guest's counter (the unit started below ticks every 0.2 s).
func counter(t *testing.T, name string) int {
	t.Helper()
	out := strings.TrimSpace(must(t, "vm", "exec", name, "--", "cat /run/counter"))
	n, err := strconv.Atoi(out)
	if err != nil {
		t.Fatalf("%s: counter %q", name, out)
	}
	return n
}

// TestSnapshot shares one running parent across pause/resume, snapshot →
// create --from, fork and the refusals, as a user would chain them.
func TestSnapshot(t *testing.T) {
	const parent = "snapsrc"
	deleteOnCleanup(t, parent)
	must(t, "vm", "create", "--name", parent)
	must(t, "vm", "exec", parent, "--", "systemd-run --unit counter sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/counter; sleep 0.2; done'")
	time.Sleep(time.Second)

	t.Run("pause_resume", func(t *testing.T) {
		c0 := counter(t, parent)
		must(t, "vm", "pause", parent)
		if v := showVM(t, parent); v.State != "paused" {
			t.Fatalf("state after pause: %q", v.State)
		}
		r := E.bangerRes("vm", "exec", parent, "--", "true")
		if r.code == 0 || !strings.Contains(r.stderr, "paused") || r.dur > 5*time.Second {
			t.Fatalf("exec on a paused vm: exit %d in %s: %s", r.code, r.dur, r.stderr)
		}
		time.Sleep(4 * time.Second)
		must(t, "vm", "resume", parent)
		c1 := counter(t, parent)
		// 4 s paused would be ~20 ticks; a few are the exec round trips.
		if c1-c0 > 8 {
			t.Fatalf("counter went from %d to %d across a 4 s pause: the guest ran", c0, c1)
		}
		time.Sleep(2 * time.Second)
		if c2 := counter(t, parent); c2 <= c1 {
			t.Fatalf("counter stuck at %d after resume", c2)
		}
		if v := showVM(t, parent); v.State != "running" {
			t.Fatalf("state after resume: %q", v.State)
		}
		out := strings.TrimSpace(must(t, "vm", "exec", parent, "--", "date +%s"))
		g, _ := strconv.ParseInt(out, 10, 64)
		if d := time.Now().Unix() - g; d > 2 || d < -2 {
			t.Fatalf("guest clock %d s off the host's after resume", d)
		}
	})

	parentFacts := facts(t, parent)
	t.Run("snapshot_create_from", func(t *testing.T) {
		const snap, child = "snapsrc-1", "snapchild"
		// Cleanups run last-first: the child goes before its snapshot.
		t.Cleanup(func() { _, _ = E.banger("snapshot", "rm", snap) })
		deleteOnCleanup(t, child)
		must(t, "vm", "exec", parent, "--", "echo before > /root/before.txt; sync")
		t0 := time.Now()
		must(t, "vm", "snapshot", parent, "--name", snap)
		t.Logf("snapshot of a running 1 GiB vm: %.2fs", time.Since(t0).Seconds())
		must(t, "vm", "exec", parent, "--", "echo after > /root/after.txt; sync")
		sv, ok := findSnapshot(t, snap)
		if !ok || sv.RAM != "file" {
			t.Fatalf("snapshot list: %+v", listSnapshots(t))
		}
		t.Logf("snapshot size on disk %d MiB", sv.SizeBytes>>20)
		if ents, _ := os.ReadDir(filepath.Dir(sv.Dir)); len(ents) != len(listSnapshots(t)) {
			t.Fatalf("snapshots dir has %d entries for %d snapshots", len(ents), len(listSnapshots(t)))
		}

		t0 = time.Now()
		must(t, "vm", "create", "--from", snap, "--name", child)
		t.Logf("create --from → ready: %.2fs", time.Since(t0).Seconds())
		out := must(t, "vm", "exec", child, "--", "cat /root/before.txt; test -e /root/after.txt && echo after-present; systemctl is-active counter")
		if out != "before\nactive\n" {
			t.Fatalf("restored guest: %q (want the file written before, not the one after, and the counter still running)", out)
		}
		c := counter(t, child)
		time.Sleep(time.Second)
		if counter(t, child) <= c {
			t.Fatalf("the process running before the snapshot does not run in the restored vm")
		}
		cf := facts(t, child)
		if cf.hostname != child {
			t.Errorf("restored hostname %q, want %q", cf.hostname, child)
		}
		if cf.machineID == parentFacts.machineID || cf.ip == parentFacts.ip || cf.mac == parentFacts.mac || cf.hostKey == parentFacts.hostKey {
			t.Errorf("restored vm shares identity with its parent: %+v vs %+v", cf, parentFacts)
		}
		if v := showVM(t, child); v.GuestIP+"/24" != cf.ip {
			t.Errorf("guest address %s, the daemon says %s", cf.ip, v.GuestIP)
		}
		// sshd answers with the child's own, pinned host key; the name resolves.
		if out := must(t, "vm", "ssh", child, "--", "hostname"); strings.TrimSpace(out) != child {
			t.Errorf("vm ssh %s: %q", child, out)
		}
		if out := must(t, "vm", "exec", parent, "--", "getent hosts "+child+".vm && timeout 5 bash -c '</dev/tcp/"+child+".vm/22' && echo reached"); !strings.Contains(out, "reached") {
			t.Errorf("parent cannot reach %s.vm: %q", child, out)
		}
		if pf := facts(t, parent); pf != parentFacts {
			t.Errorf("parent changed: %+v, was %+v", pf, parentFacts)
		}

		r := E.bangerRes("snapshot", "rm", snap)
		if r.code == 0 || !strings.Contains(r.stderr, child) {
			t.Fatalf("snapshot rm while %s uses it: exit %d %s", child, r.code, r.stderr)
		}
		cv := showVM(t, child)
		must(t, "vm", "delete", "--force", child)
		assertGone(t, cv)
		must(t, "snapshot", "rm", snap)
		if _, err := os.Stat(sv.Dir); !os.IsNotExist(err) {
			t.Fatalf("snapshot dir left after rm: %v", err)
		}
	})

	t.Run("fork", func(t *testing.T) {
		names := []string{"kid-1", "kid-2", "kid-3"}
		for _, n := range names {
			deleteOnCleanup(t, n)
		}
		t0 := time.Now()
		must(t, "vm", "fork", parent, "--count", "3", "--name-prefix", "kid")
		t.Logf("fork ×3: %.2fs", time.Since(t0).Seconds())
		seen := map[string]string{}
		var views []vmView
		for _, n := range names {
			f := facts(t, n)
			if f.hostname != n {
				t.Errorf("%s: hostname %q", n, f.hostname)
			}
			for _, k := range []string{f.machineID, f.ip, f.mac, f.hostKey} {
				if other, dup := seen[k]; dup {
					t.Errorf("%s and %s share %s", n, other, k)
				}
				seen[k] = n
			}
			views = append(views, showVM(t, n))
		}
		for _, k := range []string{parentFacts.machineID, parentFacts.ip, parentFacts.mac, parentFacts.hostKey} {
			if n, dup := seen[k]; dup {
				t.Errorf("%s shares %s with its parent", n, k)
			}
		}
		out := must(t, "vm", "exec", "kid-1", "--", "for h in kid-2 kid-3 "+parent+"; do timeout 5 bash -c \"</dev/tcp/$h.vm/22\" && echo ok; done")
		if strings.Count(out, "ok") != 3 {
			t.Errorf("kid-1 reaches siblings and parent by name: %q", out)
		}
		var auto snapView
		for _, s := range listSnapshots(t) {
			if s.Auto {
				auto = s
			}
		}
		if len(auto.UsedBy) != 3 {
			t.Fatalf("fork snapshot: %+v", auto)
		}
		for i, n := range names {
			must(t, "vm", "delete", "--force", n)
			assertGone(t, views[i])
		}
		if _, ok := findSnapshot(t, auto.Name); ok {
			t.Errorf("fork snapshot %s left after its last vm was deleted", auto.Name)
		}
		if _, err := os.Stat(auto.Dir); !os.IsNotExist(err) {
			t.Errorf("fork snapshot dir left: %v", err)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"vm", "create", "--from", "nosuch", "--name", "x1"}, "not found"},
			{[]string{"vm", "snapshot", parent, "--name", "Bad_Name"}, "snapshot name"},
			{[]string{"vm", "fork", parent, "--count", "99"}, "count"},
		} {
			r := E.bangerRes(tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("banger %s: exit %d %q, want an error naming %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
			}
		}
		// A snapshot whose memory file is gone: clear refusal, nothing left.
		const snap = "snapsrc-broken"
		must(t, "vm", "snapshot", parent, "--name", snap)
		t.Cleanup(func() { _, _ = E.banger("snapshot", "rm", snap) })
		sv, _ := findSnapshot(t, snap)
		if err := os.Truncate(filepath.Join(sv.Dir, "mem"), 4096); err != nil {
			t.Fatal(err)
		}
		r := E.bangerRes("vm", "create", "--from", snap, "--name", "broken")
		if r.code == 0 || !strings.Contains(r.stderr, "corrupt") {
			t.Fatalf("restore of a truncated snapshot: exit %d %s", r.code, r.stderr)
		}
		if out, _ := E.banger("vm", "show", "broken"); !strings.Contains(out, "not found") {
			t.Errorf("a failed restore left a vm: %s", out)
		}
	})
}

// TestWarmRun: `image warm` makes the default image's warm template and
// `vm run` restores it; exit codes come through as from a cold run.
func TestWarmRun(t *testing.T) {
	must(t, "image", "warm", "default")
	sv, ok := findSnapshot(t, "default-warm")
	if !ok || sv.WarmFor != "default" {
		t.Fatalf("warm template: %+v", listSnapshots(t))
	}
	// Other tests' `vm run` must boot cold.
	t.Cleanup(func() { _, _ = E.banger("snapshot", "rm", "default-warm") })
	for _, code := range []int{0, 7} {
		r := E.bangerRes("vm", "run", "--rm", "--", "hostname; exit "+strconv.Itoa(code))
		if r.code != code || !strings.HasPrefix(r.stdout, "run-") {
			t.Fatalf("warm vm run exit %d (want %d): %q %s", r.code, code, r.stdout, r.stderr)
		}
		// The create's stages name the template it restored.
		if !strings.Contains(r.stderr, "warm:default-warm") || !strings.Contains(r.stderr, "reidentify") {
			t.Fatalf("vm run did not restore the warm template:\n%s", r.stderr)
		}
	}
	if sv, _ := findSnapshot(t, "default-warm"); len(sv.UsedBy) != 0 {
		t.Fatalf("--rm runs left users: %v", sv.UsedBy)
	}
}

// TestSnapshotCrash: bangerd SIGKILLed in the middle of a snapshot (after
// the state was saved; after the directory was renamed into place) and of a
// restore (VMM running; guest re-identified). The next daemon leaves no
// half snapshot, resumes the source VM, and no VMM or TAP of the restore.
func TestSnapshotCrash(t *testing.T) {
	const name, snap, kid = "snapcrash", "crashsnap", "crashkid"
	deleteOnCleanup(t, name)
	deleteOnCleanup(t, kid)
	t.Cleanup(func() { stopDaemon(t) })
	t.Cleanup(func() { _, _ = E.banger("snapshot", "rm", snap) })
	must(t, "vm", "create", "--name", name)
	snapDir := filepath.Join(E.stateDir, "snapshots")
	entries := func() int { ents, _ := os.ReadDir(snapDir); return len(ents) }
	before, rows := entries(), len(listSnapshots(t))
	for _, step := range []string{"snapshot:state", "snapshot:dir"} {
		crashDaemonAfter(t, step, "vm", "snapshot", name, "--name", snap)
		if entries() != before+1 {
			t.Fatalf("%s: the crash left no snapshot dir: the failpoint fired elsewhere", step)
		}
		must(t, "vm", "list") // a new daemon: reconcile
		if n := entries(); n != before || len(listSnapshots(t)) != rows {
			t.Fatalf("%s: half snapshot left: %d entries (had %d), %+v", step, n, before, listSnapshots(t))
		}
		if v := showVM(t, name); v.State != "running" {
			t.Fatalf("%s: source vm %s after reconcile", step, v.State)
		}
		if out := must(t, "vm", "exec", name, "--", "echo alive"); out != "alive\n" {
			t.Fatalf("%s: source vm does not run: %q", step, out)
		}
	}
	must(t, "vm", "snapshot", name, "--name", snap)
	for _, step := range []string{"vmm_launch", "reidentify"} {
		crashDaemonAfter(t, step, "vm", "create", "--from", snap, "--name", kid)
		must(t, "vm", "list")
		v := showVM(t, kid)
		if step == "reidentify" {
			// Re-identified: a running VM of its own, adopted.
			if out := must(t, "vm", "exec", kid, "--", "hostname"); v.State != "running" || out != kid+"\n" {
				t.Fatalf("%s: restored vm %s answers as %q", step, v.State, out)
			}
			must(t, "vm", "delete", "--force", kid)
			assertGone(t, v)
			continue
		}
		if v.State != "error" {
			t.Fatalf("%s: interrupted restore is %q, want error", step, v.State)
		}
		assertNotHeld(t, v)
		must(t, "vm", "delete", kid)
		assertGone(t, v)
	}
}
