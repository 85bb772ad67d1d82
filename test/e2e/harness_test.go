//go:build e2e

// Package e2e boots real guests under QEMU. Everything banger does on the
// network happens inside a network namespace this test creates; the daemon
// and CLI run in it via `ip netns exec`.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// env is the shared harness for the whole run.
type env struct {
	bin      string // dir with banger, bangerd, banger-agent
	cache    string // asset cache outside the clone
	ns       string // network namespace
	stateDir string
	deb      string       // cached kernel .deb
	rootfs   string       // cached rootfs tree (mmdebstrap output)
	npm      *npmRegistry // fake npm registry in ns, the daemon's BANGER_NPM_REGISTRY
}

var E *env

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		// A run that tested nothing must not report success.
		fmt.Fprintln(os.Stderr, "e2e: needs root (network namespaces, TAPs, QEMU); run as root")
		os.Exit(1)
	}
	// The suite drives banger as root, the all-in-one mode, in every child it
	// starts (split_test.go runs the split mode with its own environment).
	os.Setenv("BANGER_ALLOW_ROOT", "1")
	e, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		if e != nil {
			e.teardown()
		}
		os.Exit(1)
	}
	E = e
	code := m.Run()
	e.teardown()
	os.Exit(code)
}

func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func setup() (*env, error) {
	e := &env{cache: os.Getenv("BANGER_E2E_CACHE")}
	if e.cache == "" {
		e.cache = "/var/cache/banger-e2e"
	}
	if err := os.MkdirAll(e.cache, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "banger-e2e-")
	if err != nil {
		return nil, err
	}
	e.bin = filepath.Join(tmp, "bin")
	e.stateDir = filepath.Join(tmp, "state")
	root := repoRoot()
	t0 := time.Now()
	for _, b := range []struct {
		out, pkg string
		static   bool
	}{
		{"banger", "./cmd/banger", false}, {"bangerd", "./cmd/bangerd", false}, {"banger-agent", "./cmd/banger-agent", true},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(e.bin, b.out), b.pkg)
		cmd.Dir = root
		cmd.Env = os.Environ()
		if b.static {
			cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return e, fmt.Errorf("build %s: %w\n%s", b.pkg, err, out)
		}
	}
	logf("built binaries in %.1fs", time.Since(t0).Seconds())

	e.ns = fmt.Sprintf("banger-e2e-%d", os.Getpid())
	if _, err := run("ip", "netns", "add", e.ns); err != nil {
		return e, err
	}
	if _, err := run("ip", "-n", e.ns, "link", "set", "lo", "up"); err != nil {
		return e, err
	}
	// Before the first CLI call: it starts the daemon, which keeps the
	// registry address from its environment.
	if e.npm, err = startNPMRegistry(e.ns, e.cache); err != nil {
		return e, err
	}
	if e.deb, err = cachedKernelDeb(e.cache); err != nil {
		return e, err
	}
	if e.rootfs, err = cachedRootfs(e.cache); err != nil {
		return e, err
	}
	// Import the kernel and build the default image through the CLI, as a user would.
	t0 = time.Now()
	if out, err := e.banger("kernel", "import", "--deb", e.deb); err != nil {
		return e, fmt.Errorf("kernel import: %w\n%s", err, out)
	}
	logf("kernel import in %.1fs", time.Since(t0).Seconds())
	t0 = time.Now()
	if out, err := e.banger("image", "build", "default", "--from-dir", e.rootfs); err != nil {
		return e, fmt.Errorf("image build: %w\n%s", err, out)
	}
	logf("image build (from cached rootfs) in %.1fs", time.Since(t0).Seconds())
	return e, nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", args...)
}

func (e *env) teardown() {
	if e.ns == "" {
		return
	}
	// Stop the daemon and every VMM it started, then drop the namespace (which
	// takes the bridge and TAPs with it).
	_, _ = e.banger("daemon", "stop")
	time.Sleep(300 * time.Millisecond)
	_, _ = run("pkill", "-9", "-f", e.stateDir)
	e.npm.close()
	_, _ = run("ip", "netns", "del", e.ns)
	if os.Getenv("BANGER_E2E_KEEP") == "" {
		_ = os.RemoveAll(filepath.Dir(e.stateDir))
	}
}

// cmd builds a banger CLI invocation inside the test namespace.
func (e *env) cmd(args ...string) *exec.Cmd {
	full := append([]string{"netns", "exec", e.ns, filepath.Join(e.bin, "banger"), "--state-dir", e.stateDir}, args...)
	cmd := exec.Command("ip", full...)
	cmd.Env = append(os.Environ(), "BANGER_SUBNET=172.30.7.0/24")
	if e.npm != nil {
		cmd.Env = append(cmd.Env, "BANGER_NPM_REGISTRY="+e.npm.url, "BANGER_NPM_INSECURE=1")
	}
	return cmd
}

// banger runs the CLI and returns combined output.
func (e *env) banger(args ...string) (string, error) {
	out, err := e.cmd(args...).CombinedOutput()
	return string(out), err
}

// result is a finished CLI run.
type result struct {
	stdout, stderr string
	code           int
	dur            time.Duration
}

func (e *env) bangerRes(args ...string) result {
	cmd := e.cmd(args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	t0 := time.Now()
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String(), dur: time.Since(t0)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		r.code = -1
		r.stderr += err.Error()
	}
	return r
}

