package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/banger-dev/banger/internal/agent"
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
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vm"
	"github.com/banger-dev/banger/internal/vmm"
)

// fakeHost keeps the state the VM service's collaborators would touch:
// pooled TAPs, VMM processes, dropped SSH clients, host-key pins.
type fakeHost struct {
	mu      sync.Mutex
	taps    map[string]bool // name → up
	procs   map[int]bool
	dropped []string
	pins    map[string]bool
}

func newFakeHost() *fakeHost {
	return &fakeHost{taps: map[string]bool{}, procs: map[int]bool{}, pins: map[string]bool{}}
}

type fakeNet struct{ h *fakeHost }

func (n fakeNet) EnsureBridge(ctx context.Context) error { return nil }
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
	sort.Strings(out)
	return out, nil
}

// OpenTap hands out /dev/null: the fake driver never reads it.
func (n fakeNet) OpenTap(ctx context.Context, name string) (*os.File, error) {
	return os.Open(os.DevNull)
}
func (n fakeNet) ReleaseTap(ctx context.Context, name string) error {
	n.h.mu.Lock()
	defer n.h.mu.Unlock()
	if _, ok := n.h.taps[name]; !ok {
		return errors.New("no such tap " + name)
	}
	n.h.taps[name] = false
	return nil
}

type fakeDriver struct{ h *fakeHost }

func (d fakeDriver) Name() string { return "fake" }
func (d fakeDriver) Start(ctx context.Context, s vmm.Spec) (int, error) {
	return 0, errors.New("fake driver: no VMs boot in unit tests")
}
func (d fakeDriver) Find(s vmm.Spec) (int, bool)                 { return 0, false }
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
	return d.h.procs[pid]
}

type fakeGuest struct{ h *fakeHost }

func (g fakeGuest) WaitReady(ctx context.Context, t guest.Target, interval time.Duration) error {
	return errors.New("fake guest: unreachable")
}
func (g fakeGuest) Exec(ctx context.Context, t guest.Target, req guest.ExecRequest) (int, error) {
	return 0, errors.New("fake guest: unreachable")
}
func (g fakeGuest) Shutdown(ctx context.Context, t guest.Target) error { return nil }
func (g fakeGuest) Client(ctx context.Context, t guest.Target) (*ssh.Client, error) {
	return nil, errors.New("fake guest: unreachable")
}
func (g fakeGuest) Drop(vmID string) {
	g.h.mu.Lock()
	defer g.h.mu.Unlock()
	g.h.dropped = append(g.h.dropped, vmID)
}
func (g fakeGuest) Agent(ctx context.Context, t guest.Target) (*agent.Client, error) {
	return nil, fmt.Errorf("fake guest: %w", guest.ErrNoAgent)
}

type fakePins struct{ h *fakeHost }

func (p fakePins) Pin(host string, key ssh.PublicKey) error {
	p.h.mu.Lock()
	defer p.h.mu.Unlock()
	p.h.pins[host] = true
	return nil
}
func (p fakePins) Remove(hosts ...string) error {
	p.h.mu.Lock()
	defer p.h.mu.Unlock()
	for _, h := range hosts {
		delete(p.h.pins, h)
	}
	return nil
}

type env struct {
	layout paths.Layout
	st     *store.Store
	host   *fakeHost
	client *rpc.Client
}

