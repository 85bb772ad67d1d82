package vm

import (
	"context"
	"errors"
	"fmt"
	"github.com/banger-dev/banger/internal/agent"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
	"github.com/banger-dev/banger/internal/vmm"
)

// host is a state-keeping fake of the machine: VMM processes, TAPs, and
// which guests answer SSH. Tests compare what is left, not call order.
type host struct {
	mu      sync.Mutex
	nextPID int
	procs   map[int]string  // alive pid → VM dir
	taps    map[string]bool // TAP name → up (in use); down TAPs are idle in the pool
	bridge  bool
	ready   map[string]error // by VM id; missing = ready
	execs   []string
}

func newHost() *host {
	return &host{nextPID: 1000, procs: map[int]string{}, taps: map[string]bool{}, ready: map[string]error{}}
}

func (h *host) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var taps []string
	for t, up := range h.taps {
		if up {
			taps = append(taps, t)
		}
	}
	sort.Strings(taps)
	return fmt.Sprintf("procs=%d taps=%v", len(h.procs), taps)
}

// pool lists every TAP that exists, up or down.
func (h *host) pool() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var taps []string
	for t := range h.taps {
		taps = append(taps, t)
	}
	sort.Strings(taps)
	return taps
}

// Driver side.
type fakeDriver struct{ h *host }

func (d fakeDriver) Name() string { return "fake" }
func (d fakeDriver) Start(ctx context.Context, s vmm.Spec) (int, error) {
	d.h.mu.Lock()
	defer d.h.mu.Unlock()
	if !d.h.taps[s.Tap] {
		return 0, fmt.Errorf("tap %s missing", s.Tap)
	}
	for _, dk := range s.Disks {
		if _, err := os.Stat(dk.Path); err != nil {
			return 0, err
		}
	}
	d.h.nextPID++
	d.h.procs[d.h.nextPID] = s.Dir
	return d.h.nextPID, nil
}
func (d fakeDriver) Find(s vmm.Spec) (int, bool) {
	d.h.mu.Lock()
	defer d.h.mu.Unlock()
	for pid, dir := range d.h.procs {
		if dir == s.Dir {
			return pid, true
		}
	}
	return 0, false
}
func (d fakeDriver) Shutdown(ctx context.Context, pid int) error { return d.Kill(pid) }
func (d fakeDriver) Kill(pid int) error {
	d.h.mu.Lock()
	defer d.h.mu.Unlock()
	delete(d.h.procs, pid)
	return nil
}
func (d fakeDriver) Alive(pid int) bool {
	d.h.mu.Lock()
	defer d.h.mu.Unlock()
	_, ok := d.h.procs[pid]
	return ok
}

// Network side.
type fakeNet struct{ h *host }

func (n fakeNet) EnsureBridge(ctx context.Context) error {
	n.h.mu.Lock()
	defer n.h.mu.Unlock()
	n.h.bridge = true
	return nil
}
func (n fakeNet) CreateTap(ctx context.Context, name string, uid int) error {
	n.h.mu.Lock()
	defer n.h.mu.Unlock()
	n.h.taps[name] = true
	return nil
}
func (n fakeNet) DeleteTap(ctx context.Context, name string) error {
	n.h.mu.Lock()
	defer n.h.mu.Unlock()
	delete(n.h.taps, name)
	return nil
}
func (n fakeNet) FlushNeigh(ctx context.Context, ip netip.Addr) error { return nil }
func (n fakeNet) PoolTaps(ctx context.Context) ([]string, error) {
	n.h.mu.Lock()
	defer n.h.mu.Unlock()
	var out []string
	for t := range n.h.taps {
		if _, ok := hostnet.PoolTapIndex(t); ok {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, _ := hostnet.PoolTapIndex(out[i])
		b, _ := hostnet.PoolTapIndex(out[j])
		return a < b
	})
	return out, nil
}

