//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSystemInstall runs `banger system install` for real inside a banger
// guest (which boots systemd): both units active and confined, the owner's
// CLI answered by the system bangerd without sudo, the helper's verbs
// working under its unit's hardening, status saying what is wrong, restart,
// uninstall leaving nothing, and --purge.
func TestSystemInstall(t *testing.T) {
	const vm, owner = "sysd", "bob"
	deleteOnCleanup(t, vm)
	t0 := time.Now()
	if r := E.bangerRes("vm", "create", "--name", vm, "--memory", "1024"); r.code != 0 {
		t.Fatalf("create: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("guest up in %.1fs", time.Since(t0).Seconds())

	// Static builds: the guest's libc need not match the host's.
	stage := t.TempDir()
	for _, b := range []struct{ out, pkg string }{
		{"banger", "./cmd/banger"}, {"bangerd", "./cmd/bangerd"}, {"helperprobe", "./test/e2e/helperprobe"},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(stage, b.out), b.pkg)
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.pkg, err, out)
		}
	}
	must(t, "vm", "ssh", vm, "--", "mkdir -p /root/stage")
	for _, f := range []string{"banger", "bangerd", "helperprobe"} {
		copyToGuest(t, vm, filepath.Join(stage, f), "/root/stage/"+f)
	}
	copyToGuest(t, vm, filepath.Join(E.bin, "banger-agent"), "/root/stage/banger-agent")
	t.Logf("binaries in the guest after %.1fs", time.Since(t0).Seconds())

	// sh runs a guest shell line as root and returns stdout; failing fails the test.
	sh := func(line string) string {
		t.Helper()
		r := E.bangerRes("vm", "ssh", vm, "--", line)
		if r.code != 0 {
			t.Fatalf("guest %q: exit %d\nstdout:\n%s\nstderr:\n%s", line, r.code, r.stdout, r.stderr)
		}
		return r.stdout
	}
	shRes := func(line string) result { return E.bangerRes("vm", "ssh", vm, "--", line) }
	as := "runuser -u " + owner + " -- "

	sh("useradd -m -s /bin/sh " + owner)
	sh("chmod 755 /root /root/stage") // the owner runs the staged binaries
	subidsBefore := sh("cat /etc/subuid /etc/subgid 2>/dev/null; true")
	// Not root: refused with what to run instead.
	if r := shRes(as + "/root/stage/banger system install 2>&1; echo rc=$?"); !strings.Contains(r.stdout, "must run as root: sudo banger system install") {
		t.Errorf("install as the owner: %q", r.stdout)
	}
	out := sh("/root/stage/banger system install --owner " + owner)
	t.Logf("install:\n%s", out)

	if got := sh("systemctl is-active banger-helper.service bangerd.service; systemctl is-enabled banger-helper.service bangerd.service"); got != "active\nactive\nenabled\nenabled\n" {
		t.Fatalf("units: %q", got)
	}
	// systemd itself accepts the installed units without a word.
	if got := sh("systemd-analyze verify /etc/systemd/system/banger-helper.service /etc/systemd/system/bangerd.service 2>&1"); strings.TrimSpace(got) != "" {
		t.Errorf("systemd-analyze verify in the guest:\n%s", got)
	}
	// Confinement as configured: the helper root with three capabilities and
	// no_new_privs; bangerd as the owner with CAP_SETUID/SETGID in its
	// bounding set only (newuidmap for rootless image builds).
	helperStatus := sh("grep -E '^(Uid|CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/$(systemctl show -p MainPID --value banger-helper.service)/status")
	for _, want := range []string{"CapBnd:\t0000000000001401", "NoNewPrivs:\t1", "Seccomp:\t2"} {
		if !strings.Contains(helperStatus, want) {
			t.Errorf("helper /proc status lacks %q:\n%s", want, helperStatus)
		}
	}
	uid := strings.TrimSpace(sh("id -u " + owner))
	sh("grep '^" + owner + ":' /etc/subuid && grep '^" + owner + ":' /etc/subgid") // rootless image builds
	daemonStatus := sh("grep -E '^(Uid|CapBnd|CapEff|NoNewPrivs):' /proc/$(systemctl show -p MainPID --value bangerd.service)/status")
	for _, want := range []string{"Uid:\t" + uid + "\t", "CapBnd:\t00000000000000c0", "CapEff:\t0000000000000000"} {
		if !strings.Contains(daemonStatus, want) {
			t.Errorf("bangerd /proc status lacks %q:\n%s", want, daemonStatus)
		}
	}

	// The owner, no sudo: status (text and JSON), daemon status, doctor.
	out = sh(as + "/usr/local/bin/banger system status")
	if !strings.Contains(out, "banger system install: healthy") {
		t.Errorf("status as the owner:\n%s", out)
	}
	var st struct {
		Healthy bool
		Units   []struct {
			Name        string
			ActiveState string `json:"active_state"`
			MainPID     int    `json:"main_pid"`
		}
		Helper, Daemon struct {
			OK   bool
			Info string
		}
	}
	out = sh(as + "/usr/local/bin/banger system status --json")
	if err := json.Unmarshal([]byte(out), &st); err != nil || !st.Healthy || len(st.Units) != 2 || !st.Helper.OK || !st.Daemon.OK {
		t.Fatalf("status --json as the owner (%v):\n%s", err, out)
	}
	// Root reaches systemd even without a D-Bus system bus: the units' states.
	out = sh("/usr/local/bin/banger system status --json")
	st.Units = nil
	if err := json.Unmarshal([]byte(out), &st); err != nil || !st.Healthy || len(st.Units) != 2 ||
		st.Units[0].ActiveState != "active" || st.Units[1].ActiveState != "active" || st.Units[1].MainPID == 0 {
		t.Fatalf("status --json as root (%v):\n%s", err, out)
	}
	daemonPID := strings.TrimSpace(sh("systemctl show -p MainPID --value bangerd.service"))
	var ds struct{ PID, UID int }
	out = sh(as + "/usr/local/bin/banger --no-autostart daemon status --json")
	if err := json.Unmarshal([]byte(out), &ds); err != nil || strconv.Itoa(ds.PID) != daemonPID || strconv.Itoa(ds.UID) != uid {
		t.Errorf("owner's daemon status is not the unit's bangerd (pid %s, uid %s) (%v):\n%s", daemonPID, uid, err, out)
	}
	r := shRes(as + "/usr/local/bin/banger doctor")
	if r.code != 0 && r.code != 1 || !strings.Contains(r.stdout, "ok") {
		t.Errorf("doctor as the owner: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	// Root sees the status too (the helper refuses it, as it should).
	if out := sh("/usr/local/bin/banger system status"); !strings.Contains(out, "healthy") || !strings.Contains(out, "refuses uid 0") {
		t.Errorf("status as root:\n%s", out)
	}

	// The helper's verbs under its unit's hardening, driven as bangerd would.
	// The guest has the kernel but not its modules (nor kmod): load what
	// bridge, TAP and nftables need from the kernel package first.
	cmd := E.cmd("vm", "ssh", vm, "--", "mkdir -p /root/mods && tar -x -C /root/mods && /root/stage/helperprobe load /root/mods")
	cmd.Stdin = guestModules(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("load modules in the guest: %v\n%s", err, out)
	}
	r = shRes(as + "/root/stage/helperprobe")
	t.Logf("helper verbs under the unit:\n%s%s", r.stdout, r.stderr)
	if r.code != 0 {
		logs := shRes("journalctl -u banger-helper.service --no-pager | tail -20")
		t.Errorf("helper verbs failed under the unit: exit %d\n%s\n%s\nhelper log:\n%s", r.code, r.stdout, r.stderr, logs.stdout)
	}
	if out := sh("journalctl -u banger-helper.service --no-pager -o cat"); !strings.Contains(out, `"msg":"helper rpc completed"`) {
		t.Errorf("helper logged no completed rpc:\n%s", out)
	}

	// Broken on purpose: status says which unit and why; the owner's CLI
	// does not start a second bangerd.
	sh("systemctl stop bangerd.service")
	r = shRes("/usr/local/bin/banger system status")
	if r.code != 1 || !strings.Contains(r.stdout, "problem: bangerd.service is inactive") || !strings.Contains(r.stdout, "bangerd.service, last log lines:") {
		t.Errorf("status (root) with bangerd stopped: exit %d\n%s", r.code, r.stdout)
	}
	r = shRes(as + "/usr/local/bin/banger system status")
	if r.code != 1 || !strings.Contains(r.stdout, "bangerd socket") && !strings.Contains(r.stdout, "bangerd does not answer") {
		t.Errorf("status (owner) with bangerd stopped: exit %d\n%s", r.code, r.stdout)
	}
	t.Logf("status as the owner with bangerd stopped:\n%s", r.stdout)
	r = shRes(as + "/usr/local/bin/banger vm list")
	if r.code == 0 || !strings.Contains(r.stderr, "sudo banger system restart") {
		t.Errorf("owner's CLI with the unit stopped: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if out := shRes("pgrep -u " + owner + " -x bangerd"); out.code == 0 {
		t.Errorf("the owner's CLI auto-started a bangerd beside the unit: %s", out.stdout)
	}

	// A bangerd the owner started by hand holds the state dir: restart fails
	// and says why (from the journal) instead of reporting a unit that
	// exits at once as active.
	stateDir := "/home/" + owner + "/.local/state/banger"
	sh(as + "setsid /usr/local/lib/banger/bangerd --state-dir " + stateDir + " </dev/null >/dev/null 2>&1 & " +
		"for i in $(seq 50); do test -S " + stateDir + "/bangerd.sock && exit 0; sleep 0.2; done; exit 1")
	r = shRes("/usr/local/bin/banger system restart")
	if r.code == 0 || !strings.Contains(r.stderr, "another bangerd holds") {
		t.Errorf("restart beside a hand-started bangerd: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	// The hand-started one holds the lock and wrote its pid; the unit's never got that far.
	sh("p=$(cat " + stateDir + "/bangerd.pid); kill $p; for i in $(seq 50); do kill -0 $p 2>/dev/null || exit 0; sleep 0.2; done; exit 1")

	// restart: both back, a new bangerd.
	sh("/usr/local/bin/banger system restart")
	if got := strings.TrimSpace(sh("systemctl show -p MainPID --value bangerd.service")); got == daemonPID || got == "0" {
		t.Errorf("restart: bangerd pid %s (was %s)", got, daemonPID)
	}
	if r := shRes(as + "/usr/local/bin/banger system status"); r.code != 0 {
		t.Errorf("status after restart: exit %d\n%s", r.code, r.stdout)
	}

	// uninstall: nothing of banger in systemd, /run, /etc, /usr/local; state stays.
	sh("/usr/local/bin/banger system uninstall")
	assertUninstalled := func() {
		t.Helper()
		// banger-agent.service is the test guest's own agent, not the install's.
		out := sh("systemctl list-unit-files 'banger*' | grep -v banger-agent | grep -c banger; systemctl list-units --all 'banger*' | grep -v banger-agent | grep -c banger; " +
			"ls -d /run/banger /etc/banger /usr/local/lib/banger /usr/local/bin/banger /etc/systemd/system/banger-helper.service /etc/systemd/system/bangerd.service 2>&1 | grep -vc 'No such file'; " +
			"ps -eo comm | grep -cE '^(banger|bangerd)$'; true")
		if out != "0\n0\n0\n0\n" {
			t.Errorf("after uninstall (unit files, units, paths, processes):\n%s", out)
		}
		if got := sh("cat /etc/subuid /etc/subgid 2>/dev/null; true"); got != subidsBefore {
			t.Errorf("subordinate ids after uninstall:\n%s\nbefore install:\n%s", got, subidsBefore)
		}
	}
	assertUninstalled()
	sh("test -d " + stateDir + "/ssh")

	// Reinstall, then purge: the state goes too.
	sh("/root/stage/banger system install --owner " + owner)
	sh("/usr/local/bin/banger system uninstall --purge")
	assertUninstalled()
	if r := shRes("test -e " + stateDir); r.code == 0 {
		t.Errorf("%s still exists after --purge", stateDir)
	}
	t.Logf("scenario took %.1fs", time.Since(t0).Seconds())
}

// guestModules is a tar of the kernel modules the helper's verbs need
// (bridge, tun, nftables with ct/masq/nat) and an "order" file listing them
// dependencies first, taken from the cached kernel package (depmod on the
// host computes the dependencies).
func guestModules(t *testing.T) io.Reader {
	t.Helper()
	dir := t.TempDir()
	if _, err := run("dpkg-deb", "-x", E.deb, dir); err != nil {
		t.Fatal(err)
	}
	vers, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*"))
	if len(vers) != 1 {
		t.Fatalf("kernel package %s: modules dirs %v", E.deb, vers)
	}
	if _, err := run("depmod", "-b", dir, filepath.Base(vers[0])); err != nil {
		t.Fatal(err)
	}
	dep, err := os.ReadFile(filepath.Join(vers[0], "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	deps := map[string][]string{}
	for _, line := range strings.Split(string(dep), "\n") {
		mod, rest, ok := strings.Cut(line, ":")
		if ok {
			deps[mod] = strings.Fields(rest)
		}
	}
	var order []string
	seen := map[string]bool{}
	var visit func(m string)
	visit = func(m string) {
		if seen[m] {
			return
		}
		seen[m] = true
		ds := deps[m]
		for i := len(ds) - 1; i >= 0; i-- { // modules.dep lists the deepest last
			visit(ds[i])
		}
		order = append(order, m)
	}
	for _, m := range []string{"kernel/drivers/net/tun.ko", "kernel/net/bridge/bridge.ko", "kernel/net/netfilter/nf_tables.ko",
		"kernel/net/netfilter/nft_ct.ko", "kernel/net/netfilter/nft_masq.ko", "kernel/net/netfilter/nft_chain_nat.ko"} {
		if _, ok := deps[m]; !ok {
			t.Fatalf("%s not in %s", m, E.deb)
		}
		visit(m)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range order {
		b, err := os.ReadFile(filepath.Join(vers[0], m))
		if err != nil {
			t.Fatal(err)
		}
		add(filepath.Base(m), b)
	}
	add("order", []byte(strings.Join(order, "\n")+"\n"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}
