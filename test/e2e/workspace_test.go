//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// git runs git in dir with a fixed identity and fails the test on error.
func git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	full := append([]string{"-C", dir, "-c", "user.name=E2E", "-c", "user.email=e2e@banger", "-c", "commit.gpgsign=false"}, args...)
	out, err := exec.Command("git", full...).CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func writeFile(t testing.TB, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

// TestWorkspace: prepare → exec (auto-cd, exit codes) → stop/start intact →
// dirty-host warning → --auto-prepare → pull back → file sync (incl. a
// refused escaping symlink) → refusal on a stopped VM; then `vm run
// --workspace`. Two boots and one restart in all.
func TestWorkspace(t *testing.T) {
	const name = "ws"
	repo := t.TempDir()
	git(t, repo, "init", "-q", "-b", "main")
	writeFile(t, filepath.Join(repo, ".gitignore"), "build/\n", 0o644)
	writeFile(t, filepath.Join(repo, "marker"), "workspace-marker\n", 0o644)
	writeFile(t, filepath.Join(repo, "a.txt"), "v1\n", 0o644)
	writeFile(t, filepath.Join(repo, "build", "junk"), "ignored\n", 0o644)
	// A large file written right before stop must survive it.
	big := make([]byte, 24<<20)
	for i := range big {
		big[i] = byte(i*7 + i>>11)
	}
	if err := os.WriteFile(filepath.Join(repo, "big.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, repo, "add", "-A")
	git(t, repo, "commit", "-qm", "first")
	writeFile(t, filepath.Join(repo, "a.txt"), "v2\n", 0o644)
	git(t, repo, "commit", "-qam", "second")
	bigSum := strings.Fields(mustRun(t, "sha256sum", filepath.Join(repo, "big.bin")))[0]

	// File sync config: files under the owner's home (the daemon's $HOME).
	home, _ := os.UserHomeDir()
	syncDir, err := os.MkdirTemp(home, ".banger-e2e-sync-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(syncDir) })
	rel := "~/" + filepath.Base(syncDir)
	writeFile(t, filepath.Join(syncDir, "tool.conf"), "setting=1\n", 0o640)
	writeFile(t, filepath.Join(syncDir, "token"), "s3cret\n", 0o644)
	if err := os.Symlink("/etc/hostname", filepath.Join(syncDir, "escape")); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`{"files": [{"path": %q}, {"path": %q, "secret": true}]}`, rel+"/tool.conf", rel+"/token")
	writeFile(t, filepath.Join(E.stateDir, "sync.json"), cfg, 0o600)
	t.Cleanup(func() { os.Remove(filepath.Join(E.stateDir, "sync.json")) })

	deleteOnCleanup(t, name)
	must(t, "vm", "create", "--name", name)
	guestSync := "/root/" + filepath.Base(syncDir)
	// Copied at start, modes preserved, the secret 0600.
	if out := must(t, "vm", "exec", name, "--", "sh", "-c", "stat -c '%a %n' "+guestSync+"/*; cat "+guestSync+"/tool.conf"); out != fmt.Sprintf("600 %s/token\n640 %s/tool.conf\nsetting=1\n", guestSync, guestSync) {
		t.Errorf("files synced at start: %q", out)
	}

	t0 := time.Now()
	out := must(t, "vm", "workspace", "prepare", name, "--repo", repo)
	t.Logf("prepare (24 MiB): %.1fs: %s", time.Since(t0).Seconds(), strings.TrimSpace(out))
	if !strings.Contains(out, "full") || !strings.Contains(out, ":/root/repo") {
		t.Errorf("prepare output: %q", out)
	}
	// exec auto-cds into the workspace; history is there; ignored files are not.
	out = must(t, "vm", "exec", name, "--", "sh", "-c", "pwd; cat marker; git log --format=%s; ls build 2>&1 | head -c 0; test -e build && echo has-build || echo no-build")
	if out != "/root/repo\nworkspace-marker\nsecond\nfirst\nno-build\n" {
		t.Fatalf("exec in workspace: %q", out)
	}
	for _, code := range []int{0, 1, 42} {
		if r := E.bangerRes("vm", "exec", name, "--", fmt.Sprintf("exit %d", code)); r.code != code {
			t.Errorf("exec exit %d: got %d (%s)", code, r.code, r.stderr)
		}
	}
	// Stop right after the large prepare: nothing may be lost.
	must(t, "vm", "stop", name)
	must(t, "vm", "start", name)
	out = must(t, "vm", "exec", name, "--", "sh", "-c", "cat marker; git log --format=%s; sha256sum big.bin; git status --porcelain")
	if out != "workspace-marker\nsecond\nfirst\n"+bigSum+"  big.bin\n" {
		t.Fatalf("workspace after stop/start: %q", out)
	}

	// Dirty host: exec warns (one line) and runs the old content.
	writeFile(t, filepath.Join(repo, "a.txt"), "v3-dirty\n", 0o644)
	r := E.bangerRes("vm", "exec", name, "--", "cat", "a.txt")
	if r.code != 0 || r.stdout != "v2\n" || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "warning") || !strings.Contains(r.stderr, "a.txt") {
		t.Fatalf("dirty host warning: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	// --auto-prepare resyncs incrementally (one file), then runs.
	r = E.bangerRes("vm", "exec", name, "--auto-prepare", "--", "cat", "a.txt")
	if r.code != 0 || r.stdout != "v3-dirty\n" || !strings.Contains(r.stderr, "incremental: 1 files") {
		t.Fatalf("--auto-prepare: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r = E.bangerRes("vm", "exec", name, "--", "true"); r.stderr != "" {
		t.Errorf("warning after resync: %q", r.stderr)
	}
	st := must(t, "vm", "workspace", "status", name)
	if !strings.Contains(st, "ws:/root/repo") || !strings.Contains(st, "since sync:  none") {
		t.Errorf("status:\n%s", st)
	}

	// Pull back: a commit and an uncommitted edit made in the VM.
	hostBefore := git(t, repo, "status", "--porcelain") + git(t, repo, "rev-parse", "HEAD")
	must(t, "vm", "exec", name, "--", "sh", "-c",
		"echo from-vm > vm.txt && git add vm.txt && git -c user.name=VM -c user.email=vm@x commit -qm 'vm commit' && echo uncommitted >> marker")
	out = must(t, "vm", "workspace", "pull", name)
	if !strings.Contains(out, "branch banger/ws") {
		t.Errorf("pull: %q", out)
	}
	if got := git(t, repo, "log", "--format=%s", "-3", "banger/ws"); got != "banger: uncommitted changes in vm ws\nvm commit\nsecond\n" {
		t.Fatalf("pulled branch log: %q", got)
	}
	if got := git(t, repo, "show", "banger/ws:marker"); got != "workspace-marker\nuncommitted\n" {
		t.Fatalf("pulled marker: %q", got)
	}
	if got := git(t, repo, "status", "--porcelain") + git(t, repo, "rev-parse", "HEAD"); got != hostBefore {
		t.Fatalf("pull touched the host working tree: %q, was %q", got, hostBefore)
	}
	if r := E.bangerRes("vm", "workspace", "pull", name); r.code == 0 || !strings.Contains(r.stderr, "exists") {
		t.Fatalf("second pull should be refused: %d %s", r.code, r.stderr)
	}

	// File sync on demand, with an escaping symlink refused.
	cfg = fmt.Sprintf(`{"files": [{"path": %q}, {"path": %q}]}`, rel+"/tool.conf", rel+"/escape")
	writeFile(t, filepath.Join(E.stateDir, "sync.json"), cfg, 0o600)
	writeFile(t, filepath.Join(syncDir, "tool.conf"), "setting=2\n", 0o640)
	r = E.bangerRes("vm", "sync", name)
	if r.code != 1 || !strings.Contains(r.stderr, "resolves to /etc/hostname") || !strings.Contains(r.stdout, "tool.conf") {
		t.Fatalf("vm sync: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if out := must(t, "vm", "exec", name, "--", "sh", "-c", "cat "+guestSync+"/tool.conf; test -e "+guestSync+"/escape || echo no-escape"); out != "setting=2\nno-escape\n" {
		t.Fatalf("after vm sync: %q", out)
	}

	// A stopped VM is refused at once: never a hang, never an auto-start.
	must(t, "vm", "stop", name)
	for _, args := range [][]string{
		{"vm", "exec", name, "--", "true"},
		{"vm", "exec", name, "--auto-prepare", "--", "true"},
		{"vm", "workspace", "prepare", name, "--repo", repo},
		{"vm", "workspace", "pull", name, "--branch", "x"},
		{"vm", "sync", name},
	} {
		r := E.bangerRes(args...)
		if r.code == 0 || !strings.Contains(r.stderr, "not_running") || r.dur > 5*time.Second {
			t.Errorf("%v on a stopped vm: code %d in %s: %s", args, r.code, r.dur, r.stderr)
		}
	}
	if v := showVM(t, name); v.State != "stopped" {
		t.Errorf("vm was started by a refused command: %s", v.State)
	}
	must(t, "vm", "delete", name)

	// vm run --workspace: create, prepare, run in it, exit code, --rm.
	r = E.bangerRes("vm", "run", "--rm", "--name", "wsrun", "--workspace", repo, "--", "sh", "-c", "cat a.txt; exit 7")
	if r.code != 7 || r.stdout != "v3-dirty\n" {
		t.Fatalf("vm run --workspace: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := E.bangerRes("vm", "show", "wsrun"); r.code == 0 {
		t.Errorf("--rm left wsrun behind")
	}
	var list []vmView
	_ = json.Unmarshal([]byte(must(t, "vm", "list", "--json")), &list)
	for _, v := range list {
		if v.Name == "wsrun" {
			t.Errorf("wsrun still listed")
		}
	}
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := run(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