// OpenTap hands out /dev/null for a TAP that exists: the fake driver never reads it.
func (n fakeNet) OpenTap(ctx context.Context, name string) (*os.File, error) {
	n.h.mu.Lock()
	defer n.h.mu.Unlock()
	if _, ok := n.h.taps[name]; !ok {
		return nil, fmt.Errorf("open tap %s: no such tap", name)
	}
	return os.Open(os.DevNull)
}
func (n fakeNet) ReleaseTap(ctx context.Context, name string) error {
	n.h.mu.Lock()
	defer n.h.mu.Unlock()
	if _, ok := n.h.taps[name]; ok {
		n.h.taps[name] = false
	}
	return nil
}

// Guest side.
type fakeGuest struct{ h *host }

func (g fakeGuest) WaitReady(ctx context.Context, t guest.Target, interval time.Duration) error {
	g.h.mu.Lock()
	err := g.h.ready[t.VMID]
	g.h.mu.Unlock()
	if err == nil {
		return nil
	}
	<-ctx.Done()
	return errors.Join(ctx.Err(), err)
}
func (g fakeGuest) Exec(ctx context.Context, t guest.Target, req guest.ExecRequest) (int, error) {
	g.h.mu.Lock()
	defer g.h.mu.Unlock()
	g.h.execs = append(g.h.execs, req.Command)
	return 0, nil
}
func (g fakeGuest) Shutdown(ctx context.Context, t guest.Target) error { return nil }
func (g fakeGuest) Drop(string)                                        {}
func (g fakeGuest) Agent(ctx context.Context, t guest.Target) (*agent.Client, error) {
	return nil, fmt.Errorf("fake guest: %w", guest.ErrNoAgent)
}
func (g fakeGuest) Client(ctx context.Context, t guest.Target) (*ssh.Client, error) {
	return nil, nil
}

type fixture struct {
	svc    *Service
	h      *host
	st     *store.Store
	layout paths.Layout
	kh     *guest.KnownHosts
	deps   Deps
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	testenv.RequireTools(t, "mkfs.ext4")
	ctx := context.Background()
	layout := paths.Layout{Root: t.TempDir()}
	if err := layout.Ensure(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, layout.DB())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	runner := system.Exec{}
	imgPath := filepath.Join(layout.Image("default"), paths.RootfsFile)
	if err := os.MkdirAll(filepath.Dir(imgPath), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := disk.CreateExt4(ctx, runner, imgPath, 32<<20, "rootfs", ""); err != nil {
		t.Fatal(err)
	}
	kern := filepath.Join(layout.Kernel("k"), "vmlinuz")
	_ = os.MkdirAll(filepath.Dir(kern), 0o700)
	_ = os.WriteFile(kern, []byte("kernel"), 0o644)
	if err := st.CreateKernel(ctx, &store.Kernel{Name: "k", Version: "1", Source: "test", Path: kern, Initrd: kern}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateImage(ctx, &store.Image{Name: "default", Source: "test", Path: imgPath, SizeBytes: 32 << 20}); err != nil {
		t.Fatal(err)
	}
	kh, err := guest.OpenKnownHosts(filepath.Join(layout.SSHDir(), paths.KnownHostsFile))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := guest.EnsureClientKey(layout.ClientKey())
	if err != nil {
		t.Fatal(err)
	}
	h := newHost()
	d := Deps{
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Layout: layout, Store: st, Runner: runner,
		Driver: fakeDriver{h}, Net: fakeNet{h}, Subnet: netip.MustParsePrefix("172.30.9.0/24"),
		Gateway: netip.MustParseAddr("172.30.9.1"), Guest: fakeGuest{h}, KnownHosts: kh, ClientKey: signer.PublicKey(),
	}
	return &fixture{svc: New(d), h: h, st: st, layout: layout, kh: kh, deps: d}
}

func (f *fixture) create(t *testing.T, name string) store.VM {
	t.Helper()
	v, err := f.svc.Create(context.Background(), api.CreateVMParams{Name: name, WorkDisk: "32M"}, nil)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return v
}

func TestCreateDeleteLeavesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var stages []string
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "dev", WorkDisk: "32M"}, func(s, _ string) { stages = append(stages, s) })
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(stages, ","); got != "vm_dir,identity,root_disk,work_disk,record,seed,tap,nat,vmm_launch,wait_ready,ready" {
		t.Errorf("stages = %s", got)
	}
	if v.State != StateRunning || v.CloneMethod == "" {
		t.Fatalf("vm = %+v", v)
	}
	if f.h.String() != "procs=1 taps=["+v.Tap+"]" {
		t.Fatalf("host = %s", f.h)
	}
	if keys, _ := f.kh.Keys(v.GuestIP); len(keys) != 1 {
		t.Fatalf("host key not pinned before first dial: %v", keys)
	}
	for _, fn := range []string{paths.VMRootFile, paths.VMWorkFile, paths.VMSeedFile, paths.VMHandlesFile} {
		if _, err := os.Stat(filepath.Join(v.Dir, fn)); err != nil {
			t.Errorf("%s: %v", fn, err)
		}
	}
	if err := f.svc.Delete(ctx, "dev", false); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("delete running without force: %v", err)
	}
	if err := f.svc.Delete(ctx, "dev", true); err != nil {
		t.Fatal(err)
	}
	if f.h.String() != "procs=0 taps=[]" {
		t.Fatalf("host after delete = %s", f.h)
	}
	if _, err := os.Stat(v.Dir); !os.IsNotExist(err) {
		t.Fatalf("vm dir left: %v", err)
	}
	if keys, _ := f.kh.Keys(v.GuestIP); len(keys) != 0 {
		t.Fatal("pin left after delete")
	}
	if _, err := f.st.GetVM(ctx, "dev"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("row left: %v", err)
	}
}

func TestInvalidInputIsRefusedAndLosesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.create(t, "keep")
	for _, p := range []api.CreateVMParams{
		{Name: "Bad_Name"}, {Name: "-x"}, {Name: strings.Repeat("a", 40)}, {Name: "a/../b"},
		{Name: "ok", VCPU: 99}, {Name: "ok", MemoryMiB: 1}, {Name: "ok", Disk: "lots"}, {Name: "ok", WorkDisk: "-1G"},
		{Name: "ok", Disk: "1M"}, {Name: "ok", Image: "nope"}, {Name: "ok", Kernel: "nope"},
	} {
		_, err := f.svc.Create(ctx, p, nil)
		if err == nil {
			t.Errorf("create %+v succeeded", p)
			continue
		}
		if !errors.Is(err, api.ErrInvalid) && !errors.Is(err, api.ErrNotFound) {
			t.Errorf("create %+v: want invalid/not_found, got %v", p, err)
		}
	}
	if _, err := f.svc.Create(ctx, api.CreateVMParams{Name: "keep"}, nil); !errors.Is(err, api.ErrExists) {
		t.Errorf("duplicate name: %v", err)
	}
	vms, _ := f.st.ListVMs(ctx)
	if len(vms) != 1 || vms[0].State != StateRunning {
		t.Fatalf("vms after bad input = %+v", vms)
	}
	entries, _ := os.ReadDir(f.layout.VMsDir())
	if len(entries) != 1 {
		t.Fatalf("vm dirs = %d, want 1", len(entries))
	}
}

func TestGuestThatNeverBootsIsRolledBack(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "slow", WorkDisk: "32M", NoStart: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.h.ready[v.ID] = errors.New("connection refused")
	_, err = f.svc.Create(ctx, api.CreateVMParams{Name: "other", WorkDisk: "32M"}, nil) // unaffected
	if err != nil {
		t.Fatal(err)
	}
	err = f.svc.start(ctx, &v, 300*time.Millisecond, nil)
	if err == nil {
		t.Fatal("start of a guest that never answers succeeded")
	}
	if !strings.Contains(err.Error(), "did not answer ssh within") {
		t.Errorf("error does not say what happened: %v", err)
	}
	got, _ := f.st.GetVM(ctx, "slow")
	if got.State != StateError || got.LastError == "" {
		t.Errorf("row after failed boot = %+v", got)
	}
	if s := f.h.String(); s != "procs=1 taps=["+mustVM(t, f, "other").Tap+"]" {
		t.Fatalf("failed boot leaked: %s", s)
	}
	// Nothing lost: the disks are still there and a later start works.
	delete(f.h.ready, v.ID)
	if _, err := f.svc.Start(ctx, "slow", nil); err != nil {
		t.Fatal(err)
	}
}

