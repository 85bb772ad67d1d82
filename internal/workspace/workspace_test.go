package workspace

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
)

// localGuest is a VM whose "guest" is a directory on this host: Exec runs
// the argv locally with the request's stdio, so the real guest scripts, real
// git and real tar are exercised without booting anything.
type localGuest struct {
	vm      store.VM
	running bool
	execs   int
	// hostile, when set, plays a misbehaving guest instead of running the
	// script: it writes what it wants to the request's stdio.
	hostile func(req guest.ExecRequest) (int, error)
}

func (g *localGuest) Get(ctx context.Context, name string) (store.VM, error) {
	if name != g.vm.Name {
		return store.VM{}, api.ErrNotFound
	}
	return g.vm, nil
}

func (g *localGuest) Running(v store.VM) bool { return g.running }

func (g *localGuest) Exec(ctx context.Context, name string, req guest.ExecRequest) (int, error) {
	if !g.running {
		return 0, api.ErrNotRunning
	}
	g.execs++
	if g.hostile != nil {
		return g.hostile(req)
	}
	env := []string{"GIT_CONFIG_GLOBAL=/dev/null", "GIT_AUTHOR_DATE=", "HOME=" + os.TempDir()}
	return system.Exec{}.Stream(ctx, system.StreamSpec{Name: req.Argv[0], Args: req.Argv[1:], Env: env,
		Stdin: req.Stdin, Stdout: req.Stdout, Stderr: req.Stderr})
}

type fixture struct {
	t     *testing.T
	s     *Service
	g     *localGuest
	host  string // host repo
	home  string // guest home
	ctx   context.Context
	store *store.Store
}

func sh(t *testing.T, dir, script string) string {
	t.Helper()
	out, err := system.Exec{}.Run(context.Background(), "sh", "-c", "cd \"$1\" && "+script, "sh", dir)
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	return string(out)
}

const gitID = "git -c user.name=T -c user.email=t@t -c commit.gpgsign=false"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	if _, err := system.LookPath("git"); err != nil {
		testenv.Missing(t, "git not installed")
	}
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "b.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	v := store.VM{Name: "dev", State: store.StateRunning, Dir: filepath.Join(dir, "vm")}
	if err := st.CreateVM(ctx, &v); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{v.Dir, filepath.Join(dir, "tmp"), filepath.Join(dir, "guest"), filepath.Join(dir, "host")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	g := &localGuest{vm: v, running: true}
	f := &fixture{t: t, g: g, ctx: ctx, store: st, host: filepath.Join(dir, "host"), home: filepath.Join(dir, "guest")}
	f.s = New(Deps{Store: st, VMs: g, Runner: system.Exec{}, Tmp: filepath.Join(dir, "tmp"), GuestHome: f.home,
		Home: filepath.Join(dir, "hosthome"), SyncConfig: filepath.Join(dir, "sync.json")})
	sh(t, f.host, `git init -q -b main . && printf 'ignored/\n*.log\n' > .gitignore &&
		echo one > a.txt && mkdir -p sub && echo two > sub/b.txt && printf '#!/bin/sh\necho hi\n' > run.sh && chmod 755 run.sh &&
		ln -s a.txt link && git add -A && `+gitID+` commit -qm first &&
		echo second >> a.txt && `+gitID+` commit -qam second &&
		mkdir ignored && echo no > ignored/x && echo no > debug.log && echo dirty >> sub/b.txt && echo new > untracked.txt`)
	return f
}

func (f *fixture) guest() string { return filepath.Join(f.home, "repo") }

func (f *fixture) prepare(force bool) PrepareResult {
	f.t.Helper()
	res, err := f.s.Prepare(f.ctx, PrepareParams{Name: "dev", Repo: f.host, Force: force}, nil)
	if err != nil {
		f.t.Fatalf("prepare: %v", err)
	}
	return res
}