// newEnv serves the real dispatch (Register) over a real socket, backed by
// a real SQLite store and a vm.Service on state-keeping fakes.
func newEnv(t *testing.T) *env {
	t.Helper()
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
	h := newFakeHost()
	svc := vm.New(vm.Deps{
		Layout: layout, Store: st, Driver: fakeDriver{h}, Net: fakeNet{h}, Guest: fakeGuest{h}, KnownHosts: fakePins{h},
		Subnet: netip.MustParsePrefix("172.30.0.0/24"), Gateway: netip.MustParseAddr("172.30.0.1"),
		UID: os.Getuid(), GID: os.Getgid(),
	})
	srv := rpc.NewServer(nil, os.Getuid())
	Register(srv, Deps{
		Log: nil, Layout: layout, Store: st, VMs: svc,
		Accel:  func() string { return "tcg" },
		Doctor: func(ctx context.Context) api.DoctorResult { return api.DoctorResult{} },
	})
	ln, err := rpc.Listen(layout.Socket())
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(sctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return &env{layout: layout, st: st, host: h, client: rpc.NewClient(layout.Socket())}
}

func (e *env) call(t *testing.T, method string, params, result any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return e.client.Call(ctx, method, params, result)
}

// wantCode checks err is a wire error with code.
func wantCode(t *testing.T, what string, err error, code api.Code) {
	t.Helper()
	var we *api.Error
	if !errors.As(err, &we) {
		t.Errorf("%s: err %v, want a wire error %s", what, err, code)
		return
	}
	if we.Code != code || we.OpID == "" {
		t.Errorf("%s: code %s op %q (%s), want %s", what, we.Code, we.OpID, we.Message, code)
	}
}

func (e *env) addKernel(t *testing.T, name string) {
	t.Helper()
	if err := os.MkdirAll(e.layout.Kernel(name), 0o700); err != nil {
		t.Fatal(err)
	}
	k := store.Kernel{Name: name, Version: "6.1.0-" + name, Source: "test", Path: filepath.Join(e.layout.Kernel(name), paths.KernelFile), SHA256: strings.Repeat("ab", 32)}
	if err := e.st.CreateKernel(context.Background(), &k); err != nil {
		t.Fatal(err)
	}
}

func (e *env) addImage(t *testing.T, name, kernel string) {
	t.Helper()
	if err := os.MkdirAll(e.layout.Image(name), 0o700); err != nil {
		t.Fatal(err)
	}
	img := store.Image{Name: name, Source: "test", Path: filepath.Join(e.layout.Image(name), paths.RootfsFile), KernelRef: kernel, SizeBytes: 1 << 30}
	if err := e.st.CreateImage(context.Background(), &img); err != nil {
		t.Fatal(err)
	}
}

func (e *env) addVM(t *testing.T, name, image, kernel, ip, tap string) store.VM {
	t.Helper()
	v := store.VM{Name: name, Image: image, Kernel: kernel, VCPU: 2, MemoryMiB: 1024, DiskBytes: 1 << 30, WorkDiskBytes: 1 << 30,
		GuestIP: ip, MAC: "52:54:00:00:00:" + ip[len(ip)-2:], Tap: tap, State: store.StateStopped, CloneMethod: store.CloneSparseCopy}
	v.ID = "id" + name
	v.Dir = e.layout.VM(v.ID)
	if err := os.MkdirAll(v.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.Dir, paths.VMRootFile), []byte("disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.st.CreateVM(context.Background(), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestKernelAndImageList(t *testing.T) {
	e := newEnv(t)
	var ks []api.Kernel
	if err := e.call(t, api.MethodKernelList, nil, &ks); err != nil || ks == nil || len(ks) != 0 {
		t.Fatalf("empty kernel.list: %v %#v (want [] not null)", err, ks)
	}
	e.addKernel(t, "k1")
	e.addKernel(t, "k2")
	e.addImage(t, "img1", "k1")
	if err := e.call(t, api.MethodKernelList, nil, &ks); err != nil {
		t.Fatal(err)
	}
	if len(ks) != 2 || ks[0].Name != "k1" || ks[1].Name != "k2" || ks[0].Version != "6.1.0-k1" || ks[0].SHA256 == "" || ks[0].CreatedAt.IsZero() {
		t.Errorf("kernel.list = %+v", ks)
	}
	var is []api.Image
	if err := e.call(t, api.MethodImageList, nil, &is); err != nil {
		t.Fatal(err)
	}
	if len(is) != 1 || is[0].Name != "img1" || is[0].KernelRef != "k1" || is[0].SizeBytes != 1<<30 || is[0].Source != "test" {
		t.Errorf("image.list = %+v", is)
	}
}

func TestRmRefusedWhileInUse(t *testing.T) {
	e := newEnv(t)
	e.addKernel(t, "k1")
	e.addImage(t, "img1", "k1")
	pool := hostnet.PoolTapName(0)
	if err := (fakeNet{e.host}).CreateTap(context.Background(), pool, 0); err != nil {
		t.Fatal(err)
	}
	v := e.addVM(t, "user", "img1", "k1", "172.30.0.12", pool)

	err := e.call(t, api.MethodImageRm, api.NameParams{Name: "img1"}, nil)
	wantCode(t, "image.rm in use", err, api.CodeBusy)
	if err == nil || !strings.Contains(err.Error(), `vm "user"`) {
		t.Errorf("image.rm in use: %v (should name the VM)", err)
	}
	wantCode(t, "kernel.rm in use", e.call(t, api.MethodKernelRm, api.NameParams{Name: "k1"}, nil), api.CodeBusy)
	if _, err := os.Stat(e.layout.Image("img1")); err != nil {
		t.Errorf("refused image.rm touched the image dir: %v", err)
	}

	// vm.delete through the real service: row, dir, pin and TAP claim go.
	if err := (fakePins{e.host}).Pin("user.vm", nil); err != nil {
		t.Fatal(err)
	}
	if err := e.call(t, api.MethodVMDelete, api.DeleteVMParams{Name: "user"}, nil); err != nil {
		t.Fatalf("vm.delete: %v", err)
	}
	if _, err := e.st.GetVM(context.Background(), "user"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("vm row after delete: %v", err)
	}
	if _, err := os.Stat(v.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("vm dir after delete: %v", err)
	}
	e.host.mu.Lock()
	if e.host.pins["user.vm"] || e.host.taps[pool] || len(e.host.dropped) != 1 {
		t.Errorf("after delete: pins %v taps %v dropped %v", e.host.pins, e.host.taps, e.host.dropped)
	}
	e.host.mu.Unlock()
	wantCode(t, "vm.delete again", e.call(t, api.MethodVMDelete, api.DeleteVMParams{Name: "user"}, nil), api.CodeNotFound)

	// Now both may go, files included.
	if err := e.call(t, api.MethodImageRm, api.NameParams{Name: "img1"}, nil); err != nil {
		t.Fatalf("image.rm: %v", err)
	}
	if err := e.call(t, api.MethodKernelRm, api.NameParams{Name: "k1"}, nil); err != nil {
		t.Fatalf("kernel.rm: %v", err)
	}
	for _, d := range []string{e.layout.Image("img1"), e.layout.Kernel("k1")} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after rm: %v", d, err)
		}
	}
	var ks []api.Kernel
	var is []api.Image
	if err := e.call(t, api.MethodKernelList, nil, &ks); err != nil || len(ks) != 0 {
		t.Errorf("kernel.list after rm: %v %+v", err, ks)
	}
	if err := e.call(t, api.MethodImageList, nil, &is); err != nil || len(is) != 0 {
		t.Errorf("image.list after rm: %v %+v", err, is)
	}
}

