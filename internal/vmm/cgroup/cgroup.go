package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Where the kernel says which cgroup a process is in, and where cgroup v2 is
// mounted.
const (
	SelfCgroupFile = "/proc/self/cgroup"
	DefaultMount   = "/sys/fs/cgroup"
)

// ErrNotDelegated is wrapped when this process cannot limit its VMMs: no
// cgroup v2, memory or cpu not available to its cgroup, or its cgroup not
// writable by it.
var ErrNotDelegated = errors.New("cgroup v2 not delegated")

// groupPrefix names a VM's group: <daemon cgroup>/vm-<id>.
const groupPrefix = "vm-"

// leaf is where the daemon's own processes move so its cgroup may enable
// controllers for its children (cgroup v2's no-internal-processes rule).
const leaf = "bangerd"

var vmIDRE = regexp.MustCompile(`^[0-9a-f]{12}$`)

// Manager places each VM's VMM in <Dir>/vm-<id> with memory.max and cpu.max.
type Manager struct {
	Dir string // the daemon's own cgroup directory, delegated to it
	Log *slog.Logger
	// Rmdir removes a group (unix.Rmdir when nil): a seam for tests, whose
	// stand-in cgroupfs is an ordinary directory.
	Rmdir func(string) error
}

// Detect finds the daemon's cgroup from the contents of /proc/self/cgroup
// under the cgroup v2 mount, and checks it is delegated: memory and cpu in
// its cgroup.controllers, and its files writable by this process.
func Detect(mount string, selfCgroup []byte) (*Manager, error) {
	if _, err := os.Stat(filepath.Join(mount, "cgroup.controllers")); err != nil {
		return nil, fmt.Errorf("%w: no cgroup v2 hierarchy at %s", ErrNotDelegated, mount)
	}
	var rel string
	found := false
	for _, line := range strings.Split(string(selfCgroup), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			rel, found = p, true
		}
	}
	if !found || !filepath.IsAbs(rel) || filepath.Clean(rel) != rel {
		return nil, fmt.Errorf("%w: no cgroup v2 entry for this process", ErrNotDelegated)
	}
	dir := filepath.Join(mount, rel)
	// A daemon that already moved itself into its leaf: manage the parent.
	if filepath.Base(dir) == leaf && rel != "/" {
		dir = filepath.Dir(dir)
	}
	if rel == "/" {
		return nil, fmt.Errorf("%w: this process is in the root cgroup", ErrNotDelegated)
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotDelegated, err)
	}
	have := strings.Fields(string(b))
	for _, c := range []string{"memory", "cpu"} {
		if !contains(have, c) {
			return nil, fmt.Errorf("%w: controller %q not available in %s", ErrNotDelegated, c, dir)
		}
	}
	for _, f := range []string{"", "cgroup.procs", "cgroup.subtree_control"} {
		if err := unix.Access(filepath.Join(dir, f), unix.W_OK); err != nil {
			return nil, fmt.Errorf("%w: %s not writable: %v", ErrNotDelegated, filepath.Join(dir, f), err)
		}
	}
	return &Manager{Dir: dir}, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (m *Manager) log() *slog.Logger {
	if m.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Log
}

// Setup enables memory and cpu for the daemon's children. A cgroup with
// processes of its own cannot, so the daemon (self) moves to <Dir>/bangerd
// first. A cgroup shared with other processes (a login session, a test
// runner) is not the daemon's to reorganise: refused.
func (m *Manager) Setup(self int) error {
	b, err := os.ReadFile(filepath.Join(m.Dir, "cgroup.subtree_control"))
	if err != nil {
		return fmt.Errorf("cgroup setup: %w", err)
	}
	on := strings.Fields(string(b))
	if contains(on, "memory") && contains(on, "cpu") {
		return nil
	}
	procs, err := m.ownProcs(self)
	if err != nil {
		return err
	}
	if len(procs) > 0 {
		l := filepath.Join(m.Dir, leaf)
		if err := os.Mkdir(l, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cgroup setup: %w", err)
		}
		for _, pid := range procs {
			if err := writeCgroupFile(filepath.Join(l, "cgroup.procs"), strconv.Itoa(pid)); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("cgroup setup: move pid %d to %s: %w", pid, l, err)
			}
		}
	}
	if err := writeCgroupFile(filepath.Join(m.Dir, "cgroup.subtree_control"), "+memory +cpu"); err != nil {
		return fmt.Errorf("cgroup setup: enable memory and cpu in %s: %w", m.Dir, err)
	}
	return nil
}

