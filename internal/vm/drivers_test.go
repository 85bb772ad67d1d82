package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
)

// ownDriver is a fake VMM with a process table of its own: an operation
// sent to the wrong driver shows as a process left behind, a VMM never
// found, or a restore made by the other one. It can pause and snapshot, and
// answers for its host like the Firecracker driver (vmm.HostChecker).
type ownDriver struct {
	name string
	h    *host // TAPs, shared with the fake network

	mu       sync.Mutex
	next     int
	procs    map[int]string // pid → VM dir
	restores []string       // VM dirs a restore was asked for
	problems []error        // CheckHost's answer
	kernel   error          // CheckKernel's answer
}

func newOwnDriver(name string, h *host, firstPID int) *ownDriver {
	return &ownDriver{name: name, h: h, next: firstPID, procs: map[int]string{}}
}

func (d *ownDriver) Name() string { return d.name }
func (d *ownDriver) Start(ctx context.Context, s vmm.Spec) (int, error) {
	d.h.mu.Lock()
	tap := d.h.taps[s.Tap]
	d.h.mu.Unlock()
	if !tap {
		return 0, fmt.Errorf("tap %s missing", s.Tap)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.next++
	d.procs[d.next] = s.Dir
	return d.next, nil
}
func (d *ownDriver) Find(s vmm.Spec) (int, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for pid, dir := range d.procs {
		if dir == s.Dir {
			return pid, true
		}
	}
	return 0, false
}
func (d *ownDriver) Shutdown(ctx context.Context, pid int) error { return d.Kill(pid) }
func (d *ownDriver) Kill(pid int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.procs, pid)
	return nil
}
func (d *ownDriver) Alive(pid int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.procs[pid]
	return ok
}
func (d *ownDriver) DialAgent(ctx context.Context, dir string) (net.Conn, error) {
	return nil, errors.New(d.name + ": no agent channel")
}
func (d *ownDriver) Pause(ctx context.Context, s vmm.Spec) error          { return nil }
func (d *ownDriver) Resume(ctx context.Context, s vmm.Spec) error         { return nil }
func (d *ownDriver) Paused(ctx context.Context, s vmm.Spec) (bool, error) { return false, nil }
func (d *ownDriver) Snapshot(ctx context.Context, s vmm.Spec, dir string) (vmm.SnapshotMeta, error) {
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte(d.name), 0o600); err != nil {
		return vmm.SnapshotMeta{}, err
	}
	return vmm.SnapshotMeta{VMM: d.name, VMMVersion: "1", CPU: "x", VCPU: s.VCPU, MemoryMiB: s.MemoryMiB,
		RAM: vmm.SnapshotRAMStream, Files: []string{"state"}}, nil
}

// Restore is recorded and fails: the guest side of a restore is covered by
// test/e2e/snapshot_test.go; here only who is asked matters.
func (d *ownDriver) Restore(ctx context.Context, s vmm.Spec, dir string, meta vmm.SnapshotMeta) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.restores = append(d.restores, s.ID)
	return 0, fmt.Errorf("%s: restore not simulated", d.name)
}
func (d *ownDriver) CheckHost(ctx context.Context) vmm.HostStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := vmm.HostStatus{Binary: "/bin/" + d.name}
	for _, p := range d.problems {
		st.Checks = append(st.Checks, vmm.HostCheck{Name: "x", Err: p})
	}
	return st
}

// crash ends the VMM of the VM in dir behind the service's back.
func (d *ownDriver) crash(dir string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for pid, dd := range d.procs {
		if dd == dir {
			delete(d.procs, pid)
		}
	}
}

func (d *ownDriver) CheckKernel(path string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.kernel
}

// twoDrivers is a fixture whose service runs alpha by default and beta on
// request.
func twoDrivers(t *testing.T) (*fixture, *ownDriver, *ownDriver) {
	f := newFixture(t)
	alpha, beta := newOwnDriver("alpha", f.h, 1000), newOwnDriver("beta", f.h, 5000)
	f.deps.Driver, f.deps.Drivers = alpha, []vmm.Driver{alpha, beta}
	// Snapshots need an agent that answers; graceful stops are recorded.
	f.deps.Guest = &stopsGuest{agentGuest: newAgentGuest(f.h)}
	f.svc = New(f.deps)
	return f, alpha, beta
}