func TestNotFoundAndInvalid(t *testing.T) {
	e := newEnv(t)
	wantCode(t, "kernel.rm missing", e.call(t, api.MethodKernelRm, api.NameParams{Name: "nope"}, nil), api.CodeNotFound)
	wantCode(t, "image.rm missing", e.call(t, api.MethodImageRm, api.NameParams{Name: "nope"}, nil), api.CodeNotFound)
	wantCode(t, "vm.show missing", e.call(t, api.MethodVMShow, api.NameParams{Name: "nope"}, nil), api.CodeNotFound)
	wantCode(t, "vm.exec missing", e.call(t, api.MethodVMExec, api.ExecParams{Name: "nope", Command: "true"}, nil), api.CodeNotFound)
	wantCode(t, "vm.logs missing", e.call(t, api.MethodVMLogs, api.LogsParams{Name: "nope"}, nil), api.CodeNotFound)

	// Strict decoding: an unknown field is refused before anything happens.
	bogus := map[string]any{"name": "x", "bogus": 1}
	for _, m := range []string{api.MethodVMShow, api.MethodKernelRm, api.MethodImageRm, api.MethodVMDelete,
		api.MethodVMCreate, api.MethodVMExec, api.MethodKernelImport, api.MethodImageBuild} {
		err := e.call(t, m, bogus, nil)
		wantCode(t, m+" unknown field", err, api.CodeInvalid)
	}
	// Wrong type is invalid too, and a name is required.
	wantCode(t, "vm.show wrong type", e.call(t, api.MethodVMShow, map[string]any{"name": 3}, nil), api.CodeInvalid)
	wantCode(t, "kernel.rm no name", e.call(t, api.MethodKernelRm, nil, nil), api.CodeInvalid)
	wantCode(t, "vm.exec no name", e.call(t, api.MethodVMExec, api.ExecParams{Command: "true"}, nil), api.CodeInvalid)
	wantCode(t, "vm.create bad name", e.call(t, api.MethodVMCreate, api.CreateVMParams{Name: "Bad_Name"}, nil), api.CodeInvalid)
	wantCode(t, "unknown method", e.call(t, "vm.frobnicate", nil, nil), api.CodeUnknown)

	// kernel.import wants exactly one of --debian and --deb.
	for _, p := range []api.KernelImportParams{{Debian: true, Deb: "/tmp/x.deb"}, {}} {
		err := e.call(t, api.MethodKernelImport, p, nil)
		wantCode(t, "kernel.import debian+deb", err, api.CodeInvalid)
		if err == nil || !strings.Contains(err.Error(), "exactly one of --debian or --deb") {
			t.Errorf("kernel.import %+v: %v", p, err)
		}
	}
	// A package carries its own build configuration.
	if err := e.call(t, api.MethodKernelImport, api.KernelImportParams{Deb: "/tmp/x.deb", Config: "/tmp/.config"}, nil); err == nil ||
		!strings.Contains(err.Error(), "--config goes with --vmlinux") {
		t.Errorf("kernel.import --deb --config: %v", err)
	}
	var ks []api.Kernel
	if err := e.call(t, api.MethodKernelList, nil, &ks); err != nil || len(ks) != 0 {
		t.Errorf("refused calls left kernels: %v %+v", err, ks)
	}
}