func TestPrepareCopiesHistoryAndWorkingTree(t *testing.T) {
	f := newFixture(t)
	res := f.prepare(false)
	if !res.Full || res.FilesSent != 6 || res.HistoryBytes == 0 {
		t.Fatalf("first prepare: %+v", res)
	}
	g := f.guest()
	if got, want := sh(t, g, "git log --format=%H%x20%s"), sh(t, f.host, "git log --format=%H%x20%s"); got != want {
		t.Fatalf("guest log %q, want %q", got, want)
	}
	if got, want := sh(t, g, "git status --porcelain; git branch --show-current"), sh(t, f.host, "git status --porcelain; git branch --show-current"); got != want {
		t.Fatalf("guest status %q, want host's %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(g, "ignored")); !os.IsNotExist(err) {
		t.Errorf("ignored dir was copied: %v", err)
	}
	if st, err := os.Stat(filepath.Join(g, "run.sh")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("run.sh mode: %v %v", st, err)
	}
	if l, err := os.Readlink(filepath.Join(g, "link")); err != nil || l != "a.txt" {
		t.Errorf("symlink: %q %v", l, err)
	}
	if _, err := os.Stat(filepath.Join(g, syncDir)); !os.IsNotExist(err) {
		t.Errorf("control dir left behind: %v", err)
	}
	ws, err := f.store.GetWorkspace(f.ctx, f.g.vm.ID)
	if err != nil || ws.GuestPath != g || ws.Branch != "main" || ws.Files != 6 {
		t.Fatalf("row: %+v %v", ws, err)
	}
}

func TestResyncSendsOnlyChanges(t *testing.T) {
	f := newFixture(t)
	f.prepare(false)
	// Nothing changed: nothing sent.
	if res := f.prepare(false); res.Full || res.FilesSent != 0 || res.Deleted != 0 || res.HistoryBytes != 0 {
		t.Fatalf("no-op resync: %+v", res)
	}
	_, d, err := f.s.Check(f.ctx, "dev")
	if err != nil || !d.None() {
		t.Fatalf("drift after sync: %+v %v", d, err)
	}
	sh(t, f.host, `echo changed > untracked.txt && git rm -qf sub/b.txt && echo three > c.txt && git add c.txt && `+gitID+` commit -qm third`)
	_, d, _ = f.s.Check(f.ctx, "dev")
	if d.None() || d.HeadFrom == d.HeadTo || len(d.Changed) != 3 || !strings.Contains(d.String(), "HEAD moved") {
		t.Fatalf("drift = %+v (%s)", d, d)
	}
	res := f.prepare(false)
	if res.Full || res.FilesSent != 2 || res.Deleted != 1 || res.HistoryBytes == 0 {
		t.Fatalf("resync: %+v", res)
	}
	g := f.guest()
	if got, want := sh(t, g, "git log --format=%H; git status --porcelain; cat untracked.txt; ls sub 2>&1 || true"),
		sh(t, f.host, "git log --format=%H; git status --porcelain; cat untracked.txt; ls sub 2>&1 || true"); got != want {
		t.Fatalf("after resync guest:\n%s\nhost:\n%s", got, want)
	}
}

func TestResyncRefusesOverVMCommits(t *testing.T) {
	f := newFixture(t)
	f.prepare(false)
	sh(t, f.guest(), gitID+` commit -q --allow-empty -m vm-work`)
	sh(t, f.host, `echo x >> a.txt`)
	_, err := f.s.Prepare(f.ctx, PrepareParams{Name: "dev", Repo: f.host}, nil)
	if !errors.Is(err, api.ErrBusy) || !strings.Contains(err.Error(), "pull") {
		t.Fatalf("err = %v, want busy naming pull", err)
	}
	if res := f.prepare(true); !res.Full {
		t.Fatalf("forced prepare: %+v", res)
	}
	// Once pulled back, the VM's commits no longer block a resync.
	sh(t, f.guest(), gitID+` commit -q --allow-empty -m vm-work-2`)
	if _, err := f.s.Pull(f.ctx, PullParams{Name: "dev"}); err != nil {
		t.Fatal(err)
	}
	sh(t, f.host, `echo y >> a.txt`)
	if res := f.prepare(false); res.Full || res.FilesSent != 1 {
		t.Fatalf("resync after pull: %+v", res)
	}
}

func TestPullBringsCommitsAndUncommittedChanges(t *testing.T) {
	f := newFixture(t)
	f.prepare(false)
	hostBefore := sh(t, f.host, "git status --porcelain; git rev-parse HEAD; git branch --show-current")
	g := f.guest()
	sh(t, g, `echo vm > vm.txt && git add vm.txt && `+gitID+` commit -qm "vm commit" && echo edit >> a.txt`)
	res, err := f.s.Pull(f.ctx, PullParams{Name: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Branch != "banger/dev" || res.Commits != 2 {
		t.Fatalf("pull: %+v", res)
	}
	if got := sh(t, f.host, "git log --format=%s banger/dev -3"); got != "banger: uncommitted changes in vm dev\nvm commit\nsecond\n" {
		t.Fatalf("branch log: %q", got)
	}
	if got := sh(t, f.host, "git show banger/dev:a.txt"); got != "one\nsecond\nedit\n" {
		t.Fatalf("a.txt on branch: %q", got)
	}
	if got := sh(t, f.host, "git status --porcelain; git rev-parse HEAD; git branch --show-current"); got != hostBefore {
		t.Fatalf("host working tree touched:\n%s\nwas\n%s", got, hostBefore)
	}
	if _, err := f.s.Pull(f.ctx, PullParams{Name: "dev"}); !errors.Is(err, api.ErrExists) {
		t.Fatalf("second pull: %v", err)
	}
	// --patch: commits on the branch, the edit as a patch.
	res, err = f.s.Pull(f.ctx, PullParams{Name: "dev", Force: true, Patch: true})
	if err != nil || res.Commits != 1 || !strings.Contains(string(res.Patch), "+edit") {
		t.Fatalf("patch pull: %+v %v", res, err)
	}
	if got := sh(t, f.host, "git log --format=%s -1 banger/dev"); got != "vm commit\n" {
		t.Fatalf("after --patch: %q", got)
	}
	if _, err := f.s.Pull(f.ctx, PullParams{Name: "dev", Branch: "main", Force: true}); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("pull into the checked-out branch: %v", err)
	}
	// Diverged: the VM rewrote history below the synced HEAD.
	sh(t, g, `git reset -q --hard HEAD~2 && echo alt > alt.txt && git add alt.txt && `+gitID+` commit -qm alt`)
	res, err = f.s.Pull(f.ctx, PullParams{Name: "dev", Branch: "alt"})
	if err != nil {
		t.Fatal(err)
	}
	if got := sh(t, f.host, "git log --format=%s alt"); got != "banger: uncommitted changes in vm dev\nalt\nfirst\n" {
		t.Fatalf("diverged branch: %q", got)
	}
}

func TestStoppedVMIsRefused(t *testing.T) {
	f := newFixture(t)
	f.g.running = false
	if _, err := f.s.Prepare(f.ctx, PrepareParams{Name: "dev", Repo: f.host}, nil); !errors.Is(err, api.ErrNotRunning) {
		t.Fatalf("prepare: %v", err)
	}
	if _, err := f.s.Pull(f.ctx, PullParams{Name: "dev"}); !errors.Is(err, api.ErrNotRunning) {
		t.Fatalf("pull: %v", err)
	}
	if ws, _, err := f.s.Check(f.ctx, "dev"); err != nil || ws.GuestPath != "" {
		t.Fatalf("check: %+v %v", ws, err)
	}
	if f.g.execs != 0 {
		t.Fatalf("%d guest execs on a stopped vm", f.g.execs)
	}
}

func TestGuestDirValidation(t *testing.T) {
	f := newFixture(t)
	for _, p := range []string{"relative", f.home, f.home + "/../etc", "/etc/x", f.home + "/a/../b"} {
		if _, err := f.s.Prepare(f.ctx, PrepareParams{Name: "dev", Repo: f.host, Into: p}, nil); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("into %q: %v", p, err)
		}
	}
	if _, err := f.s.Prepare(f.ctx, PrepareParams{Name: "dev", Repo: t.TempDir()}, nil); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("not a repo: %v", err)
	}
}

