//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/guest"
)

// TestLifecycle: create, ssh, data survives stop/start, restart, delete leaves nothing.
func TestLifecycle(t *testing.T) {
	deleteOnCleanup(t, "dev")
	// The root disk is copy-on-write over the image's file (a qcow2 overlay
	// on ext4, a reflink where the file system shares extents): the guest's
	// writes must never reach that file.
	imgFile := filepath.Join(E.stateDir, "images", "default", "rootfs.ext4")
	var imgBefore unix.Stat_t
	if err := unix.Stat(imgFile, &imgBefore); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	r := E.bangerRes("vm", "create", "--name", "dev")
	if r.code != 0 {
		t.Fatalf("create: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("create→ready %.1fs", time.Since(t0).Seconds())
	for _, stage := range []string{"root_disk", "tap", "vmm_launch", "wait_ready"} {
		if !strings.Contains(r.stderr, stage) {
			t.Errorf("create progress does not show stage %q:\n%s", stage, r.stderr)
		}
	}
	v := showVM(t, "dev")
	if v.State != "running" || v.PID == 0 {
		t.Fatalf("after create: %+v", v)
	}
	if v.CloneMethod != "qcow2-overlay" && v.CloneMethod != "reflink" {
		t.Errorf("root disk made by %q, want qcow2-overlay (or reflink)", v.CloneMethod)
	}
	// The image it reads through cannot go or be rebuilt meanwhile.
	if r := E.bangerRes("image", "rm", "default"); r.code == 0 || !strings.Contains(r.stderr, `"dev"`) {
		t.Fatalf("image rm under a vm: exit %d %s", r.code, r.stderr)
	}
	out := must(t, "vm", "ssh", "dev", "--", "hostname; cat /proc/cmdline; mount | grep -c ' /root '")
	if !strings.HasPrefix(out, "dev\n") {
		t.Errorf("hostname in guest = %q", out)
	}
	// Non-interactive ssh propagates stdout, stderr and the exit code.
	r = E.bangerRes("vm", "ssh", "dev", "--", "echo hi; echo oops >&2; exit 3")
	if r.code != 3 || r.stdout != "hi\n" || !strings.Contains(r.stderr, "oops") {
		t.Fatalf("ssh exit code/streams: code=%d stdout=%q stderr=%q", r.code, r.stdout, r.stderr)
	}
	// A PTY when asked for one (interactive `vm ssh` uses the same path).
	if out := must(t, "vm", "ssh", "dev", "-t", "--", "tty"); !strings.Contains(out, "/dev/pts/") {
		t.Errorf("vm ssh -t: tty = %q", out)
	}
	// stdin reaches the remote command.
	cmd := E.cmd("vm", "ssh", "dev", "--", "tr a-z A-Z")
	cmd.Stdin = strings.NewReader("piped stdin\n")
	if out, err := cmd.Output(); err != nil || string(out) != "PIPED STDIN\n" {
		t.Errorf("stdin: %q %v", out, err)
	}
	// Written right before stop, on both disks: must survive.
	must(t, "vm", "ssh", "dev", "--", "echo persisted-root > /etc/banger-marker; echo persisted-work > /root/marker")
	t0 = time.Now()
	must(t, "vm", "stop", "dev")
	t.Logf("stop %.1fs", time.Since(t0).Seconds())
	if v := showVM(t, "dev"); v.State != "stopped" {
		t.Fatalf("after stop: state %s", v.State)
	}
	if procs := procsReferencing(t, v.Dir); len(procs) > 0 {
		t.Fatalf("vmm still running after stop: %s", strings.Join(procs, "; "))
	}
	r = E.bangerRes("vm", "ssh", "dev", "--", "true")
	if r.code == 0 || !strings.Contains(r.stderr, "not_running") {
		t.Fatalf("ssh to a stopped vm should fail with not_running: %d %s", r.code, r.stderr)
	}
	var imgAfter unix.Stat_t
	if err := unix.Stat(imgFile, &imgAfter); err != nil {
		t.Fatal(err)
	}
	if imgAfter.Mtim != imgBefore.Mtim || imgAfter.Ctim != imgBefore.Ctim || imgAfter.Size != imgBefore.Size {
		t.Errorf("the image's file changed under a vm: mtime %v → %v, ctime %v → %v", imgBefore.Mtim, imgAfter.Mtim, imgBefore.Ctim, imgAfter.Ctim)
	}
	must(t, "vm", "start", "dev")
	out = must(t, "vm", "ssh", "dev", "--", "cat /etc/banger-marker /root/marker")
	if out != "persisted-root\npersisted-work\n" {
		t.Fatalf("data after stop/start = %q", out)
	}
	must(t, "vm", "restart", "dev")
	out = must(t, "vm", "ssh", "dev", "--", "cat /root/marker")
	if out != "persisted-work\n" {
		t.Fatalf("after restart = %q", out)
	}
	logs := must(t, "vm", "logs", "dev")
	if !strings.Contains(logs, "Linux version") && !strings.Contains(logs, "banger-init") {
		t.Errorf("console log looks empty:\n%s", tailStr(logs, 500))
	}
	list := must(t, "vm", "list", "--json")
	var vms []vmView
	if err := json.Unmarshal([]byte(list), &vms); err != nil || len(vms) == 0 {
		t.Fatalf("vm list --json: %v %s", err, list)
	}
	v = showVM(t, "dev")
	r = E.bangerRes("vm", "delete", "dev")
	if r.code == 0 {
		t.Fatalf("delete of a running vm without --force should be refused")
	}
	must(t, "vm", "stop", "dev")
	must(t, "vm", "delete", "dev")
	assertGone(t, v)
	if r := E.bangerRes("vm", "show", "dev"); r.code == 0 || !strings.Contains(r.stderr, "not_found") || !strings.Contains(r.stderr, "op ") {
		t.Fatalf("show after delete: %d %s", r.code, r.stderr)
	}
}

// TestRunExitCodes: `vm run` propagates exit codes and --rm leaves nothing.
func TestRunExitCodes(t *testing.T) {
	for _, tc := range []struct {
		cmd  []string
		code int
	}{
		{[]string{"uname", "-a"}, 0},
		{[]string{"exit 3"}, 3},
		{[]string{"kill -INT $$; sleep 5"}, 130},
	} {
		name := "run" + strconv.Itoa(tc.code)
		args := append([]string{"vm", "run", "--rm", "--name", name, "--"}, tc.cmd...)
		t0 := time.Now()
		r := E.bangerRes(args...)
		t.Logf("vm run %v: exit %d in %.1fs", tc.cmd, r.code, time.Since(t0).Seconds())
		if r.code != tc.code {
			t.Errorf("vm run %v: exit %d, want %d\nstdout:%s\nstderr:%s", tc.cmd, r.code, tc.code, r.stdout, r.stderr)
		}
		if tc.code == 0 && !strings.Contains(r.stdout, "Linux") {
			t.Errorf("uname output missing: %q", r.stdout)
		}
		if sr := E.bangerRes("vm", "show", name); sr.code == 0 {
			t.Errorf("--rm left vm %s behind", name)
		}
		entries, _ := os.ReadDir(filepath.Join(E.stateDir, "vms"))
		for _, e := range entries {
			b, _ := os.ReadFile(filepath.Join(E.stateDir, "vms", e.Name(), "seed.img"))
			if strings.Contains(string(b), name) {
				t.Errorf("--rm left the directory of %s: %s", name, e.Name())
			}
		}
	}
}

// TestDaemonKillAdopt: kill -9 of bangerd while a VM runs; the next CLI call
// restarts the daemon, which adopts the VM.
func TestDaemonKillAdopt(t *testing.T) {
	deleteOnCleanup(t, "adopt")
	must(t, "vm", "create", "--name", "adopt")
	before := showVM(t, "adopt")
	pidb, err := os.ReadFile(filepath.Join(E.stateDir, "bangerd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	dpid, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
	if dpid <= 0 {
		t.Fatalf("bad daemon pid %q", pidb)
	}
	if err := syscall.Kill(dpid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, dpid)
	out := must(t, "vm", "ssh", "adopt", "--", "echo adopted")
	if out != "adopted\n" {
		t.Fatalf("after daemon restart: %q", out)
	}
	after := showVM(t, "adopt")
	if after.PID != before.PID || after.State != "running" {
		t.Fatalf("vm not adopted: before %+v after %+v", before, after)
	}
	// The new daemon copies the serial console again (QEMU serves it on a
	// socket; the killed daemon's connection died with it).
	must(t, "vm", "ssh", "adopt", "--", "echo console-after-adopt > /dev/ttyS0")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if logs := must(t, "vm", "logs", "adopt"); strings.Contains(logs, "console-after-adopt") {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("console output after adoption missing from vm logs:\n%s", tailStr(logs, 500))
		}
	}
	must(t, "vm", "delete", "--force", "adopt")
	assertGone(t, after)
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d did not exit", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestVMMKilled: kill -9 of the VMM marks the VM stopped/error, frees its
// TAP, and start works again.
func TestVMMKilled(t *testing.T) {
	deleteOnCleanup(t, "crash")
	must(t, "vm", "create", "--name", "crash")
	v := showVM(t, "crash")
	tap := v.Tap
	if tap == "" {
		t.Fatalf("running vm shows no tap: %+v", v)
	}
	if err := syscall.Kill(v.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		v = showVM(t, "crash")
		if v.State != "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state still running 10s after the VMM was killed")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if v.State != "stopped" && v.State != "error" {
		t.Fatalf("state after vmm kill = %s", v.State)
	}
	if v.Tap != "" {
		t.Errorf("row still claims tap %s after vmm death", v.Tap)
	}
	assertTapReleased(t, tap, "crash") // deleted or idle in the pool
	must(t, "vm", "start", "crash")
	if out := must(t, "vm", "ssh", "crash", "--", "echo back"); out != "back\n" {
		t.Fatalf("after restart: %q", out)
	}
	must(t, "vm", "kill", "crash")
	must(t, "vm", "delete", "crash")
	assertGone(t, v)
}

// TestHostKeyMismatch: a guest presenting a key other than the pinned one is
// refused as a possible MITM on every SSH use; with a daemon that reaches
// guests only over SSH the start itself fails.
func TestHostKeyMismatch(t *testing.T) {
	deleteOnCleanup(t, "mitm")
	must(t, "vm", "create", "--name", "mitm")
	v := showVM(t, "mitm")
	// Swap the key the guest presents (through the agent, not over SSH),
	// and the one its seed gives it at the next boot; the pin still holds
	// the original.
	key := filepath.Join(v.Dir, "ssh_host_ed25519_key")
	priv, pub, err := guest.NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key+".pub", ssh.MarshalAuthorizedKey(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	swap := E.cmd("vm", "exec", "mitm", "--via", "agent", "--",
		"umask 077 && cat > /etc/ssh/k.new && mv /etc/ssh/k.new /etc/ssh/ssh_host_ed25519_key && rm -f /etc/ssh/ssh_host_ed25519_key.pub && kill -HUP $(cat /run/sshd.pid)")
	swap.Stdin = bytes.NewReader(priv)
	if out, err := swap.CombinedOutput(); err != nil {
		t.Fatalf("swap the guest's host key: %v\n%s", err, out)
	}
	// A new daemon: no kept SSH connection made with the old key.
	must(t, "daemon", "stop")
	for _, args := range [][]string{
		{"vm", "ssh", "mitm", "--", "true"},
		{"vm", "exec", "mitm", "--via", "ssh", "--", "true"},
	} {
		r := E.bangerRes(args...)
		if r.code == 0 || !strings.Contains(r.stderr, "possible MITM") {
			t.Fatalf("%v with a swapped host key: exit %d, want a possible MITM error: %s", args, r.code, r.stderr)
		}
	}
	// The pin was not replaced by those attempts.
	if !pinned(t, filepath.Join(E.stateDir, "ssh", "known_hosts"), v.GuestIP) {
		t.Fatalf("the pin of %s is gone after a mismatch", v.GuestIP)
	}
	must(t, "vm", "stop", "mitm")

	// SSH-only readiness refuses the start and leaves nothing running.
	must(t, "daemon", "stop")
	t.Setenv("BANGER_GUEST_VIA", "ssh")
	r := E.bangerRes("vm", "start", "mitm", "--json")
	if r.code == 0 {
		t.Fatalf("start with a swapped host key succeeded (ssh readiness)")
	}
	if !strings.Contains(r.stderr, "possible MITM") {
		t.Fatalf("want a possible MITM error, got: %s", r.stderr)
	}
	if v := showVM(t, "mitm"); v.State == "running" {
		t.Fatalf("vm left running after host key mismatch")
	}
	must(t, "daemon", "stop")
	os.Unsetenv("BANGER_GUEST_VIA")
	must(t, "vm", "delete", "--force", "mitm")
	assertGone(t, v)
}

// TestTwoVMs: two VMs boot at once with distinct IPs and reach each other.
func TestTwoVMs(t *testing.T) {
	names := []string{"twin-a", "twin-b"}
	var wg sync.WaitGroup
	res := make([]result, 2)
	for i, n := range names {
		deleteOnCleanup(t, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = E.bangerRes("vm", "create", "--name", n, "--vcpu", "1")
		}()
	}
	wg.Wait()
	for i, r := range res {
		if r.code != 0 {
			t.Fatalf("create %s: %d\n%s", names[i], r.code, r.stderr)
		}
	}
	a, b := showVM(t, "twin-a"), showVM(t, "twin-b")
	if a.GuestIP == b.GuestIP || a.Tap == b.Tap {
		t.Fatalf("not distinct: %+v %+v", a, b)
	}
	out := must(t, "vm", "ssh", "twin-a", "--", "ip -4 -o addr show eth0")
	if !strings.Contains(out, a.GuestIP+"/") {
		t.Fatalf("twin-a eth0 = %q, want %s", out, a.GuestIP)
	}
	// Guest-to-guest over the bridge: twin-b reads twin-a's SSH banner.
	out = must(t, "vm", "ssh", "twin-b", "--", "timeout 5 bash -c 'head -c 7 < /dev/tcp/"+a.GuestIP+"/22'")
	if out != "SSH-2.0" {
		t.Fatalf("twin-b → twin-a:22 = %q", out)
	}
	for _, n := range names {
		must(t, "vm", "delete", "--force", n)
	}
	assertGone(t, a)
	assertGone(t, b)
}