// must runs the CLI and fails the test on a non-zero exit.
func must(t *testing.T, args ...string) string {
	t.Helper()
	r := E.bangerRes(args...)
	if r.code != 0 {
		t.Fatalf("banger %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

type vmView struct {
	ID, Name, State string
	LastError       string `json:"last_error"`
	GuestIP         string `json:"guest_ip"`
	Tap             string
	PID             int
	Dir             string
	CloneMethod     string `json:"clone_method"`
}

func showVM(t *testing.T, name string) vmView {
	t.Helper()
	var v vmView
	out := must(t, "vm", "show", name, "--json")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("vm show %s: %v\n%s", name, err, out)
	}
	return v
}

// deleteOnCleanup makes sure a test's VM never outlives it.
func deleteOnCleanup(t *testing.T, name string) {
	t.Cleanup(func() { _, _ = E.banger("vm", "delete", "--force", name) })
}

// assertGone checks that a deleted VM left no process, TAP, directory or pin.
func assertGone(t *testing.T, v vmView) {
	t.Helper()
	if v.Dir != "" {
		if _, err := os.Stat(v.Dir); !os.IsNotExist(err) {
			t.Errorf("vm dir %s still exists (err %v)", v.Dir, err)
		}
		if procs := procsReferencing(t, v.Dir); len(procs) > 0 {
			t.Errorf("a process still references %s: %s", v.Dir, strings.Join(procs, "; "))
		}
	}
	// Its TAP is deleted or back in the pool (idle: down, no rules).
	assertTapReleased(t, v.Tap, v.Name)
	kh := filepath.Join(E.stateDir, "ssh", "known_hosts")
	for _, host := range []string{v.GuestIP, v.Name + ".vm"} {
		if host == "" || host == ".vm" {
			continue
		}
		if pinned(t, kh, host) {
			t.Errorf("known_hosts still pins %s", host)
		}
	}
}

// pinned asks ssh-keygen, which parses the file as ssh does, whether host has
// a key in the known_hosts file at path.
func pinned(t *testing.T, path, host string) bool {
	t.Helper()
	if _, err := os.Stat(path); os.IsNotExist(err) {
		return false
	}
	out, err := exec.Command("ssh-keygen", "-F", host, "-f", path).CombinedOutput()
	if err == nil {
		return true
	}
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 1 && len(bytes.TrimSpace(out)) == 0 {
		return false
	}
	t.Fatalf("ssh-keygen -F %s -f %s: %v\n%s", host, path, err, out)
	return false
}

// procsReferencing scans /proc (no procps needed) for processes whose command
// line contains s, and returns "pid: cmdline" for each.
func procsReferencing(t *testing.T, s string) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatalf("read /proc: %v", err)
	}
	self := os.Getpid()
	var found []string
	for _, e := range ents {
		pid := 0
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue // exited, or a kernel thread
		}
		cmdline := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		if strings.Contains(cmdline, s) {
			found = append(found, fmt.Sprintf("%d: %s", pid, cmdline))
		}
	}
	return found
}

// --- asset cache -----------------------------------------------------------

// cachedKernelDeb downloads the current Debian cloud kernel package once; the
// key is the package name+version apt resolves, so a new kernel refreshes it.
func cachedKernelDeb(cache string) (string, error) {
	dir := filepath.Join(cache, "kernel")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if os.Getenv("BANGER_E2E_OFFLINE") != "" {
		if m, _ := filepath.Glob(filepath.Join(dir, "linux-image-*.deb")); len(m) > 0 {
			return m[len(m)-1], nil
		}
	}
	out, err := run("apt-cache", "depends", "linux-image-cloud-amd64")
	if err != nil || !strings.Contains(out, "linux-image-") {
		_, _ = run("apt-get", "update", "-q")
		if out, err = run("apt-cache", "depends", "linux-image-cloud-amd64"); err != nil {
			return "", err
		}
	}
	pkg := ""
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "Depends: linux-image-") && strings.HasSuffix(line, "-cloud-amd64") {
			pkg = strings.TrimPrefix(line, "Depends: ")
			break
		}
	}
	if pkg == "" {
		return "", fmt.Errorf("cannot resolve linux-image-cloud-amd64:\n%s", out)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb")); len(m) > 0 {
		return m[len(m)-1], nil
	}
	cmd := exec.Command("apt-get", "download", pkg)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %w\n%s", pkg, err, b)
	}
	m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if len(m) == 0 {
		return "", fmt.Errorf("apt-get download %s produced no .deb", pkg)
	}
	return m[len(m)-1], nil
}

// rootfsIncludes is the package set of the default image; part of the cache key.
const rootfsIncludes = "systemd-sysv,openssh-server,iproute2,ca-certificates,git"

// cachedRootfs runs mmdebstrap once per key and keeps the tree.
func cachedRootfs(cache string) (string, error) {
	h := sha256.Sum256([]byte("bookworm|variant=apt|" + rootfsIncludes + "|v1"))
	key := hex.EncodeToString(h[:8])
	dir := filepath.Join(cache, "rootfs-"+key)
	if _, err := os.Stat(dir + ".complete"); err == nil {
		return dir, nil
	}
	_ = os.RemoveAll(dir)
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "mmdebstrap", "--variant=apt", "--include="+rootfsIncludes,
		"--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/info/*",
		"bookworm", tmp)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("mmdebstrap: %w\n%s", err, tailStr(out.String(), 3000))
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	if err := os.WriteFile(dir+".complete", nil, 0o644); err != nil {
		return "", err
	}
	logf("mmdebstrap rootfs in %.1fs (cached at %s)", time.Since(t0).Seconds(), dir)
	return dir, nil
}

func tailStr(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

var _ = io.Discard