func mustVM(t *testing.T, f *fixture, name string) store.VM {
	v, err := f.st.GetVM(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A daemon restart adopts live VMMs (rewriting a corrupt handles.json from
// what it found), tears down dead ones, and marks an interrupted create as
// failed. Reconcile never reads a pid from handles.json: see
// TestReconcileDoesNotTrustHandlesFile (crash_test.go).
func TestReconcile(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	live := f.create(t, "live")
	dead := f.create(t, "dead")
	corrupt := f.create(t, "corrupt")
	// Simulate a daemon killed mid-create: row in "creating", TAP acquired.
	mid := store.VM{ID: "abcdef012345", Name: "mid", Image: "default", Kernel: "k", VCPU: 1, MemoryMiB: 256,
		GuestIP: "172.30.9.200", MAC: "02:00:00:00:00:c8", Tap: "bgr-abcdef0123", State: StateCreating, Dir: f.layout.VM("abcdef012345")}
	if err := f.st.CreateVM(ctx, &mid); err != nil {
		t.Fatal(err)
	}
	f.h.taps[mid.Tap] = true
	// The dead VM's VMM vanished while no daemon watched.
	f.h.mu.Lock()
	for pid, dir := range f.h.procs {
		if dir == dead.Dir {
			delete(f.h.procs, pid)
		}
	}
	f.h.mu.Unlock()
	if err := os.WriteFile(filepath.Join(corrupt.Dir, paths.VMHandlesFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	// "Restart" the daemon: a fresh service over the same store and host.
	svc2 := New(f.deps)
	if err := svc2.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"live": StateRunning, "corrupt": StateRunning, "dead": StateStopped, "mid": StateError}
	for name, state := range want {
		got := mustVM(t, f, name)
		if got.State != state {
			t.Errorf("%s: state %s, want %s (%s)", name, got.State, state, got.LastError)
		}
	}
	if !svc2.Running(mustVM(t, f, "live")) || !svc2.Running(mustVM(t, f, "corrupt")) {
		t.Error("live VMs not adopted")
	}
	if h, err := svc2.readHandles(corrupt); err != nil || h.PID != svc2.handle(corrupt.ID).PID || h.Tap != corrupt.Tap {
		t.Errorf("adopted vm's handles.json not rewritten: %+v, %v", h, err)
	}
	if s := f.h.String(); s != fmt.Sprintf("procs=2 taps=%v", sortedTaps(live.Tap, corrupt.Tap)) {
		t.Errorf("after reconcile: %s", s)
	}
	// The adopted VM is fully manageable by the new service.
	if _, err := svc2.Stop(ctx, "live", false); err != nil {
		t.Fatal(err)
	}
	if _, err := svc2.Exec(ctx, "live", guest.ExecRequest{Command: "true"}); !errors.Is(err, api.ErrNotRunning) {
		t.Fatalf("exec on a stopped vm: %v", err)
	}
}

func sortedTaps(t ...string) []string { sort.Strings(t); return t }

func TestMonitorNoticesVMMDeath(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	v := f.create(t, "crash")
	h := f.svc.handle(v.ID)
	_ = fakeDriver{f.h}.Kill(h.PID)
	deadline := time.Now().Add(5 * time.Second)
	for mustVM(t, f, "crash").State == StateRunning {
		if time.Now().After(deadline) {
			t.Fatal("monitor did not notice")
		}
		time.Sleep(50 * time.Millisecond)
	}
	got := mustVM(t, f, "crash")
	if got.State != StateStopped || !strings.Contains(got.LastError, "unexpectedly") {
		t.Fatalf("after vmm death: %+v", got)
	}
	if f.h.String() != "procs=0 taps=[]" {
		t.Fatalf("leak after vmm death: %s", f.h)
	}
	if _, err := f.svc.Start(ctx, "crash", nil); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentCreatesGetDistinctIPs(t *testing.T) {
	f := newFixture(t)
	const n = 4
	// Between allocation and insert, each create waits (bounded) for the
	// others to allocate too. Under the service lock none can, so each waits
	// alone and moves on; without it all allocate the same free address and
	// all but one insert fail, on every run.
	var mu sync.Mutex
	arrived := 0
	f.svc.afterAllocIP = func() {
		mu.Lock()
		arrived++
		mu.Unlock()
		deadline := time.Now().Add(300 * time.Millisecond)
		for time.Now().Before(deadline) {
			mu.Lock()
			all := arrived == n
			mu.Unlock()
			if all {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = f.svc.Create(context.Background(), api.CreateVMParams{Name: fmt.Sprintf("c%d", i), WorkDisk: "32M"}, nil)
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("create c%d: %v", i, err)
		}
		v := mustVM(t, f, fmt.Sprintf("c%d", i))
		if seen[v.GuestIP] {
			t.Fatalf("duplicate ip %s", v.GuestIP)
		}
		seen[v.GuestIP] = true
	}
}

// DialAgent: the fake guests have no agent; the Router falls back to SSH.
func (d fakeDriver) DialAgent(ctx context.Context, dir string) (net.Conn, error) {
	return nil, errors.New("fake driver: no agent channel")
}

// stubbornDriver's Kill refuses (as the real drivers do for a pid that is
// no longer provably theirs) and the process lives on.
type stubbornDriver struct {
	fakeDriver
	refuse *bool
}

func (d stubbornDriver) Kill(pid int) error {
	if *d.refuse {
		return fmt.Errorf("pid %d: not provably this vm's vmm", pid)
	}
	return d.fakeDriver.Kill(pid)
}

// TestTeardownKeepsTapOfLiveVMM: a VMM that could not be killed keeps its
// TAP claimed and its rules: no other VM is handed a TAP a live guest
// holds (TUNSETIFF: device busy), and that guest stays guarded.
func TestTeardownKeepsTapOfLiveVMM(t *testing.T) {
	f := newFixture(t)
	refuse := false
	f.deps.Driver = stubbornDriver{fakeDriver{f.h}, &refuse}
	f.svc = New(f.deps)
	ctx := context.Background()
	v := f.create(t, "stuck")
	refuse = true
	if err := f.svc.Delete(ctx, "stuck", true); err == nil {
		t.Fatal("delete of a VM whose VMM would not die succeeded")
	}
	got := mustVM(t, f, "stuck")
	if got.Tap != v.Tap || got.State != StateError {
		t.Fatalf("after a failed kill: tap %q (was %q), state %s", got.Tap, v.Tap, got.State)
	}
	if s := f.h.String(); s != "procs=1 taps=["+v.Tap+"]" {
		t.Fatalf("host after a failed kill: %s", s)
	}
	// Another VM gets another TAP.
	if other := f.create(t, "other"); other.Tap == v.Tap {
		t.Fatalf("a new VM was handed %s, held by a live VMM", v.Tap)
	}
	// The same in a start that rolls back: a guest that never answers,
	// a VMM that will not die.
	late, err := f.svc.Create(ctx, api.CreateVMParams{Name: "late", WorkDisk: "32M", NoStart: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.h.ready[late.ID] = errors.New("connection refused")
	if err := f.svc.start(ctx, &late, 200*time.Millisecond, nil); err == nil {
		t.Fatal("start of a guest that never answers succeeded")
	}
	if got := mustVM(t, f, "late"); got.Tap == "" || got.State != StateError {
		t.Fatalf("rolled-back start with a live VMM: tap %q state %s", got.Tap, got.State)
	}
	refuse = false
	if err := f.svc.Delete(ctx, "late", true); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Delete(ctx, "stuck", true); err != nil {
		t.Fatal(err)
	}
	if s := f.h.String(); s != "procs=1 taps=["+mustVM(t, f, "other").Tap+"]" {
		t.Fatalf("host after the retried delete: %s", s)
	}
}
