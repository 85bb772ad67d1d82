package sysinstall

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
)

var update = flag.Bool("update", false, "rewrite testdata/*.service from the renderer")

var alice = Owner{Name: "alice", UID: 1001, GID: 1001, Home: "/home/alice"}

const aliceState = "/home/alice/.local/state/banger"

// fakeSystemd is systemd and the few commands install runs, keeping state:
// which unit files are loaded, enabled, active; the helper's runtime dir
// and the daemon's socket appear and go as the real services make them.
type fakeSystemd struct {
	root    string
	units   map[string]*fakeUnit
	failing map[string]string // unit → journal line it fails with
	pid     int
	noBus   bool // systemctl show as a user on a host without a D-Bus system bus
	// flapping units start (systemctl returns 0, as for Type=simple) and
	// then keep exiting and being restarted: a new pid at every look.
	flapping map[string]bool
	// limited units hit their start limit: start refused until reset-failed.
	limited map[string]bool
}

type fakeUnit struct {
	enabled, active bool
	pid             int
	result          string
}

func newFake(root string) *fakeSystemd {
	return &fakeSystemd{root: root, units: map[string]*fakeUnit{}, failing: map[string]string{}, flapping: map[string]bool{}, limited: map[string]bool{}, pid: 100}
}

func (f *fakeSystemd) Start(context.Context, system.ProcSpec) (int, error) {
	return 0, errors.New("fake: no Start")
}

func (f *fakeSystemd) unitFile(u string) string { return filepath.Join(f.root, UnitDir, u) }

func (f *fakeSystemd) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	line := name + " " + strings.Join(args, " ")
	fail := func(format string, a ...any) ([]byte, error) {
		out := fmt.Sprintf(format, a...)
		return []byte(out), &system.ExitError{Cmd: line, Code: 1, Output: out}
	}
	switch name {
	case "runuser":
		// runuser -u NAME -- mkdir -p -m 0700 DIR
		if len(args) != 8 || args[0] != "-u" || args[2] != "--" || args[3] != "mkdir" {
			return fail("fake runuser: unexpected %q", line)
		}
		if err := os.MkdirAll(args[7], 0o700); err != nil {
			return nil, err
		}
		// As the owner would have made them (possible when the test is root).
		for d := args[7]; strings.HasPrefix(d, filepath.Join(f.root, "/home/alice/")); d = filepath.Dir(d) {
			_ = os.Lchown(d, alice.UID, alice.GID)
		}
		return nil, nil
	case "journalctl":
		u := args[1]
		if msg, ok := f.failing[u]; ok {
			return []byte("2026-12-01T19:00:00+0000 host " + msg + "\n"), nil
		}
		return []byte("-- No entries --\n"), nil
	case "systemctl":
	default:
		return fail("fake: unexpected command %q", line)
	}
	verb, units := args[0], args[1:]
	switch verb {
	case "daemon-reload":
		for u := range f.units {
			if _, err := os.Stat(f.unitFile(u)); err != nil {
				delete(f.units, u)
			}
		}
		for _, u := range Units {
			if _, err := os.Stat(f.unitFile(u)); err == nil && f.units[u] == nil {
				f.units[u] = &fakeUnit{}
			}
		}
		return nil, nil
	case "show":
		if f.noBus {
			return fail("Failed to connect to bus: No such file or directory")
		}
		u := f.units[units[0]]
		if u == nil {
			return []byte("LoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\nResult=success\nMainPID=0\n"), nil
		}
		active, sub, ufs, pid := "inactive", "dead", "disabled", 0
		if u.active && f.flapping[units[0]] {
			f.pid++
			u.pid = f.pid
		}
		if u.active {
			active, sub, pid = "active", "running", u.pid
		} else if u.result != "" && u.result != "success" {
			active, sub = "failed", "failed"
		}
		if u.enabled {
			ufs = "enabled"
		}
		res := u.result
		if res == "" {
			res = "success"
		}
		return []byte(fmt.Sprintf("LoadState=loaded\nActiveState=%s\nSubState=%s\nUnitFileState=%s\nResult=%s\nMainPID=%d\n", active, sub, ufs, res, pid)), nil
	case "kill":
		return nil, nil
	case "reset-failed":
		for _, n := range units {
			if u := f.units[n]; u != nil {
				u.result = ""
			}
			delete(f.limited, n)
		}
		return nil, nil
	}
	for _, n := range units {
		u := f.units[n]
		if u == nil {
			return fail("Unit %s not loaded.", n)
		}
		switch verb {
		case "enable":
			u.enabled = true
		case "disable":
			u.enabled = false
		case "stop":
			u.active = false
			if n == HelperUnit { // RuntimeDirectory= goes with the service
				_ = os.RemoveAll(filepath.Join(f.root, RunDir))
			}
		case "restart":
			if f.limited[n] {
				return fail("Job for %s failed because start of the service was attempted too often.", n)
			}
			if msg, ok := f.failing[n]; ok {
				u.active, u.result = false, "exit-code"
				return fail("Job for %s failed because the control process exited with error code: %s", n, msg)
			}
			f.pid++
			u.active, u.pid, u.result = true, f.pid, "success"
			if n == HelperUnit {
				if err := os.MkdirAll(filepath.Join(f.root, RunDir), 0o755); err != nil {
					return nil, err
				}
				if err := os.WriteFile(filepath.Join(f.root, HelperSocket), nil, 0o600); err != nil {
					return nil, err
				}
			}
			if n == DaemonUnit {
				b, err := os.ReadFile(f.unitFile(n))
				if err != nil {
					return nil, err
				}
				m := regexp.MustCompile(`--state-dir (\S+)`).FindSubmatch(b)
				if err := os.WriteFile(filepath.Join(f.root, string(m[1]), "bangerd.sock"), nil, 0o600); err != nil {
					return nil, err
				}
			}
		default:
			return fail("fake systemctl: unexpected %q", line)
		}
	}
	return nil, nil
}

