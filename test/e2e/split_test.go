//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The split mode: `banger system helper --owner U` as root, and U's own
// banger auto-starting U's bangerd, in a namespace of the test's own. The
// kernel and image are the harness's (built as root), copied into U's state
// dir and chowned: image build as a non-root owner is not this test's
// subject.
const splitSubnet = "172.30.8.0/24"

type splitEnv struct {
	ns, user          string
	uid, gid          int
	dir, bin, home    string
	state, sock, hlog string
	helper            *exec.Cmd
}

func newSplit(t *testing.T) *splitEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "banger-split-")
	if err != nil {
		t.Fatal(err)
	}
	s := &splitEnv{dir: dir, bin: filepath.Join(dir, "bin"), home: filepath.Join(dir, "home"),
		state: filepath.Join(dir, "state"), sock: filepath.Join(dir, "run", "helper.sock"),
		hlog: filepath.Join(dir, "helper.log"),
		user: fmt.Sprintf("bgsplit%d", os.Getpid()%100000), ns: fmt.Sprintf("banger-split-%d", os.Getpid())}
	// Cleanups run last-registered first: the user goes last.
	t.Cleanup(func() {
		if os.Getenv("BANGER_E2E_KEEP") == "" {
			_ = os.RemoveAll(dir)
		}
	})
	if _, err := run("useradd", "-M", "-U", "-d", s.home, "-s", "/usr/sbin/nologin", s.user); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = run("userdel", s.user) })
	u, err := user.Lookup(s.user)
	if err != nil {
		t.Fatal(err)
	}
	s.uid, _ = strconv.Atoi(u.Uid)
	s.gid, _ = strconv.Atoi(u.Gid)
	if _, err := run("ip", "netns", "add", s.ns); err != nil {
		t.Fatal(err)
	}
	_, _ = run("ip", "-n", s.ns, "link", "set", "lo", "up")
	t.Cleanup(func() {
		s.killHelper()
		// Whatever the user left (daemon, VMMs) dies with the user's processes.
		_, _ = run("pkill", "-9", "-u", strconv.Itoa(s.uid))
		time.Sleep(200 * time.Millisecond)
		_, _ = run("ip", "netns", "del", s.ns)
	})
	for _, c := range [][]string{
		{"chmod", "0755", dir},
		{"mkdir", "-m", "0755", s.bin, filepath.Dir(s.sock)},
		{"cp", filepath.Join(E.bin, "banger"), filepath.Join(E.bin, "bangerd"), filepath.Join(E.bin, "banger-agent"), s.bin},
		{"mkdir", "-m", "0700", s.home, s.state},
		// The kernel and image, imported by root (all-in-one, a daemon of
		// its own that serves no DNS) into the user's state dir, then chowned.
		{filepath.Join(s.bin, "banger"), "--state-dir", s.state, "kernel", "import", "--deb", E.deb},
		{filepath.Join(s.bin, "banger"), "--state-dir", s.state, "image", "build", "default", "--from-dir", E.rootfs},
		{filepath.Join(s.bin, "banger"), "--state-dir", s.state, "daemon", "stop"},
	} {
		if _, err := runEnv([]string{"BANGER_DNS=off"}, c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	// Wait for the root daemon to be gone before handing its state over.
	for i := 0; i < 100 && len(procsReferencing(t, s.state)) > 0; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := run("chown", "-R", fmt.Sprintf("%d:%d", s.uid, s.gid), s.home, s.state); err != nil {
		t.Fatal(err)
	}
	return s
}

func runEnv(env []string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (s *splitEnv) startHelper(t *testing.T, env ...string) {
	t.Helper()
	logf, err := os.OpenFile(s.hlog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", s.ns, filepath.Join(s.bin, "banger"), "system", "helper",
		"--owner", s.user, "--socket", s.sock, "--subnet", splitSubnet)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.helper = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(s.sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			var st unix.Stat_t
			if unix.Stat(s.sock, &st) == nil && int(st.Uid) == s.uid && st.Mode&0o777 == 0o600 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("helper socket never appeared as 0600 uid %d:\n%s", s.uid, s.helperLog())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *splitEnv) killHelper() {
	if s.helper == nil {
		return
	}
	_ = s.helper.Process.Kill()
	_ = s.helper.Wait()
	s.helper = nil
}

func (s *splitEnv) helperLog() string {
	b, _ := os.ReadFile(s.hlog)
	return string(b)
}

func (s *splitEnv) daemonLog() string {
	b, _ := os.ReadFile(filepath.Join(s.state, "bangerd.log"))
	return string(b)
}

// banger runs the CLI as the user, inside the namespace, with a clean
// environment (no BANGER_ALLOW_ROOT from the harness).
func (s *splitEnv) banger(extraEnv []string, args ...string) result {
	env := []string{"HOME=" + s.home, "USER=" + s.user, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"BANGER_HELPER=" + s.sock, "BANGER_SUBNET=" + splitSubnet}
	full := append([]string{"netns", "exec", s.ns, "setpriv", "--reuid", strconv.Itoa(s.uid), "--regid", strconv.Itoa(s.gid),
		"--init-groups", "env", "-i"}, append(env, extraEnv...)...)
	full = append(full, filepath.Join(s.bin, "banger"), "--state-dir", s.state)
	cmd := exec.Command("ip", append(full, args...)...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		r.code = -1
		r.stderr += err.Error()
	}
	return r
}

func (s *splitEnv) must(t *testing.T, args ...string) string {
	t.Helper()
	r := s.banger(nil, args...)
	if r.code != 0 {
		t.Fatalf("banger %s (as %s): exit %d\nstdout:\n%s\nstderr:\n%s\ndaemon log tail:\n%s\nhelper log tail:\n%s",
			strings.Join(args, " "), s.user, r.code, r.stdout, r.stderr, tailStr(s.daemonLog(), 3000), tailStr(s.helperLog(), 3000))
	}
	return r.stdout
}

func (s *splitEnv) show(t *testing.T, name string) vmView {
	t.Helper()
	var v vmView
	out := s.must(t, "vm", "show", name, "--json")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("vm show %s: %v\n%s", name, err, out)
	}
	return v
}

func (s *splitEnv) daemonPID() int {
	b, err := os.ReadFile(filepath.Join(s.state, "bangerd.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func (s *splitEnv) stopDaemon(t *testing.T) {
	t.Helper()
	pid := s.daemonPID()
	_ = s.banger(nil, "--no-autostart", "daemon", "stop")
	deadline := time.Now().Add(10 * time.Second)
	for pid > 0 && syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("bangerd pid %d did not stop", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *splitEnv) nft(t *testing.T) string {
	t.Helper()
	out, err := run("ip", "netns", "exec", s.ns, "nft", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// upTaps lists the pooled TAPs that are up in the namespace.
func (s *splitEnv) upTaps(t *testing.T) []string {
	t.Helper()
	out, err := run("ip", "-n", s.ns, "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	var up []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && strings.HasPrefix(f[1], poolTapPrefix) && strings.Contains(f[2], ",UP") {
			up = append(up, strings.TrimSuffix(f[1], ":"))
		}
	}
	return up
}

// assertNothingHeld: no VMM, no rule tagged with the VM, no pooled TAP up.
func (s *splitEnv) assertNothingHeld(t *testing.T, v vmView, when string) {
	t.Helper()
	if procs := procsReferencing(t, v.Dir); len(procs) > 0 {
		t.Errorf("%s: a process still references %s: %s", when, v.Dir, strings.Join(procs, "; "))
	}
	if rules := s.nft(t); strings.Contains(rules, "vm="+v.ID) {
		t.Errorf("%s: rules tagged vm=%s left:\n%s", when, v.ID, rules)
	}
	if up := s.upTaps(t); len(up) > 0 {
		t.Errorf("%s: pooled TAPs still up: %v", when, up)
	}
}

type procInfo struct {
	pid     int
	cmdline string
	status  string
}

// procsUnder lists the processes whose command line names s.dir (binaries
// and state live there).
func (s *splitEnv) procs(t *testing.T) []procInfo {
	t.Helper()
	var out []procInfo
	for _, line := range procsReferencing(t, s.dir) {
		pidStr, cmdline, _ := strings.Cut(line, ": ")
		pid, _ := strconv.Atoi(pidStr)
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		out = append(out, procInfo{pid: pid, cmdline: cmdline, status: string(st)})
	}
	return out
}

func statusField(status, key string) string {
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// assertConfined: no banger process is root but the helper, and every QEMU
// runs as the user with a seccomp filter and no_new_privs.
func (s *splitEnv) assertConfined(t *testing.T) {
	t.Helper()
	qemus := 0
	for _, p := range s.procs(t) {
		uid := strings.Fields(statusField(p.status, "Uid"))
		if len(uid) < 4 {
			continue
		}
		root := false
		for _, u := range uid {
			root = root || u == "0"
		}
		if root && (s.helper == nil || p.pid != s.helper.Process.Pid) {
			t.Errorf("a banger process runs as root (Uid %v): %d %s", uid, p.pid, p.cmdline)
		}
		if strings.Contains(p.cmdline, "qemu-system") {
			qemus++
			if uid[0] != strconv.Itoa(s.uid) || uid[1] != strconv.Itoa(s.uid) {
				t.Errorf("qemu %d runs as Uid %v, want %d", p.pid, uid, s.uid)
			}
			if sc, nnp := statusField(p.status, "Seccomp"), statusField(p.status, "NoNewPrivs"); sc != "2" || nnp != "1" {
				t.Errorf("qemu %d: Seccomp %q NoNewPrivs %q, want 2 and 1", p.pid, sc, nnp)
			}
		}
	}
	if qemus == 0 {
		t.Errorf("no qemu found under %s: the check checked nothing", s.dir)
	}
}

// rawHelperCall connects to the helper from a thread whose effective uid is
// uid (SO_PEERCRED records it) and sends one raw request line.
func rawHelperCall(sock string, uid int, line string) (map[string]any, error) {
	type res struct {
		rep map[string]any
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			ch <- res{err: fmt.Errorf("setresuid: %v", e)}
			return // the thread dies with the goroutine
		}
		conn, err := net.DialTimeout("unix", sock, 5*time.Second)
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			ch <- res{err: fmt.Errorf("restore uid: %v", e)}
			return
		}
		runtime.UnlockOSThread()
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = conn.Write([]byte(line + "\n"))
		buf := make([]byte, 64<<10)
		n, _ := conn.Read(buf)
		var rep map[string]any
		if err := json.Unmarshal(bytes.TrimSpace(buf[:n]), &rep); err != nil {
			ch <- res{err: fmt.Errorf("reply %q: %w", buf[:n], err)}
			return
		}
		ch <- res{rep: rep}
	}()
	r := <-ch
	return r.rep, r.err
}

func errCode(rep map[string]any) string {
	e, _ := rep["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// splitRemote is a namespace beyond the split namespace's uplink, for NAT.
func (s *splitEnv) remote(t *testing.T) {
	t.Helper()
	remote := fmt.Sprintf("banger-sremote-%d", os.Getpid())
	for _, c := range [][]string{
		{"ip", "netns", "add", remote},
		{"ip", "-n", remote, "link", "set", "lo", "up"},
		{"ip", "-n", s.ns, "link", "add", "bgsnat0", "type", "veth", "peer", "name", "bgsnat1", "netns", remote},
		{"ip", "-n", s.ns, "addr", "add", uplinkIP + "/24", "dev", "bgsnat0"},
		{"ip", "-n", s.ns, "link", "set", "bgsnat0", "up"},
		{"ip", "-n", remote, "addr", "add", remoteIP + "/24", "dev", "bgsnat1"},
		{"ip", "-n", remote, "link", "set", "bgsnat1", "up"},
	} {
		if _, err := run(c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _, _ = run("ip", "netns", "del", remote) })
	var ln net.Listener
	inNS(t, remote, func() {
		var err error
		if ln, err = net.Listen("tcp4", remoteIP+":8080"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "hello-from-remote %s\n", host)
			c.Close()
		}
	}()
}

func TestSplitMode(t *testing.T) {
	s := newSplit(t)
	s.remote(t)

	// The user's daemon auto-starts before any helper exists: what needs no
	// privilege works, and its DNS server waits for the helper's port 53.
	if out := s.must(t, "image", "list"); !strings.Contains(out, "default") {
		t.Fatalf("image list without a helper: %q", out)
	}
	if !strings.Contains(s.daemonLog(), "dns server waits for the privileged helper") {
		t.Errorf("daemon log does not say DNS waits for the helper:\n%s", tailStr(s.daemonLog(), 2000))
	}
	s.startHelper(t)

	// The user's banger refuses nothing, starts the user's daemon, which
	// reaches the root helper for every privileged step.
	s.must(t, "vm", "create", "--name", "sp1", "--nat")
	v := s.show(t, "sp1")
	if v.State != "running" || v.PID == 0 {
		t.Fatalf("after create: %+v", v)
	}
	// The VMM runs as the user and reads the image through the overlay.
	if v.CloneMethod != "qcow2-overlay" && v.CloneMethod != "reflink" {
		t.Errorf("root disk made by %q, want qcow2-overlay (or reflink)", v.CloneMethod)
	}
	if out := s.must(t, "vm", "ssh", "sp1", "--", "hostname"); out != "sp1\n" {
		t.Errorf("hostname = %q", out)
	}
	// DNS: the daemon serves port 53 on the gateway through sockets the
	// helper bound and passed.
	if out := s.must(t, "vm", "ssh", "sp1", "--", "getent hosts sp1.vm"); !strings.HasPrefix(out, v.GuestIP+" ") {
		t.Errorf("guest: getent hosts sp1.vm = %q, want %s", out, v.GuestIP)
	}
	// NAT: the remote sees the uplink's address (masquerade).
	if out := s.must(t, "vm", "ssh", "sp1", "--", reachRemote); strings.TrimSpace(out) != "hello-from-remote "+uplinkIP {
		t.Errorf("nat: %q", out)
	}
	s.assertConfined(t)
	// vm show --json reports the VMM's confinement; doctor the helper.
	var vj struct {
		VMM *struct {
			UID        int    `json:"uid"`
			Seccomp    string `json:"seccomp"`
			NoNewPrivs bool   `json:"no_new_privs"`
		} `json:"vmm"`
	}
	if err := json.Unmarshal([]byte(s.must(t, "vm", "show", "sp1", "--json")), &vj); err != nil || vj.VMM == nil ||
		vj.VMM.UID != s.uid || vj.VMM.Seccomp != "filter" || !vj.VMM.NoNewPrivs {
		t.Errorf("vm show --json vmm: %+v %v", vj.VMM, err)
	}
	if r := s.banger(nil, "doctor", "--json"); !strings.Contains(r.stdout, "helper at "+s.sock+" answers") {
		t.Errorf("doctor does not report the helper:\n%s%s", r.stdout, r.stderr)
	}
	// The op id ties the lines: the daemon forwards its op ids to the helper.
	hl := s.helperLog()
	if !strings.Contains(hl, `"msg":"helper rpc completed"`) || !strings.Contains(hl, `"op":"open_tap"`) {
		t.Errorf("helper log has no completed open_tap:\n%s", tailStr(hl, 3000))
	}
	shared := false
	for _, line := range strings.Split(hl, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["op"] != "create_tap" {
			continue
		}
		if id, _ := rec["op_id"].(string); id != "" && strings.Contains(s.daemonLog(), `"op_id":"`+id+`"`) {
			shared = true
		}
	}
	if !shared {
		t.Errorf("no create_tap op id of the helper log appears in bangerd.log")
	}

	s.must(t, "vm", "stop", "sp1")
	s.assertNothingHeld(t, s.show(t, "sp1"), "after stop")
	s.must(t, "vm", "start", "sp1")
	s.assertConfined(t)
	if out := s.must(t, "vm", "run", "--rm", "--", "uname", "-s"); !strings.Contains(out, "Linux") {
		t.Errorf("vm run: %q", out)
	}

	// The helper refuses another uid, with the reason logged: root (which
	// the socket's mode lets through) is not the owner...
	rep, err := rawHelperCall(s.sock, 0, `{"op":"ensure_bridge"}`)
	if err != nil || errCode(rep) != "permission_denied" {
		t.Errorf("root's call: %v %v, want permission_denied", rep, err)
	}
	if !strings.Contains(s.helperLog(), `"msg":"helper refused connection","peer_uid":0`) {
		t.Errorf("refusal of uid 0 not logged:\n%s", tailStr(s.helperLog(), 2000))
	}
	// ...and a third user cannot even connect (0600, owned by the owner).
	if _, err := rawHelperCall(s.sock, 65534, `{"op":"ensure_bridge"}`); !errors.Is(err, syscall.EACCES) {
		t.Errorf("nobody's connect: %v, want EACCES", err)
	}
	// The owner's out-of-range arguments are refused and logged.
	ip := net.ParseIP("10.9.9.9").To4()
	for _, raw := range []string{
		fmt.Sprintf(`{"op":"create_tap","args":{"name":"eth0","uid":%d}}`, s.uid),
		`{"op":"open_tap","args":{"name":"bgsnat0"}}`,
		fmt.Sprintf(`{"op":"fw_apply","args":{"id":"%s","ip":"%s","mac":"02:ba:0a:09:09:09","tap":"bgr-p0","nat":true}}`, v.ID, ip),
		`{"op":"fw_remove","args":{"id":"no-such-vm","tap":"bgr-p0"}}`,
		`{"op":"run","args":{"cmd":"id"}}`,
	} {
		rep, err := rawHelperCall(s.sock, s.uid, raw)
		if err != nil || errCode(rep) != "invalid" {
			t.Errorf("owner's %s: %v %v, want invalid", raw, rep, err)
		}
	}
	hl = s.helperLog()
	for _, reason := range []string{`tap \"eth0\": not a pooled banger tap`, `tap \"bgsnat0\": not a pooled banger tap`,
		`outside the subnet`, `vm id \"no-such-vm\"`, `unknown verb \"run\"`} {
		if !strings.Contains(hl, reason) {
			t.Errorf("helper log lacks the refusal %q", reason)
		}
	}

	// kill -9 of the helper while a VM runs, then a start while it is
	// gone: the start fails saying how to start the helper; after the helper
	// restarts, stop leaves nothing behind.
	s.killHelper()
	if r := s.banger(nil, "vm", "create", "--name", "sp2"); r.code == 0 || !strings.Contains(r.stderr, "system helper --owner") {
		t.Errorf("create without a helper: exit %d %q", r.code, r.stderr)
	}
	s.startHelper(t)
	if r := s.banger(nil, "vm", "show", "sp2", "--json"); r.code == 0 {
		var v2 vmView
		_ = json.Unmarshal([]byte(r.stdout), &v2)
		s.must(t, "vm", "delete", "--force", "sp2")
		if v2.Dir != "" {
			if procs := procsReferencing(t, v2.Dir); len(procs) > 0 {
				t.Errorf("sp2 left processes: %v", procs)
			}
		}
	}
	s.must(t, "vm", "ssh", "sp1", "--", "true")
	s.must(t, "vm", "stop", "sp1")
	s.assertNothingHeld(t, s.show(t, "sp1"), "after stop with a restarted helper")

	// kill -9 of the daemon mid-start (after the firewall step: TAP and
	// rules exist, no VMM yet): the restarted daemon's reconcile removes
	// them through the helper.
	s.stopDaemon(t)
	r := s.banger([]string{failpointEnv + "=kill-after:nat"}, "vm", "start", "sp1")
	if r.code == 0 {
		t.Fatalf("failpoint did not fire: %s", r.stdout)
	}
	if !strings.Contains(s.daemonLog(), `"failpoint: killing the daemon"`) {
		t.Fatalf("daemon did not die by the failpoint: %s\n%s", r.stderr, tailStr(s.daemonLog(), 2000))
	}
	s.must(t, "vm", "list") // auto-starts the daemon, which reconciles
	s.assertNothingHeld(t, s.show(t, "sp1"), "after a daemon killed mid-start")
	s.must(t, "vm", "start", "sp1")
	s.must(t, "vm", "ssh", "sp1", "--", "true")

	// kill -9 of the helper mid-start: frozen while the daemon waits on it,
	// then killed; after the helper and daemon restart nothing is held.
	s.must(t, "vm", "stop", "sp1")
	_ = s.helper.Process.Signal(syscall.SIGSTOP)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan result, 1)
	go func() { done <- s.banger(nil, "vm", "start", "sp1") }()
	time.Sleep(2 * time.Second) // the start is blocked on its first helper call
	s.killHelper()
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatal("vm start did not return after the helper died")
	}
	if r.code == 0 {
		t.Errorf("start succeeded with the helper killed under it")
	}
	s.startHelper(t)
	s.stopDaemon(t)
	s.must(t, "vm", "list")
	s.assertNothingHeld(t, s.show(t, "sp1"), "after the helper was killed mid-start")

	// kill -9 of the helper at a chosen verb (its failpoint): at open_tap
	// the TAP is up and the rules are in, and the daemon's undo cannot reach
	// the helper; the restarted helper and daemon clean up.
	s.killHelper()
	s.startHelper(t, "BANGER_HELPER_FAILPOINT=kill-before:open_tap")
	if r := s.banger(nil, "vm", "start", "sp1"); r.code == 0 {
		t.Fatalf("start succeeded with the helper killed at open_tap")
	}
	if !strings.Contains(s.helperLog(), `"msg":"failpoint: killing the helper"`) {
		t.Fatalf("the helper did not die by its failpoint:\n%s", tailStr(s.helperLog(), 2000))
	}
	v = s.show(t, "sp1")
	if up := s.upTaps(t); len(up) == 0 && !strings.Contains(s.nft(t), "vm="+v.ID) {
		t.Errorf("nothing was left to clean up: the scenario tests nothing")
	}
	s.startHelper(t)
	s.stopDaemon(t)
	s.must(t, "vm", "list")
	s.assertNothingHeld(t, s.show(t, "sp1"), "after the helper was killed at open_tap")
	s.must(t, "vm", "start", "sp1")
	s.must(t, "vm", "ssh", "sp1", "--", "true")
	s.assertConfined(t)
	s.must(t, "vm", "stop", "sp1")

	v = s.show(t, "sp1")
	s.must(t, "vm", "delete", "sp1")
	s.assertNothingHeld(t, v, "after delete")
	if _, err := os.Stat(v.Dir); !os.IsNotExist(err) {
		t.Errorf("vm dir %s left", v.Dir)
	}
	s.stopDaemon(t)
	for _, p := range s.procs(t) {
		if s.helper == nil || p.pid != s.helper.Process.Pid {
			t.Errorf("left running: %d %s", p.pid, p.cmdline)
		}
	}
}
