package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeCgroupfs lays out a stand-in cgroup v2 tree in a temp dir: the root's
// cgroup.controllers, and the daemon's cgroup with the given controllers,
// an empty subtree_control and the daemon's pid. Real cgroup2 is not
// available on every test host (this one is v1/hybrid).
func fakeCgroupfs(t *testing.T, controllers string) (mount string, self []byte) {
	t.Helper()
	mount = t.TempDir()
	dir := filepath.Join(mount, "user.slice", "bangerd.service")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(dir, 0o755))
	must(os.WriteFile(filepath.Join(mount, "cgroup.controllers"), []byte("cpuset cpu io memory pids\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "cgroup.controllers"), []byte(controllers+"\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), nil, 0o644))
	must(os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("4242\n"), 0o644))
	return mount, []byte("0::/user.slice/bangerd.service\n")
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fakeRmdir is rmdir with cgroupfs's rule: a group holding a process is busy.
func fakeRmdir(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err == nil && strings.TrimSpace(string(b)) != "" {
		return unix.EBUSY
	}
	if _, err := os.Stat(dir); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

func TestLimits(t *testing.T) {
	if got := MemoryMax(512); got != (512+256)<<20 {
		t.Errorf("MemoryMax(512) = %d", got)
	}
	if got := CPUMax(3); got != "300000 100000" {
		t.Errorf("CPUMax(3) = %q", got)
	}
}

// Delegated: Setup moves the daemon into its leaf and enables memory+cpu;
// Place writes the limits and the pid; Remove deletes the group once the
// VMM is gone, refuses while it holds one.
func TestPlaceAndRemove(t *testing.T) {
	mount, self := fakeCgroupfs(t, "cpu memory pids")
	m, err := Detect(mount, self)
	if err != nil {
		t.Fatal(err)
	}
	m.Rmdir = fakeRmdir
	dir := filepath.Join(mount, "user.slice", "bangerd.service")
	if m.Dir != dir {
		t.Fatalf("dir = %s, want %s", m.Dir, dir)
	}
	if err := m.Setup(4243); !errors.Is(err, ErrNotDelegated) || !strings.Contains(err.Error(), "shared with pid 4242") {
		t.Fatalf("setup in a shared cgroup: %v", err)
	}
	if got := read(t, filepath.Join(dir, "cgroup.subtree_control")); got != "" {
		t.Fatalf("refused setup enabled controllers: %q", got)
	}
	if err := m.Setup(4242); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(dir, "bangerd", "cgroup.procs")); got != "4242\n" {
		t.Errorf("daemon leaf procs = %q", got)
	}
	if got := read(t, filepath.Join(dir, "cgroup.subtree_control")); got != "+memory +cpu\n" {
		t.Errorf("subtree_control = %q", got)
	}
	if err := m.Place("0123456789ab", 777, 1024, 2); err != nil {
		t.Fatal(err)
	}
	g := filepath.Join(dir, "vm-0123456789ab")
	for f, want := range map[string]string{"memory.max": "1342177280\n", "cpu.max": "200000 100000\n", "cgroup.procs": "777\n"} {
		if got := read(t, filepath.Join(g, f)); got != want {
			t.Errorf("%s = %q, want %q", f, got, want)
		}
	}
	if err := m.Remove("0123456789ab"); !errors.Is(err, unix.EBUSY) {
		t.Errorf("remove with the vmm inside: %v, want EBUSY", err)
	}
	// The VMM exits: the kernel empties cgroup.procs.
	if err := os.WriteFile(filepath.Join(g, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove("0123456789ab"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("group left: %v", err)
	}
	if err := m.Remove("0123456789ab"); err != nil {
		t.Errorf("second remove: %v", err)
	}
	for _, id := range []string{"../../x", "ABC", ""} {
		if err := m.Place(id, 777, 64, 1); err == nil {
			t.Errorf("place %q accepted", id)
		}
	}
}

// Reconcile at start: stale vm-* groups with no process go; a kept VM's
// group, a group still holding a process and anything not banger's stay.
func TestPrune(t *testing.T) {
	mount, self := fakeCgroupfs(t, "cpu memory")
	m, err := Detect(mount, self)
	if err != nil {
		t.Fatal(err)
	}
	m.Rmdir = fakeRmdir
	for id, pid := range map[string]int{"aaaaaaaaaaaa": 1, "bbbbbbbbbbbb": 2, "cccccccccccc": 3} {
		if err := m.Place(id, pid, 64, 1); err != nil {
			t.Fatal(err)
		}
	}
	// aaaa and bbbb's VMMs are gone; cccc's is not (and not kept: reported).
	for _, id := range []string{"aaaaaaaaaaaa", "bbbbbbbbbbbb"} {
		if err := os.WriteFile(filepath.Join(m.Dir, "vm-"+id, "cgroup.procs"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	other := filepath.Join(m.Dir, "something-else")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	err = m.Prune(map[string]bool{"bbbbbbbbbbbb": true})
	if err == nil || !strings.Contains(err.Error(), "vm-cccccccccccc still holds pids [3]") {
		t.Errorf("prune err = %v", err)
	}
	for name, want := range map[string]bool{"vm-aaaaaaaaaaaa": false, "vm-bbbbbbbbbbbb": true, "vm-cccccccccccc": true, "something-else": true} {
		_, err := os.Stat(filepath.Join(m.Dir, name))
		if (err == nil) != want {
			t.Errorf("%s exists = %v, want %v", name, err == nil, want)
		}
	}
}

// Not delegated: each reason is named.
func TestDetectNotDelegated(t *testing.T) {
	mount, self := fakeCgroupfs(t, "cpu pids")
	if _, err := Detect(mount, self); !errors.Is(err, ErrNotDelegated) || !strings.Contains(err.Error(), `"memory" not available`) {
		t.Errorf("no memory controller: %v", err)
	}
	if _, err := Detect(mount, []byte("12:memory:/user.slice\n")); !errors.Is(err, ErrNotDelegated) || !strings.Contains(err.Error(), "no cgroup v2 entry") {
		t.Errorf("v1 only: %v", err)
	}
	if _, err := Detect(mount, []byte("0::/\n")); !errors.Is(err, ErrNotDelegated) || !strings.Contains(err.Error(), "root cgroup") {
		t.Errorf("root cgroup: %v", err)
	}
	if _, err := Detect(t.TempDir(), self); !errors.Is(err, ErrNotDelegated) || !strings.Contains(err.Error(), "no cgroup v2 hierarchy") {
		t.Errorf("no cgroup2 mount: %v", err)
	}
}
