//go:build e2e

package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The failpoint bangerd reads (cmd/bangerd/failpoint.go): it SIGKILLs itself
// right after the named create/start step succeeded.
const failpointEnv = "BANGER_FAILPOINT"

// daemonPID reads bangerd's pid file; 0 when there is none.
func daemonPID(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(E.stateDir, "bangerd.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// stopDaemon stops bangerd (VMs keep running) and waits until it is gone.
func stopDaemon(t *testing.T) {
	t.Helper()
	pid := daemonPID(t)
	_, _ = E.banger("daemon", "stop")
	if pid > 0 {
		deadline := time.Now().Add(10 * time.Second)
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("bangerd pid %d did not stop", pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// bangerWithEnv runs the CLI with extra environment (passed on to an
// auto-started daemon: BANGER_* is forwarded).
func bangerWithEnv(env []string, args ...string) result {
	cmd := E.cmd(args...)
	cmd.Env = append(cmd.Env, env...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		r.code = -1
	}
	return r
}

// crashDaemonAfter restarts bangerd with the failpoint armed for step, runs
// the CLI command, and checks that the daemon died by it.
func crashDaemonAfter(t *testing.T, step string, args ...string) {
	t.Helper()
	stopDaemon(t)
	r := bangerWithEnv([]string{failpointEnv + "=kill-after:" + step}, args...)
	if r.code == 0 {
		stopDaemon(t) // never leave an armed daemon to the next test
		t.Fatalf("%s: banger %s succeeded: the failpoint did not fire\n%s", step, strings.Join(args, " "), r.stdout)
	}
	pid := daemonPID(t)
	deadline := time.Now().Add(10 * time.Second)
	for pid > 0 && syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("%s: bangerd (pid %d) still alive after the failpoint", step, pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(E.stateDir, "bangerd.log"))
	if !bytes.Contains(log, []byte(`"failpoint: killing the daemon"`)) {
		t.Fatalf("%s: daemon died, but not by the failpoint; stderr %s\nlog tail:\n%s", step, r.stderr, tailStr(string(log), 2000))
	}
}

// upPoolTaps lists the pooled TAPs that are up in the test namespace.
func upPoolTaps(t *testing.T) []string {
	t.Helper()
	out, err := run("ip", "-n", E.ns, "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	var up []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if strings.HasPrefix(name, poolTapPrefix) && strings.Contains(f[2], ",UP") {
			up = append(up, name)
		}
	}
	return up
}

func nftRuleset(t *testing.T) string {
	t.Helper()
	out, err := run("ip", "netns", "exec", E.ns, "nft", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// assertNotHeld checks that a VM that is not running holds nothing: no
// process names its dir, no rule or guard chain carries its id or TAP, no
// handles.json, and the TAP it had is deleted or idle in the pool.
func assertNotHeld(t *testing.T, v vmView, taps ...string) {
	t.Helper()
	if procs := procsReferencing(t, v.Dir); len(procs) > 0 {
		t.Errorf("%s: a process still references %s: %s", v.Name, v.Dir, strings.Join(procs, "; "))
	}
	rules := nftRuleset(t)
	if strings.Contains(rules, "vm="+v.ID) {
		t.Errorf("%s: nft still has rules tagged vm=%s:\n%s", v.Name, v.ID, rules)
	}
	for _, tap := range append(taps, v.Tap) {
		if tap != "" && strings.Contains(rules, "guard-"+tap+" ") {
			t.Errorf("%s: guard chain for %s left:\n%s", v.Name, tap, rules)
		}
		assertTapReleased(t, tap, v.Name)
	}
	if _, err := os.Stat(filepath.Join(v.Dir, "handles.json")); !os.IsNotExist(err) {
		t.Errorf("%s: handles.json left (err %v)", v.Name, err)
	}
}

// sshUntil retries `vm ssh -- true` until the guest answers (an adopted VM
// may still be booting).
func sshUntil(t *testing.T, name string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r := E.bangerRes("vm", "ssh", name, "--", "true")
		if r.code == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm ssh %s -- true: exit %d within %s: %s", name, r.code, within, r.stderr)
		}
		time.Sleep(time.Second)
	}
}

// TestCrashAfterEachStartStep: bangerd SIGKILLed right after each start step
// (the failpoint), then restarted normally. Reconcile must leave a VM that is
// not running with nothing held (killing a VMM its row never recorded), adopt
// one whose row says running and whose VMM lives (vmm_launch, wait_ready), and
// the VM must start and answer again.
func TestCrashAfterEachStartStep(t *testing.T) {
	const name = "crashsteps"
	deleteOnCleanup(t, name)
	t.Cleanup(func() { stopDaemon(t) }) // the next test's CLI call starts a clean one
	must(t, "vm", "create", "--name", name, "--nat", "--no-start")
	created := showVM(t, name)
	// vmm_launch:started is the window inside vmm_launch: QEMU runs and
	// handles.json names it, but the row does not say running yet.
	for _, step := range []string{"seed", "tap", "nat", "vmm_launch:started", "vmm_launch", "wait_ready"} {
		t0 := time.Now()
		upBefore := map[string]bool{}
		for _, tap := range upPoolTaps(t) {
			upBefore[tap] = true
		}
		crashDaemonAfter(t, step, "vm", "start", name)
		// What the crash left, seen without a daemon.
		var claimed []string
		for _, tap := range upPoolTaps(t) {
			if !upBefore[tap] {
				claimed = append(claimed, tap)
			}
		}
		rules := nftRuleset(t)
		procs := procsReferencing(t, created.Dir)
		switch step {
		case "seed":
			if len(claimed) != 0 || len(procs) != 0 {
				t.Fatalf("%s: crash left taps %v procs %v", step, claimed, procs)
			}
		case "tap":
			if len(claimed) != 1 || len(procs) != 0 {
				t.Fatalf("%s: want one claimed TAP up and no VMM, have taps %v procs %v", step, claimed, procs)
			}
		default:
			if len(claimed) != 1 || !strings.Contains(rules, "guard-"+claimed[0]+" ") {
				t.Fatalf("%s: want one claimed TAP with its guard, have taps %v\n%s", step, claimed, rules)
			}
			if (step == "nat") != (len(procs) == 0) {
				t.Fatalf("%s: vmm processes %v", step, procs)
			}
		}
		// Restart the daemon normally: reconcile runs before it serves.
		must(t, "vm", "list") // auto-starts bangerd
		v := showVM(t, name)
		switch step {
		case "vmm_launch", "wait_ready":
			procs := procsReferencing(t, v.Dir)
			if v.State != "running" || v.PID == 0 || len(procs) != 1 || !strings.HasPrefix(procs[0], strconv.Itoa(v.PID)+":") {
				t.Fatalf("%s: running vm with a live VMM not adopted: %+v procs %v", step, v, procs)
			}
			if !strings.Contains(nftRuleset(t), "guard-"+v.Tap+" ") {
				t.Fatalf("%s: adopted vm unguarded", step)
			}
			sshUntil(t, name, 2*time.Minute)
			must(t, "vm", "kill", name)
			assertNotHeld(t, showVM(t, name), claimed...)
		default:
			if v.State != "stopped" {
				t.Fatalf("%s: state %s (%s), want stopped", step, v.State, v.LastError)
			}
			assertNotHeld(t, v, claimed...)
		}
		if r := E.bangerRes("vm", "start", name); r.code != 0 {
			log, _ := os.ReadFile(filepath.Join(E.stateDir, "bangerd.log"))
			t.Fatalf("%s: vm start after recovery: exit %d\n%s%s\nbangerd.log tail:\n%s", step, r.code, r.stdout, r.stderr,
				tailStr(string(log), 4000))
		}
		sshUntil(t, name, 10*time.Second)
		must(t, "vm", "kill", name)
		assertNotHeld(t, showVM(t, name))
		t.Logf("kill-after:%s recovered in %.1fs", step, time.Since(t0).Seconds())
	}
	must(t, "vm", "delete", name)
}

// TestCrashDuringCreate: bangerd SIGKILLed in the middle of `vm create`
// (after the root disk, before the row left `creating`). The restarted daemon
// marks the VM error; nothing is held for it and delete removes every trace.
func TestCrashDuringCreate(t *testing.T) {
	const name = "crashcreate"
	deleteOnCleanup(t, name)
	t.Cleanup(func() { stopDaemon(t) })
	crashDaemonAfter(t, "root_disk", "vm", "create", "--name", name, "--nat")
	must(t, "vm", "list") // auto-starts bangerd
	v := showVM(t, name)
	if v.State != "error" || !strings.Contains(v.LastError, "created") {
		t.Fatalf("interrupted create: %+v", v)
	}
	assertNotHeld(t, v)
	must(t, "vm", "delete", name)
	assertGone(t, v)
}
