package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
	"github.com/banger-dev/banger/internal/vm"
	"github.com/banger-dev/banger/internal/vmm"
)

// slowHost extends fakeHost with VMMs that start and guests that answer
// only once the test opens the gate: a boot the test holds in wait_ready.
type slowHost struct {
	*fakeHost
	gate     chan struct{}
	opened   sync.Once
	readyErr error // what WaitReady returns once the gate is open
	nextPID  int   // under fakeHost.mu
}

func (h *slowHost) open() { h.opened.Do(func() { close(h.gate) }) }

type slowDriver struct {
	fakeDriver
	s *slowHost
}

func (d slowDriver) Start(ctx context.Context, s vmm.Spec) (int, error) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	d.s.nextPID++
	d.s.procs[d.s.nextPID] = true
	return d.s.nextPID, nil
}

type slowGuest struct {
	fakeGuest
	s *slowHost
}

func (g slowGuest) WaitReady(ctx context.Context, t guest.Target, interval time.Duration) error {
	select {
	case <-g.s.gate:
		return g.s.readyErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

type opEnv struct {
	st        *store.Store
	host      *slowHost
	client    *rpc.Client
	serveDone chan struct{}
}

// newOpEnv serves the real dispatch over a real socket with the real VM
// service (real disks, store, known_hosts) on slowHost, and daemon.stop
// wired to end Serve after grace, as bangerd does.
func newOpEnv(t *testing.T, grace time.Duration) *opEnv {
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
	kern := filepath.Join(layout.Kernel("k"), paths.KernelFile)
	if err := os.MkdirAll(filepath.Dir(kern), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kern, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateKernel(ctx, &store.Kernel{Name: "k", Version: "1", Source: "test", Path: kern}); err != nil {
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
	h := &slowHost{fakeHost: newFakeHost(), gate: make(chan struct{})}
	svc := vm.New(vm.Deps{
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Layout: layout, Store: st, Runner: runner,
		Driver: slowDriver{fakeDriver{h.fakeHost}, h}, Net: fakeNet{h.fakeHost}, Guest: slowGuest{fakeGuest{h.fakeHost}, h},
		KnownHosts: kh, ClientKey: signer.PublicKey(),
		Subnet: netip.MustParsePrefix("172.30.0.0/24"), Gateway: netip.MustParseAddr("172.30.0.1"),
		UID: os.Getuid(), GID: os.Getgid(),
	})
	srv := rpc.NewServer(nil, os.Getuid())
	srv.ShutdownGrace = grace
	sctx, shutdown := context.WithCancel(ctx)
	Register(srv, Deps{Layout: layout, Store: st, VMs: svc, Shutdown: shutdown,
		Accel: func() string { return "tcg" }})
	ln, err := rpc.Listen(layout.Socket())
	if err != nil {
		t.Fatal(err)
	}
	e := &opEnv{st: st, host: h, client: rpc.NewClient(layout.Socket()), serveDone: make(chan struct{})}
	go func() {
		if err := srv.Serve(sctx, ln); err != nil {
			t.Errorf("Serve: %v", err)
		}
		close(e.serveDone)
	}()
	t.Cleanup(func() {
		h.open() // no boot left waiting
		shutdown()
		select {
		case <-e.serveDone:
		case <-time.After(20 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return e
}

func (e *opEnv) call(t *testing.T, method string, params, result any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return e.client.Call(ctx, method, params, result)
}

// waitStage polls vm.show until the VM's operation is in stage.
func (e *opEnv) waitStage(t *testing.T, name, stage string) api.Operation {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var v api.VM
	var err error
	for time.Now().Before(deadline) {
		v = api.VM{}
		err = e.call(t, api.MethodVMShow, api.NameParams{Name: name}, &v)
		if err == nil && v.Operation != nil && v.Operation.Stage == stage {
			return *v.Operation
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("vm %s never showed stage %s: %v %+v", name, stage, err, v.Operation)
	return api.Operation{}
}

// waiter is a vm.wait call in the background; it keeps the stages it was
// sent as text.
type waiter struct {
	mu     sync.Mutex
	stages []string
	bad    []string // events without a time, or out of order
	last   time.Time
	got    chan string
	done   chan struct{}
	v      api.VM
	err    error
}

func (e *opEnv) wait(name string) *waiter {
	w := &waiter{got: make(chan string, 64), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		w.err = e.client.Call(ctx, api.MethodVMWait, api.NameParams{Name: name}, &w.v, rpc.WithEvents(func(ev api.Event) {
			w.mu.Lock()
			w.stages = append(w.stages, ev.Stage)
			if ev.At.IsZero() || ev.At.Before(w.last) {
				w.bad = append(w.bad, fmt.Sprintf("%s at %v", ev.Stage, ev.At))
			}
			w.last = ev.At
			w.mu.Unlock()
			w.got <- ev.Stage
		}))
	}()
	return w
}

func (w *waiter) text() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.stages, ",") + strings.Join(w.bad, "; ")
}

func (w *waiter) waitFor(t *testing.T, stage string) {
	t.Helper()
	for {
		select {
		case s := <-w.got:
			if s == stage {
				return
			}
		case <-w.done:
			t.Fatalf("vm.wait returned (%v) before stage %s; saw %s", w.err, stage, w.text())
		case <-time.After(20 * time.Second):
			t.Fatalf("vm.wait never got stage %s; saw %s", stage, w.text())
		}
	}
}

func (w *waiter) result(t *testing.T) (api.VM, error) {
	t.Helper()
	select {
	case <-w.done:
		return w.v, w.err
	case <-time.After(30 * time.Second):
		t.Fatalf("vm.wait did not return; saw %s", w.text())
		return api.VM{}, nil
	}
}

const createStages = "vm_dir,identity,root_disk,work_disk,record,seed,tap,nat,vmm_launch,wait_ready,ready"

// A detached create answers with its op id at once; two clients that attach
// while it is in wait_ready get the stages seen so far (with the times they
// began) and then the later ones, and both end with the VM. Once it is
// over, vm.show has no operation and vm.wait answers at once.
func TestWaitFollowsDetachedCreate(t *testing.T) {
	e := newOpEnv(t, 10*time.Second)
	var started api.OpStarted
	if err := e.call(t, api.MethodVMCreate, api.CreateVMParams{Name: "slow", WorkDisk: "32M", Detach: true}, &started); err != nil {
		t.Fatal(err)
	}
	if started.Kind != "create" || started.Name != "slow" || started.OpID == "" {
		t.Fatalf("detached create answered %+v", started)
	}
	op := e.waitStage(t, "slow", "wait_ready")
	if op.OpID != started.OpID || op.Kind != "create" || op.StageStarted.Before(op.Started) {
		t.Errorf("vm.show operation %+v (started as %s)", op, started.OpID)
	}
	a, b := e.wait("slow"), e.wait("slow")
	a.waitFor(t, "wait_ready")
	b.waitFor(t, "wait_ready")
	e.host.open()
	for name, w := range map[string]*waiter{"first": a, "second": b} {
		v, err := w.result(t)
		if err != nil || v.Name != "slow" || v.State != vm.StateRunning || v.Operation != nil {
			t.Errorf("%s waiter: %v %+v", name, err, v)
		}
		if got := w.text(); got != createStages {
			t.Errorf("%s waiter saw %s\nwant %s", name, got, createStages)
		}
	}
	var v api.VM
	if err := e.call(t, api.MethodVMShow, api.NameParams{Name: "slow"}, &v); err != nil || v.Operation != nil || v.State != vm.StateRunning {
		t.Errorf("vm.show after the create: %v state %s operation %+v", err, v.State, v.Operation)
	}
	// Over: the result at once, no stages.
	late := e.wait("slow")
	if v, err := late.result(t); err != nil || v.State != vm.StateRunning || late.text() != "" {
		t.Errorf("vm.wait after the create: %v %+v stages %q", err, v, late.text())
	}
}

// A detached start that fails after it got under way: vm.wait ends with
// its error and code, also when asked again later, until the VM no longer
// shows the failure (stopped: then the VM as it is).
func TestWaitFailingStartKeepsItsCode(t *testing.T) {
	e := newOpEnv(t, 10*time.Second)
	if err := e.call(t, api.MethodVMCreate, api.CreateVMParams{Name: "bad", WorkDisk: "32M", NoStart: true}, nil); err != nil {
		t.Fatal(err)
	}
	e.host.readyErr = fmt.Errorf("guest refused the client key: %w", api.ErrPermission)
	var started api.OpStarted
	if err := e.call(t, api.MethodVMStart, api.StartVMParams{Name: "bad", Detach: true}, &started); err != nil {
		t.Fatal(err)
	}
	if started.Kind != "start" || started.Name != "bad" {
		t.Fatalf("detached start answered %+v", started)
	}
	e.waitStage(t, "bad", "wait_ready")
	w := e.wait("bad")
	w.waitFor(t, "wait_ready")
	e.host.open()
	_, err := w.result(t)
	wantOpError := func(what string, err error) {
		t.Helper()
		wantCode(t, what, err, api.CodePermission)
		if err == nil || !strings.Contains(err.Error(), "start (op "+started.OpID+"): ") ||
			!strings.Contains(err.Error(), "wait_ready: guest refused the client key") {
			t.Errorf("%s: %v", what, err)
		}
	}
	wantOpError("vm.wait of the failing start", err)
	if got := w.text(); got != "seed,tap,nat,vmm_launch,wait_ready" {
		t.Errorf("stages %s", got)
	}
	var v api.VM
	if err := e.call(t, api.MethodVMShow, api.NameParams{Name: "bad"}, &v); err != nil || v.State != vm.StateError || v.Operation != nil {
		t.Fatalf("vm.show after the failure: %v %+v", err, v)
	}
	wantOpError("vm.wait after the failure", e.call(t, api.MethodVMWait, api.NameParams{Name: "bad"}, nil))
	// Stopped since: the failure is history, the VM is what it is.
	if err := e.call(t, api.MethodVMStop, api.NameParams{Name: "bad"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.call(t, api.MethodVMWait, api.NameParams{Name: "bad"}, &v); err != nil || v.State != vm.StateStopped {
		t.Errorf("vm.wait once stopped: %v %+v", err, v)
	}
	// Deleted: no VM, whatever its last operation was.
	if err := e.call(t, api.MethodVMDelete, api.DeleteVMParams{Name: "bad"}, nil); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "vm.wait after delete", e.call(t, api.MethodVMWait, api.NameParams{Name: "bad"}, nil), api.CodeNotFound)
}

// With nothing running, vm.wait answers at once from the VM's state.
func TestWaitIdle(t *testing.T) {
	e := newOpEnv(t, 10*time.Second)
	var v api.VM
	if err := e.call(t, api.MethodVMCreate, api.CreateVMParams{Name: "idle", WorkDisk: "32M", NoStart: true}, &v); err != nil {
		t.Fatal(err)
	}
	w := e.wait("idle")
	if got, err := w.result(t); err != nil || got.State != vm.StateStopped || got.Name != "idle" || w.text() != "" {
		t.Errorf("vm.wait on a stopped VM: %v %+v stages %q", err, got, w.text())
	}
	// By id too.
	if err := e.call(t, api.MethodVMWait, api.NameParams{Name: v.ID}, &v); err != nil || v.Name != "idle" {
		t.Errorf("vm.wait by id: %v %+v", err, v)
	}
	wantCode(t, "vm.wait missing", e.call(t, api.MethodVMWait, api.NameParams{Name: "nope"}, nil), api.CodeNotFound)
	// A row in error with no operation known (e.g. from before a daemon restart).
	row, err := e.st.GetVM(context.Background(), "idle")
	if err != nil {
		t.Fatal(err)
	}
	row.State, row.LastError = vm.StateError, "vmm exited unexpectedly"
	if err := e.st.UpdateVM(context.Background(), &row); err != nil {
		t.Fatal(err)
	}
	err = e.call(t, api.MethodVMWait, api.NameParams{Name: "idle"}, nil)
	wantCode(t, "vm.wait in error", err, api.CodeNotRunning)
	if err == nil || !strings.Contains(err.Error(), "vmm exited unexpectedly") {
		t.Errorf("vm.wait in error: %v", err)
	}
}

// Up-front failures of a detached request come back as its own error; a
// second operation on a VM with one in progress is refused, naming it.
func TestDetachRefusals(t *testing.T) {
	e := newOpEnv(t, 10*time.Second)
	wantCode(t, "detached create, bad name", e.call(t, api.MethodVMCreate,
		api.CreateVMParams{Name: "Bad_Name", Detach: true}, nil), api.CodeInvalid)
	wantCode(t, "detached start, missing", e.call(t, api.MethodVMStart,
		api.StartVMParams{Name: "nope", Detach: true}, nil), api.CodeNotFound)
	var started api.OpStarted
	if err := e.call(t, api.MethodVMCreate, api.CreateVMParams{Name: "slow", WorkDisk: "32M", Detach: true}, &started); err != nil {
		t.Fatal(err)
	}
	e.waitStage(t, "slow", "wait_ready")
	err := e.call(t, api.MethodVMStart, api.StartVMParams{Name: "slow"}, nil)
	wantCode(t, "start during the create", err, api.CodeBusy)
	if err == nil || !strings.Contains(err.Error(), "create is in progress (op "+started.OpID) {
		t.Errorf("start during the create: %v", err)
	}
	wantCode(t, "create again", e.call(t, api.MethodVMCreate, api.CreateVMParams{Name: "slow", Detach: true}, nil), api.CodeExists)
	e.host.open()
	var v api.VM
	if err := e.call(t, api.MethodVMWait, api.NameParams{Name: "slow"}, &v); err != nil || v.State != vm.StateRunning {
		t.Errorf("vm.wait: %v %+v", err, v)
	}
}

// A daemon that shuts down ends its waiters with shutting_down, once the
// operation they follow has rolled back.
func TestWaitEndsAtShutdown(t *testing.T) {
	e := newOpEnv(t, 200*time.Millisecond)
	var started api.OpStarted
	if err := e.call(t, api.MethodVMCreate, api.CreateVMParams{Name: "slow", WorkDisk: "32M", Detach: true}, &started); err != nil {
		t.Fatal(err)
	}
	e.waitStage(t, "slow", "wait_ready")
	w := e.wait("slow")
	w.waitFor(t, "wait_ready")
	if err := e.call(t, api.MethodDaemonStop, nil, nil); err != nil {
		t.Fatal(err)
	}
	_, err := w.result(t)
	var we *api.Error
	if !errors.As(err, &we) || we.Code != api.CodeShutdown ||
		!strings.HasPrefix(we.Message, "the daemon is shutting down; vm.wait was interrupted: create (op "+started.OpID+"): ") {
		t.Fatalf("waiter at shutdown: %v", err)
	}
	// It was told how the create ended: rolled back, already.
	if !strings.Contains(we.Message, `create vm "slow": rolled back: `) {
		t.Errorf("waiter at shutdown was not told the create's end: %v", err)
	}
	if _, err := e.st.GetVM(context.Background(), "slow"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("row when the waiter was answered: %v", err)
	}
	select {
	case <-e.serveDone:
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return")
	}
}