// Own reports whether the daemon (self) is the only process in its cgroup
// (nil), or why not: what Setup requires, for doctor.
func (m *Manager) Own(self int) error {
	_, err := m.ownProcs(self)
	return err
}

func (m *Manager) ownProcs(self int) ([]int, error) {
	procs, err := readPIDs(filepath.Join(m.Dir, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("cgroup setup: %w", err)
	}
	for _, pid := range procs {
		if pid != self {
			return nil, fmt.Errorf("%w: %s is shared with pid %d; run bangerd in a cgroup of its own (systemd Delegate=yes)",
				ErrNotDelegated, m.Dir, pid)
		}
	}
	return procs, nil
}

func (m *Manager) group(id string) (string, error) {
	if !vmIDRE.MatchString(id) {
		return "", fmt.Errorf("cgroup: vm id %q: want 12 lower-case hex digits", id)
	}
	return filepath.Join(m.Dir, groupPrefix+id), nil
}

// Place puts pid (a VM's VMM, just launched) in the VM's group with its
// limits: memory.max = guest RAM + OverheadMiB, cpu.max = vcpus CPUs.
func (m *Manager) Place(id string, pid, memMiB, vcpus int) error {
	g, err := m.group(id)
	if err != nil {
		return err
	}
	if pid <= 0 || memMiB <= 0 || vcpus <= 0 {
		return fmt.Errorf("cgroup %s: pid %d, %d MiB, %d vcpus: want positive values", g, pid, memMiB, vcpus)
	}
	if err := os.Mkdir(g, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("cgroup: %w", err)
	}
	for _, kv := range [][2]string{
		{"memory.max", strconv.FormatInt(MemoryMax(memMiB), 10)},
		{"cpu.max", CPUMax(vcpus)},
		{"cgroup.procs", strconv.Itoa(pid)},
	} {
		if err := writeCgroupFile(filepath.Join(g, kv[0]), kv[1]); err != nil {
			return fmt.Errorf("cgroup %s: write %s: %w", g, kv[0], err)
		}
	}
	m.log().Info("vmm limited", "vm", id, "pid", pid, "cgroup", g,
		"memory_max", MemoryMax(memMiB), "cpu_max", CPUMax(vcpus))
	return nil
}

// Remove deletes a VM's group; the VMM must have exited. Absent is success.
func (m *Manager) Remove(id string) error {
	g, err := m.group(id)
	if err != nil {
		return err
	}
	rmdir := m.Rmdir
	if rmdir == nil {
		rmdir = unix.Rmdir
	}
	if err := rmdir(g); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cgroup: remove %s: %w", g, err)
	}
	return nil
}

// Prune removes the vm-* groups not in keep that hold no process (what a
// previous daemon left behind); a group still holding one is left and
// reported.
func (m *Manager) Prune(keep map[string]bool) error {
	ents, err := os.ReadDir(m.Dir)
	if err != nil {
		return fmt.Errorf("cgroup prune: %w", err)
	}
	var errs []error
	for _, e := range ents {
		id, ok := strings.CutPrefix(e.Name(), groupPrefix)
		if !ok || !e.IsDir() || !vmIDRE.MatchString(id) || keep[id] {
			continue
		}
		procs, err := readPIDs(filepath.Join(m.Dir, e.Name(), "cgroup.procs"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		if len(procs) > 0 {
			errs = append(errs, fmt.Errorf("cgroup prune: %s still holds pids %v", e.Name(), procs))
			continue
		}
		if err := m.Remove(id); err != nil {
			errs = append(errs, err)
			continue
		}
		m.log().Info("stale vmm cgroup removed", "cgroup", filepath.Join(m.Dir, e.Name()))
	}
	return errors.Join(errs...)
}

// maxProcsFile bounds what is read from a cgroup.procs file.
const maxProcsFile = 1 << 20

func readPIDs(path string) ([]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxProcsFile))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, l := range bytes.Fields(b) {
		pid, err := strconv.Atoi(string(l))
		if err != nil {
			return nil, fmt.Errorf("%s: %q: not a pid", path, l)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// writeCgroupFile writes one value the way cgroupfs takes it: a single
// write. cgroup.procs appends (each write moves one pid, the file lists
// them all); other files are replaced. Created when absent, for the stand-in
// cgroupfs of tests (real cgroupfs creates a group's files itself).
func writeCgroupFile(path, value string) error {
	flags := os.O_WRONLY | os.O_CREATE | unix.O_NOFOLLOW
	if filepath.Base(path) == "cgroup.procs" {
		flags |= os.O_APPEND
	} else {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.Write([]byte(value + "\n"))
	return errors.Join(werr, f.Close())
}