// stopsGuest records the VMs whose guest was asked to sync and power off.
type stopsGuest struct {
	*agentGuest
	mu    sync.Mutex
	stops []string
}

func (g *stopsGuest) Shutdown(ctx context.Context, t guest.Target) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stops = append(g.stops, t.VMID)
	return nil
}

// running renders what each driver runs, by VM name: "alpha=[a] beta=[b]".
func running(t *testing.T, f *fixture, ds ...*ownDriver) string {
	t.Helper()
	names := map[string]string{}
	vms, err := f.st.ListVMs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		names[v.Dir] = v.Name
	}
	var out []string
	for _, d := range ds {
		d.mu.Lock()
		var vs []string
		for _, dir := range d.procs {
			if n, ok := names[dir]; ok {
				vs = append(vs, n)
			} else {
				vs = append(vs, "?"+filepath.Base(dir))
			}
		}
		d.mu.Unlock()
		sort.Strings(vs)
		out = append(out, fmt.Sprintf("%s=%v", d.name, vs))
	}
	return strings.Join(out, " ")
}

func waitState(t *testing.T, f *fixture, name, state string) store.VM {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v := mustVM(t, f, name)
		if v.State == state {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm %s: state %s, want %s", name, v.State, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEachVMUsesItsOwnDriver: a VM made with each driver is started,
// stopped, found at reconcile, watched, deleted and snapshotted by its own,
// whatever the daemon's default is.
func TestEachVMUsesItsOwnDriver(t *testing.T) {
	f, alpha, beta := twoDrivers(t)
	ctx := context.Background()
	a := f.create(t, "a")
	b, err := f.svc.Create(ctx, api.CreateVMParams{Name: "b", WorkDisk: "32M", VMM: "beta"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.VMM != "alpha" || b.VMM != "beta" || mustVM(t, f, "b").VMM != "beta" || f.svc.View(b).Driver != "beta" {
		t.Fatalf("recorded vmms: a %q, b %q (row %q, view %q)", a.VMM, b.VMM, mustVM(t, f, "b").VMM, f.svc.View(b).Driver)
	}
	if got := running(t, f, alpha, beta); got != "alpha=[a] beta=[b]" {
		t.Fatalf("after create: %s", got)
	}

	// stop (graceful: the guest is asked to sync first) / start
	if _, err := f.svc.Stop(ctx, "b", false); err != nil {
		t.Fatal(err)
	}
	if got, stops := running(t, f, alpha, beta), f.deps.Guest.(*stopsGuest).stops; got != "alpha=[a] beta=[]" || len(stops) != 1 || stops[0] != b.ID {
		t.Fatalf("after stop b: %s, guests stopped %v", got, stops)
	}
	if _, err := f.svc.Start(ctx, "b", nil); err != nil {
		t.Fatal(err)
	}
	if got := running(t, f, alpha, beta); got != "alpha=[a] beta=[b]" {
		t.Fatalf("after start b: %s", got)
	}

	// A daemon restart whose default is now beta: each live VMM is found
	// and adopted through its VM's own driver.
	deps := f.deps
	deps.Driver, deps.Drivers = beta, []vmm.Driver{alpha}
	f.svc = New(deps)
	if err := f.svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if v := mustVM(t, f, n); v.State != StateRunning || !f.svc.Running(v) {
			t.Fatalf("after reconcile: %s %s (running %v) %s", n, v.State, f.svc.Running(v), v.LastError)
		}
	}
	if _, err := f.svc.Start(ctx, "a", nil); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("start of running a: %v", err)
	}
	// The adopted VMs' monitors ask their own drivers: both stay up past a
	// few checks...
	time.Sleep(1200 * time.Millisecond)
	for _, n := range []string{"a", "b"} {
		if v := mustVM(t, f, n); v.State != StateRunning {
			t.Fatalf("monitor took %s for dead: %s %s", n, v.State, v.LastError)
		}
	}
	// ...and notice when a VMM goes.
	alpha.crash(a.Dir)
	beta.crash(b.Dir)
	for _, n := range []string{"a", "b"} {
		if v := waitState(t, f, n, StateStopped); !strings.Contains(v.LastError, "unexpectedly") {
			t.Fatalf("%s after its vmm died: %+v", n, v)
		}
	}

	// Start both again (a under alpha though beta is the default now), then
	// delete them running: each kill goes to its own driver.
	for _, n := range []string{"a", "b"} {
		if _, err := f.svc.Start(ctx, n, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := running(t, f, alpha, beta); got != "alpha=[a] beta=[b]" {
		t.Fatalf("after restarts: %s", got)
	}
	for _, n := range []string{"a", "b"} {
		if err := f.svc.Delete(ctx, n, false); !errors.Is(err, api.ErrBusy) {
			t.Fatalf("delete of running %s without force: %v", n, err)
		}
		if err := f.svc.Delete(ctx, n, true); err != nil {
			t.Fatal(err)
		}
	}
	if got := running(t, f, alpha, beta); got != "alpha=[] beta=[]" || f.h.String() != "procs=0 taps=[]" {
		t.Fatalf("after delete: %s, host %s", got, f.h)
	}

	// An unknown vmm is refused before anything exists.
	if _, err := f.svc.Create(ctx, api.CreateVMParams{Name: "c", WorkDisk: "32M", VMM: "gamma"}, nil); !errors.Is(err, api.ErrInvalid) ||
		!strings.Contains(err.Error(), `vmm "gamma": this daemon runs beta, alpha`) {
		t.Fatalf("unknown vmm: %v", err)
	}
	assertNothingLeft(t, f, false)
}

// TestRestoreUsesTheSnapshotsDriver: a restore goes to the driver that made
// the snapshot, whatever the default; asking for another is refused, and a
// snapshot of a VMM the daemon lacks is a mismatch.
func TestRestoreUsesTheSnapshotsDriver(t *testing.T) {
	f, alpha, beta := twoDrivers(t)
	ctx := context.Background()
	if _, err := f.svc.Create(ctx, api.CreateVMParams{Name: "src", WorkDisk: "32M", VMM: "beta"}, nil); err != nil {
		t.Fatal(err)
	}
	sn, err := f.svc.Snapshot(ctx, "src", "src-snap", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Create(ctx, api.CreateVMParams{Name: "copy", From: sn.Name, VMM: "alpha"}, nil); !errors.Is(err, api.ErrInvalid) ||
		!strings.Contains(err.Error(), "made by beta; a restore runs under the vmm that made it, not alpha") {
		t.Fatalf("restore under another vmm: %v", err)
	}
	_, err = f.svc.Create(ctx, api.CreateVMParams{Name: "copy", From: sn.Name}, nil)
	if err == nil || !strings.Contains(err.Error(), "beta: restore not simulated") {
		t.Fatalf("restore: %v", err)
	}
	if len(alpha.restores) != 0 || len(beta.restores) != 1 {
		t.Fatalf("restores: alpha %v, beta %v", alpha.restores, beta.restores)
	}
	if _, err := f.st.GetVM(ctx, "copy"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("failed restore left its row: %v", err)
	}

	// A daemon without beta cannot restore it.
	deps := f.deps
	deps.Drivers = nil
	svc := New(deps)
	if _, err := svc.Create(ctx, api.CreateVMParams{Name: "copy", From: sn.Name}, nil); !errors.Is(err, vmm.ErrSnapshotMismatch) {
		t.Fatalf("restore without its vmm: %v", err)
	}
}

// TestCreateRefusedByHostLeavesNothing: a VMM that says it cannot run here,
// or cannot boot the kernel, is refused before a row, directory, TAP or pin
// exists; a kernel it cannot check is let through.
func TestCreateRefusedByHostLeavesNothing(t *testing.T) {
	f, _, beta := twoDrivers(t)
	ctx := context.Background()
	beta.problems = []error{fmt.Errorf("beta binary not found: %w", vmm.ErrNoVMM), fmt.Errorf("kvm unusable: %w", api.ErrInvalid)}
	_, err := f.svc.Create(ctx, api.CreateVMParams{Name: "b", WorkDisk: "32M", VMM: "beta"}, nil)
	if !errors.Is(err, vmm.ErrNoVMM) || !errors.Is(err, api.ErrNotFound) ||
		err.Error() != `vm "b": vmm beta cannot run vms on this host: beta binary not found: vmm binary not found; kvm unusable: invalid argument` {
		t.Fatalf("create on a host without beta: %v", err)
	}
	assertNothingLeft(t, f, true)

	beta.problems = nil
	beta.kernel = fmt.Errorf("kernel lacks CONFIG_X: %w", api.ErrInvalid)
	if _, err := f.svc.Create(ctx, api.CreateVMParams{Name: "b", WorkDisk: "32M", VMM: "beta"}, nil); !errors.Is(err, api.ErrInvalid) ||
		!strings.Contains(err.Error(), `vmm beta cannot boot kernel "k": kernel lacks CONFIG_X`) {
		t.Fatalf("create with a kernel beta cannot boot: %v", err)
	}
	assertNothingLeft(t, f, true)

	// A start of an existing VM is refused the same way, before its TAP.
	beta.kernel = fmt.Errorf("config not known: %w", vmm.ErrUnchecked)
	if _, err := f.svc.Create(ctx, api.CreateVMParams{Name: "b", WorkDisk: "32M", VMM: "beta", NoStart: true}, nil); err != nil {
		t.Fatalf("unchecked kernel refused: %v", err)
	}
	beta.problems = []error{fmt.Errorf("beta binary not found: %w", vmm.ErrNoVMM)}
	if _, err := f.svc.Start(ctx, "b", nil); !errors.Is(err, vmm.ErrNoVMM) {
		t.Fatalf("start without beta: %v", err)
	}
	if got := mustVM(t, f, "b"); got.State != StateStopped || got.Tap != "" || f.h.String() != "procs=0 taps=[]" {
		t.Fatalf("after a refused start: %+v, host %s", got, f.h)
	}
}

// TestCreateFirecrackerWithoutBinary: the real Firecracker driver on a host
// without its binary refuses `vm create --vmm firecracker` at once, naming
// what to install, with nothing left behind.
func TestCreateFirecrackerWithoutBinary(t *testing.T) {
	f := newFixture(t)
	fc := firecracker.New(system.Exec{}, nil)
	fc.Binary = "banger-test-no-such-firecracker"
	f.deps.Drivers = []vmm.Driver{fc}
	f.svc = New(f.deps)
	_, err := f.svc.Create(context.Background(), api.CreateVMParams{Name: "fc", WorkDisk: "32M", VMM: "firecracker"}, nil)
	if !errors.Is(err, vmm.ErrNoVMM) || !errors.Is(err, api.ErrNotFound) ||
		!strings.Contains(err.Error(), `vm "fc": vmm firecracker cannot run vms on this host: banger-test-no-such-firecracker binary not found on bangerd's PATH: install a Firecracker release`) {
		t.Fatalf("create --vmm firecracker without it: %v", err)
	}
	assertNothingLeft(t, f, true)
}

// assertNothingLeft: no VM row, VM directory, TAP in use, VMM or pinned
// host key; pristine: no TAP or bridge was ever made either.
func assertNothingLeft(t *testing.T, f *fixture, pristine bool) {
	t.Helper()
	vms, err := f.st.ListVMs(context.Background())
	if err != nil || len(vms) != 0 {
		t.Fatalf("rows left: %v %v", vms, err)
	}
	if ents, err := os.ReadDir(filepath.Dir(f.layout.VM("x"))); err == nil && len(ents) != 0 {
		t.Fatalf("vm dirs left: %v", ents)
	}
	if s := f.h.String(); s != "procs=0 taps=[]" || pristine && (len(f.h.pool()) != 0 || f.h.bridge) {
		t.Fatalf("host left: %s (pool %v, bridge %v)", s, f.h.pool(), f.h.bridge)
	}
	if b, err := os.ReadFile(filepath.Join(f.layout.SSHDir(), paths.KnownHostsFile)); err == nil && strings.TrimSpace(string(b)) != "" {
		t.Fatalf("pins left:\n%s", b)
	}
}

// TestReconcileKillsStrayVMMThroughItsDriver: a stopped row whose VMM runs
// (launched just before the daemon died, the row never updated) has that
// VMM killed by its own driver, not the default.
func TestReconcileKillsStrayVMMThroughItsDriver(t *testing.T) {
	f, alpha, beta := twoDrivers(t)
	ctx := context.Background()
	b, err := f.svc.Create(ctx, api.CreateVMParams{Name: "b", WorkDisk: "32M", VMM: "beta", NoStart: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	beta.mu.Lock()
	beta.procs[9999] = b.Dir
	beta.mu.Unlock()
	f.svc = New(f.deps) // default alpha
	if err := f.svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := running(t, f, alpha, beta); got != "alpha=[] beta=[]" {
		t.Fatalf("after reconcile: %s", got)
	}
}