func TestVMShowListAndStatus(t *testing.T) {
	e := newEnv(t)
	var st api.DaemonStatus
	if err := e.call(t, api.MethodDaemonStatus, nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.PID != os.Getpid() || st.UID != os.Getuid() || st.StateDir != e.layout.Root || st.Socket != e.layout.Socket() ||
		st.Version != Version || st.Accel != "tcg" || st.VMs != 0 || st.Running != 0 || st.StartedAt.IsZero() || len(st.TapPool) != 0 {
		t.Errorf("status (empty) = %+v", st)
	}

	e.addKernel(t, "k1")
	e.addImage(t, "img1", "k1")
	pool0, pool1 := hostnet.PoolTapName(0), hostnet.PoolTapName(1)
	for _, tap := range []string{pool0, pool1} {
		if err := (fakeNet{e.host}).CreateTap(context.Background(), tap, 0); err != nil {
			t.Fatal(err)
		}
	}
	e.addVM(t, "a", "img1", "k1", "172.30.0.10", pool0)
	e.addVM(t, "b", "img1", "k1", "172.30.0.11", "")

	if err := e.call(t, api.MethodDaemonStatus, nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.VMs != 2 || st.Running != 0 {
		t.Errorf("status vms %d running %d, want 2 0", st.VMs, st.Running)
	}
	wantPool := []api.PoolTap{{Name: pool0, VM: "a"}, {Name: pool1}}
	if b1, b2 := mustJSON(t, st.TapPool), mustJSON(t, wantPool); b1 != b2 {
		t.Errorf("tap pool %s, want %s", b1, b2)
	}

	var vms []api.VM
	if err := e.call(t, api.MethodVMList, nil, &vms); err != nil {
		t.Fatal(err)
	}
	if len(vms) != 2 || vms[0].Name != "a" || vms[1].Name != "b" || vms[0].Tap != pool0 || vms[0].PID != 0 {
		t.Errorf("vm.list = %+v", vms)
	}
	var v api.VM
	if err := e.call(t, api.MethodVMShow, api.NameParams{Name: "b"}, &v); err != nil {
		t.Fatal(err)
	}
	if v.Name != "b" || v.ID != "idb" || v.State != store.StateStopped || v.GuestIP != "172.30.0.11" || v.Image != "img1" ||
		v.Kernel != "k1" || v.MemoryMiB != 1024 || v.CloneMethod != store.CloneSparseCopy || v.NAT {
		t.Errorf("vm.show = %+v", v)
	}
	// By id too.
	if err := e.call(t, api.MethodVMShow, api.NameParams{Name: "ida"}, &v); err != nil || v.Name != "a" {
		t.Errorf("vm.show by id: %v %+v", err, v)
	}
	// A stopped VM is refused for exec, not sent to the guest.
	wantCode(t, "vm.exec stopped", e.call(t, api.MethodVMExec, api.ExecParams{Name: "a", Command: "true"}, nil), api.CodeNotRunning)
	wantCode(t, "vm.ssh_info stopped", e.call(t, api.MethodVMSSHInfo, api.NameParams{Name: "a"}, nil), api.CodeNotRunning)
	// A stopped VM is deleted without --force; a missing one is not_found.
	if err := e.call(t, api.MethodVMDelete, api.DeleteVMParams{Name: "b"}, nil); err != nil {
		t.Errorf("vm.delete stopped: %v", err)
	}
	if err := e.call(t, api.MethodDaemonStatus, nil, &st); err != nil || st.VMs != 1 {
		t.Errorf("status after delete: %v vms %d", err, st.VMs)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// DialAgent: the fake guests have no agent; the Router falls back to SSH.
func (d fakeDriver) DialAgent(ctx context.Context, dir string) (net.Conn, error) {
	return nil, errors.New("fake driver: no agent channel")
}