// A repository whose objects live elsewhere (alternates) goes over as a git
// bundle, and the guest rebuilds its index with git reset.
func TestPrepareWithAlternatesUsesBundle(t *testing.T) {
	f := newFixture(t)
	clone := filepath.Join(t.TempDir(), "clone")
	sh(t, f.host, "git clone -q --shared . "+clone+" && cd "+clone+" && echo more > more.txt && git add more.txt && "+gitID+" commit -qm third")
	res, err := f.s.Prepare(f.ctx, PrepareParams{Name: "dev", Repo: clone}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Full || res.HistoryBytes == 0 {
		t.Fatalf("prepare: %+v", res)
	}
	if got, want := sh(t, f.guest(), "git log --format=%H; git status --porcelain; git config core.checkStat || true"),
		sh(t, clone, "git log --format=%H; git status --porcelain"); got != want {
		t.Fatalf("guest %q, want %q", got, want)
	}
	// Incremental over the bundle path: only the new commit.
	sh(t, clone, "echo four > four.txt && git add four.txt && "+gitID+" commit -qm four")
	res, err = f.s.Prepare(f.ctx, PrepareParams{Name: "dev", Repo: clone}, nil)
	if err != nil || res.Full || res.FilesSent != 1 || res.HistoryBytes == 0 {
		t.Fatalf("resync: %+v %v", res, err)
	}
	if got, want := sh(t, f.guest(), "git log --format=%s -1; git status --porcelain"), "four\n"; got != want {
		t.Fatalf("guest after resync %q", got)
	}
}

// The host's index goes over: staged and unstaged changes stay distinct.
func TestPrepareKeepsStagedState(t *testing.T) {
	f := newFixture(t)
	sh(t, f.host, "echo staged > staged.txt && git add staged.txt && echo both >> a.txt && git add a.txt && echo later >> a.txt")
	f.prepare(false)
	if got, want := sh(t, f.guest(), "git status --porcelain"), sh(t, f.host, "git status --porcelain"); got != want {
		t.Fatalf("guest status %q, want %q", got, want)
	}
}