// state is systemd's view as text.
func (f *fakeSystemd) state() string {
	var names []string
	for n := range f.units {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		u := f.units[n]
		fmt.Fprintf(&b, "%s enabled=%v active=%v\n", n, u.enabled, u.active)
	}
	return b.String()
}

// tree lists every path under root with its kind and mode, symlink targets,
// and the content of small text files under /etc.
func tree(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case st.Mode()&os.ModeSymlink != 0:
			tgt, _ := os.Readlink(p)
			fmt.Fprintf(&b, "/%s -> %s\n", rel, tgt)
		case st.IsDir():
			fmt.Fprintf(&b, "/%s/ %04o\n", rel, uint32(st.Mode().Perm()))
		default:
			fmt.Fprintf(&b, "/%s %04o\n", rel, uint32(st.Mode().Perm()))
			if strings.HasPrefix(rel, "etc/sub") {
				c, _ := os.ReadFile(p)
				fmt.Fprintf(&b, "  %q\n", c)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// setup is a host root with systemd booted, another user's subordinate
// range, alice's home, and built binaries to install.
func setup(t *testing.T) (*Installer, *fakeSystemd, InstallOptions) {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{SystemdRunDir, UnitDir, "/home/alice", "/usr/local/bin", "/usr/local/lib"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{SubUIDFile, SubGIDFile} {
		if err := os.WriteFile(filepath.Join(root, f), []byte("bob:100000:65536\ncarol:165536:1000\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src := t.TempDir()
	srcs := map[string]string{}
	for _, b := range Binaries {
		srcs[b] = filepath.Join(src, b)
		if err := os.WriteFile(srcs[b], []byte("#!/bin/sh\n# "+b+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f := newFake(root)
	in := &Installer{Runner: f, Paths: Paths{Root: root}, Wait: 2 * time.Second, Settle: 20 * time.Millisecond,
		Now:        func() time.Time { return time.Date(2026, 12, 1, 19, 0, 0, 0, time.UTC) },
		LookupUser: func(name string) (Owner, error) { return alice, nil }}
	return in, f, InstallOptions{Owner: alice, StateDir: aliceState, Sources: srcs}
}

// probes answer as healthy services do: the daemon's pid is the unit's.
func (f *fakeSystemd) probes() Probes {
	return Probes{
		Helper: func(context.Context, string) (string, error) { return "answers", nil },
		Daemon: func(context.Context, string) (int, string, error) {
			if u := f.units[DaemonUnit]; u != nil {
				return u.pid, "answers", nil
			}
			return 0, "", errors.New("no daemon")
		},
	}
}

func TestRenderedUnits(t *testing.T) {
	for name, got := range map[string]string{
		HelperUnit: RenderHelperUnit(BinDir, alice),
		DaemonUnit: RenderDaemonUnit(BinDir, alice, aliceState),
	} {
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if got != string(want) {
			t.Errorf("%s:\n--- got\n%s\n--- want\n%s", name, got, want)
		}
	}
}

// A state dir with a space stays one argument and one path.
func TestDaemonUnitQuotesPaths(t *testing.T) {
	u := RenderDaemonUnit("/opt/b%x", alice, "/home/alice/my state")
	for _, want := range []string{
		`ExecStart="/opt/b%%x/bangerd" --state-dir "/home/alice/my state" --log-file "/home/alice/my state/bangerd.log" --helper /run/banger/helper.sock`,
		`ReadWritePaths="/home/alice/my state"`,
	} {
		if !strings.Contains(u, want+"\n") {
			t.Errorf("unit lacks %q:\n%s", want, u)
		}
	}
}

// systemd-analyze verify accepts both units with no diagnostic at all (it
// exits 0 on unknown keys, so its output must be empty too).
func TestUnitsVerify(t *testing.T) {
	r := system.Exec{}
	if _, err := system.LookPath("systemd-analyze"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze missing (package systemd; scripts/install-deps.sh)")
		}
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range Binaries {
		if err := os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var files []string
	for name, text := range map[string]string{
		HelperUnit: RenderHelperUnit(bin, alice),
		DaemonUnit: RenderDaemonUnit(bin, alice, filepath.Join(dir, "state")),
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
	}
	out, err := r.Run(context.Background(), "systemd-analyze", append([]string{"verify", "--man=no"}, files...)...)
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestInstallStatusUninstall(t *testing.T) {
	ctx := context.Background()
	in, f, opts := setup(t)
	before := tree(t, in.Paths.Root)
	m, err := in.Install(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if m.SubUID != "alice:166536:65536" || m.SubGID != m.SubUID || m.Link != LinkPath {
		t.Errorf("metadata: %+v", m)
	}
	want := `/etc/ 0755
/etc/banger/ 0755
/etc/banger/install.json 0644
/etc/subgid 0644
  "bob:100000:65536\ncarol:165536:1000\nalice:166536:65536\n"
/etc/subuid 0644
  "bob:100000:65536\ncarol:165536:1000\nalice:166536:65536\n"
/etc/systemd/ 0755
/etc/systemd/system/ 0755
/etc/systemd/system/banger-helper.service 0644
/etc/systemd/system/bangerd.service 0644
/home/ 0755
/home/alice/ 0755
/home/alice/.local/ 0700
/home/alice/.local/state/ 0700
/home/alice/.local/state/banger/ 0700
/home/alice/.local/state/banger/bangerd.sock 0600
/run/ 0755
/run/banger/ 0755
/run/banger/helper.sock 0600
/run/systemd/ 0755
/run/systemd/system/ 0755
/usr/ 0755
/usr/local/ 0755
/usr/local/bin/ 0755
/usr/local/bin/banger -> /usr/local/lib/banger/banger
/usr/local/lib/ 0755
/usr/local/lib/banger/ 0755
/usr/local/lib/banger/banger 0755
/usr/local/lib/banger/banger-agent 0755
/usr/local/lib/banger/bangerd 0755
`
	if got := tree(t, in.Paths.Root); got != want {
		t.Errorf("after install:\n%s\nwant:\n%s", got, want)
	}
	wantState := "banger-helper.service enabled=true active=true\nbangerd.service enabled=true active=true\n"
	if got := f.state(); got != wantState {
		t.Errorf("systemd after install:\n%s", got)
	}
	b, _ := os.ReadFile(filepath.Join(in.Paths.Root, UnitDir, DaemonUnit))
	if string(b) != RenderDaemonUnit(BinDir, alice, aliceState) {
		t.Errorf("installed bangerd.service differs from the rendered one:\n%s", b)
	}
	st := in.Status(ctx, f.probes())
	if !st.Healthy || !st.Installed {
		t.Fatalf("status after install: %+v", st)
	}
	// As root (or anyone but the owner) bangerd is not asked: no pid to compare.
	p := f.probes()
	p.Daemon = func(context.Context, string) (int, string, error) { return 0, "socket present", nil }
	if st := in.Status(ctx, p); !st.Healthy {
		t.Fatalf("status as a non-owner: %q", st.Problems)
	}

	// Idempotent: a second install converges on the same tree and state.
	if _, err := in.Install(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if got := tree(t, in.Paths.Root); got != want {
		t.Errorf("after second install:\n%s", got)
	}
	if got := f.state(); got != wantState {
		t.Errorf("systemd after second install:\n%s", got)
	}
	if err := in.Restart(ctx); err != nil {
		t.Fatal(err)
	}

	// Uninstall: nothing of banger in systemd, /etc, /run, /usr/local; the
	// state stays (only what the owner made there).
	if err := in.Uninstall(ctx, false); err != nil {
		t.Fatal(err)
	}
	if got := f.state(); got != "" {
		t.Errorf("systemd after uninstall:\n%s", got)
	}
	got := tree(t, in.Paths.Root)
	wantAfter := before + `/home/alice/.local/ 0700
/home/alice/.local/state/ 0700
/home/alice/.local/state/banger/ 0700
/home/alice/.local/state/banger/bangerd.sock 0600
`
	if sortLines(got) != sortLines(wantAfter) {
		t.Errorf("after uninstall:\n%s\nwant:\n%s", got, wantAfter)
	}
	st = in.Status(ctx, f.probes())
	if st.Installed || st.Healthy || !strings.Contains(strings.Join(st.Problems, "\n"), "not installed") {
		t.Errorf("status after uninstall: %+v", st)
	}
	// Uninstall twice is fine.
	if err := in.Uninstall(ctx, false); err != nil {
		t.Fatal(err)
	}

	// Reinstall, then purge: the state dir goes too.
	if _, err := in.Install(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		t.Skip("purge checks the state dir's owner: the fake makes it alice's only as root")
	}
	if err := in.Uninstall(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(in.Paths.Root, aliceState)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir after purge: %v", err)
	}
}

// An owner who already has ranges keeps them, and uninstall leaves them;
// a /usr/local/bin/banger that is not banger's link is left alone.
func TestInstallKeepsWhatItDidNotMake(t *testing.T) {
	ctx := context.Background()
	in, _, opts := setup(t)
	orig := "bob:100000:65536\nalice:300000:65536\n"
	for _, f := range []string{SubUIDFile, SubGIDFile} {
		if err := os.WriteFile(filepath.Join(in.Paths.Root, f), []byte(orig), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(in.Paths.Root, LinkPath)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(link, []byte("someone else's banger"), 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := in.Install(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if m.SubUID != "" || m.SubGID != "" || m.Link != "" {
		t.Errorf("install claims what it did not make: %+v", m)
	}
	if err := in.Uninstall(ctx, false); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{SubUIDFile, SubGIDFile} {
		if b, _ := os.ReadFile(filepath.Join(in.Paths.Root, f)); string(b) != orig {
			t.Errorf("%s after uninstall = %q", f, b)
		}
	}
	if b, _ := os.ReadFile(link); string(b) != "someone else's banger" {
		t.Errorf("%s after uninstall = %q", LinkPath, b)
	}
}

func TestInstallRefuses(t *testing.T) {
	ctx := context.Background()
	in, _, opts := setup(t)
	for name, mut := range map[string]func(*InstallOptions){
		"root owner":      func(o *InstallOptions) { o.Owner.UID = 0 },
		"newline in name": func(o *InstallOptions) { o.Owner.Name = "alice\nExecStartPre=/bin/evil" },
		"relative state":  func(o *InstallOptions) { o.StateDir = "state" },
		"no bangerd":      func(o *InstallOptions) { o.Sources = map[string]string{"banger": "/x", "banger-agent": "/y"} },
	} {
		o := opts
		mut(&o)
		if _, err := in.Install(ctx, o); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: err = %v, want invalid", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(in.Paths.Root, UnitDir, HelperUnit)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused install wrote units: %v", err)
	}
	if _, err := in.Install(ctx, opts); err != nil {
		t.Fatal(err)
	}
	bob := opts
	bob.Owner = Owner{Name: "bob", UID: 1002, GID: 1002, Home: "/home/bob"}
	bob.StateDir = "/home/bob/.local/state/banger"
	if _, err := in.Install(ctx, bob); !errors.Is(err, api.ErrExists) || !strings.Contains(err.Error(), `installed for "alice"`) {
		t.Errorf("second owner: %v", err)
	}
	// Without systemd: a clear error that names the foreground helper.
	if err := os.RemoveAll(filepath.Join(in.Paths.Root, SystemdRunDir)); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Install(ctx, opts); !errors.Is(err, ErrNoSystemd) || !strings.Contains(err.Error(), "sudo banger system helper --owner") {
		t.Errorf("no systemd: %v", err)
	}
}

// A unit that fails: install says so with its journal lines, status names
// the unit, its state and log.
func TestStatusSaysWhatIsWrong(t *testing.T) {
	ctx := context.Background()
	in, f, opts := setup(t)
	f.failing[DaemonUnit] = "bangerd: another bangerd holds /home/alice/.local/state/banger/bangerd.pid"
	_, err := in.Install(ctx, opts)
	if err == nil || !strings.Contains(err.Error(), "another bangerd holds") {
		t.Fatalf("install with a failing bangerd: %v", err)
	}
	st := in.Status(ctx, f.probes())
	problems := strings.Join(st.Problems, "\n")
	if st.Healthy || !strings.Contains(problems, "bangerd.service is failed (failed, result exit-code)") {
		t.Errorf("problems:\n%s", problems)
	}
	var logs []string
	for _, u := range st.Units {
		logs = append(logs, u.Logs...)
	}
	if !strings.Contains(strings.Join(logs, "\n"), "another bangerd holds") {
		t.Errorf("status carries no journal line: %+v", st.Units)
	}
	delete(f.failing, DaemonUnit)
	if err := in.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if st := in.Status(ctx, f.probes()); !st.Healthy {
		t.Fatalf("after restart: %v", st.Problems)
	}

	for name, c := range map[string]struct {
		break_ func()
		probes Probes
		want   string
	}{
		"helper socket gone": {func() { os.Remove(filepath.Join(in.Paths.Root, HelperSocket)) }, f.probes(), "helper socket /run/banger/helper.sock is missing"},
		"helper silent": {nil, Probes{Helper: func(context.Context, string) (string, error) { return "", errors.New("connection refused") },
			Daemon: f.probes().Daemon}, "helper does not answer: connection refused"},
		"another daemon": {nil, Probes{Helper: f.probes().Helper,
			Daemon: func(context.Context, string) (int, string, error) { return 4242, "answers", nil }}, "is pid 4242, not bangerd.service's"},
		"binary replaced": {func() {
			os.WriteFile(filepath.Join(in.Paths.Root, BinDir, "bangerd"), []byte("other"), 0o755)
		}, f.probes(), "/usr/local/lib/banger/bangerd is missing or not the installed version"},
		"owner gone": {func() {
			in.LookupUser = func(string) (Owner, error) { return Owner{}, errors.New("user: unknown user alice") }
		}, f.probes(), `owner "alice" is unknown on this host`},
		"disabled": {func() { f.units[HelperUnit].enabled = false }, f.probes(), "banger-helper.service is disabled, not enabled"},
	} {
		if c.break_ != nil {
			c.break_()
		}
		st := in.Status(ctx, c.probes)
		if st.Healthy || !strings.Contains(strings.Join(st.Problems, "\n"), c.want) {
			t.Errorf("%s: problems %q, want one containing %q", name, st.Problems, c.want)
		}
		// Repair for the next case.
		if _, err := in.Install(ctx, opts); err != nil {
			t.Fatal(err)
		}
		in.LookupUser = func(string) (Owner, error) { return alice, nil }
	}
}

// Purge never follows a symlink the owner planted on the way to the state dir.
func TestPurgeRefusesSymlinkedPath(t *testing.T) {
	root := t.TempDir()
	victim := filepath.Join(root, "victim", "banger")
	if err := os.MkdirAll(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(victim, "precious"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(root, "home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		t.Fatal(err)
	}
	// ~/.local/state -> <root>/victim
	if err := os.MkdirAll(filepath.Join(home, ".local"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "victim"), filepath.Join(home, ".local", "state")); err != nil {
		t.Fatal(err)
	}
	err := removeStateDir(filepath.Join(home, ".local", "state", "banger"), os.Getuid())
	if err == nil {
		t.Fatal("purge through a symlink succeeded")
	}
	if _, err := os.Stat(filepath.Join(victim, "precious")); err != nil {
		t.Fatalf("purge followed the symlink: %v", err)
	}
	// The state dir itself a symlink: refused too.
	if err := os.Symlink(victim, filepath.Join(home, "banger")); err != nil {
		t.Fatal(err)
	}
	if err := removeStateDir(filepath.Join(home, "banger"), os.Getuid()); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("state dir symlink: %v", err)
	}
	if _, err := os.Stat(filepath.Join(victim, "precious")); err != nil {
		t.Fatalf("purge followed the symlink: %v", err)
	}
}

func sortLines(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	sort.Strings(l)
	return strings.Join(l, "\n")
}

// A link install made but someone replaced since is theirs: uninstall keeps it.
func TestUninstallKeepsReplacedLink(t *testing.T) {
	ctx := context.Background()
	in, _, opts := setup(t)
	if _, err := in.Install(ctx, opts); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(in.Paths.Root, LinkPath)
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/opt/other/banger", link); err != nil {
		t.Fatal(err)
	}
	if err := in.Uninstall(ctx, false); err != nil {
		t.Fatal(err)
	}
	if tgt, err := os.Readlink(link); err != nil || tgt != "/opt/other/banger" {
		t.Errorf("%s after uninstall: %q %v", LinkPath, tgt, err)
	}
}

// A user who cannot reach systemd (no D-Bus system bus): the units are
// unknown; answering sockets make that a note, silent ones a problem.
func TestStatusWithoutSystemdBus(t *testing.T) {
	ctx := context.Background()
	in, f, opts := setup(t)
	if _, err := in.Install(ctx, opts); err != nil {
		t.Fatal(err)
	}
	f.noBus = true
	st := in.Status(ctx, f.probes())
	if !st.Healthy || !strings.Contains(strings.Join(st.Notes, "\n"), "systemd does not answer this user") {
		t.Errorf("sockets answer: healthy=%v problems=%q notes=%q", st.Healthy, st.Problems, st.Notes)
	}
	p := f.probes()
	p.Helper = func(context.Context, string) (string, error) { return "", errors.New("connection refused") }
	st = in.Status(ctx, p)
	if st.Healthy || !strings.Contains(strings.Join(st.Problems, "\n"), "systemd does not answer this user") {
		t.Errorf("helper silent: healthy=%v problems=%q", st.Healthy, st.Problems)
	}
}

// A unit that is "active" at every look but never the same process (it
// exits at once and systemd restarts it) is not a successful restart.
func TestRestartWaitsForStableUnits(t *testing.T) {
	ctx := context.Background()
	in, f, opts := setup(t)
	in.Wait = 500 * time.Millisecond
	if _, err := in.Install(ctx, opts); err != nil {
		t.Fatal(err)
	}
	f.flapping[DaemonUnit] = true
	err := in.Restart(ctx)
	if err == nil || !strings.Contains(err.Error(), "keep restarting") {
		t.Fatalf("restart of a flapping bangerd: %v", err)
	}
}

// Uninstall with nothing installed touches nothing: /run/banger may be the
// socket dir of a helper run in the foreground.
func TestUninstallWhenNotInstalled(t *testing.T) {
	in, f, _ := setup(t)
	sock := filepath.Join(in.Paths.Root, HelperSocket)
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	before := tree(t, in.Paths.Root)
	if err := in.Uninstall(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if got := tree(t, in.Paths.Root); got != before {
		t.Errorf("uninstall of nothing changed the tree:\n%s\nwas:\n%s", got, before)
	}
	if f.state() != "" {
		t.Errorf("systemd state: %s", f.state())
	}
}

// bangerd failing in a loop hits systemd's start limit; the restart asked
// for after fixing the cause must still start it.
func TestRestartAfterStartLimit(t *testing.T) {
	ctx := context.Background()
	in, f, opts := setup(t)
	if _, err := in.Install(ctx, opts); err != nil {
		t.Fatal(err)
	}
	f.limited[DaemonUnit] = true
	if err := in.Restart(ctx); err != nil {
		t.Fatalf("restart after the start limit: %v", err)
	}
}
