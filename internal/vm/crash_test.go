package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
	"github.com/banger-dev/banger/internal/vmm/qemu"
)

// envFakeVMM turns the test binary into a stand-in VMM: a real, detached
// process whose argv carries "-pidfile <VM dir>/vmm.pid", as QEMU's does, so
// the production Find/Kill/Alive (qemu.Driver, vmm.FindProcess) see it.
const envFakeVMM = "BANGER_VM_TEST_FAKE_VMM"

func TestMain(m *testing.M) {
	if os.Getenv(envFakeVMM) == "1" {
		for i := 1; i+1 < len(os.Args); i++ {
			if os.Args[i] == "-pidfile" {
				_ = os.WriteFile(os.Args[i+1], []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
			}
		}
		time.Sleep(time.Hour) // until SIGKILL, like a VMM
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// liveDriver starts the stand-in VMM through the real runner and uses the
// QEMU driver's own process logic for everything else.
type liveDriver struct {
	*qemu.Driver
	h *host
}

func (d liveDriver) Name() string { return "live" }

func (d liveDriver) Start(ctx context.Context, s vmm.Spec) (int, error) {
	d.h.mu.Lock()
	up := d.h.taps[s.Tap]
	d.h.mu.Unlock()
	if !up {
		return 0, fmt.Errorf("tap %q missing", s.Tap)
	}
	if pid, ok := d.Find(s); ok {
		return 0, fmt.Errorf("vmm already running (pid %d): %w", pid, api.ErrBusy)
	}
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	pidFile := filepath.Join(s.Dir, paths.VMPIDFile)
	_ = os.Remove(pidFile)
	if _, err := (system.Exec{}).Start(ctx, system.ProcSpec{Path: self, Args: []string{"-pidfile", pidFile},
		Dir: s.Dir, Env: []string{envFakeVMM + "=1"}}); err != nil {
		return 0, err
	}
	// Like QEMU's start: return once the process is up and registered.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if pid, ok := d.Find(s); ok {
			return pid, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0, errors.New("stand-in vmm did not write its pid file")
}

// liveFixture is the service fixture with real VMM processes and a firewall.
func liveFixture(t *testing.T) (*fixture, *fakeFirewall) {
	t.Helper()
	f, fw := withFirewall(t)
	f.deps.Driver = liveDriver{Driver: qemu.New(system.Exec{}, slog.New(slog.NewTextHandler(io.Discard, nil))), h: f.h}
	f.svc = New(f.deps)
	t.Cleanup(func() {
		// Never leave a stand-in VMM behind, whatever the test did.
		for _, p := range procsUnder(t, f.layout.Root) {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})
	return f, fw
}

// procsUnder scans /proc for processes whose argv mentions dir.
func procsUnder(t *testing.T, dir string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || !vmm.ProcessAlive(pid) {
			continue
		}
		args, err := vmm.ProcessArgs(pid)
		if err == nil && strings.Contains(strings.Join(args, " "), dir) {
			out = append(out, pid)
		}
	}
	return out
}

// crashAfter runs op on a goroutine whose "daemon" dies right after the
// named step succeeded: the AfterStep hook ends the goroutine (deferred
// unlocks run, nothing else: no undo, no row update), and the dead daemon's
// memory is dropped so its monitor goroutine stops. It fails the test if op
// returned instead.
func crashAfter(t *testing.T, f *fixture, stepName string, op func(svc *Service) error) {
	t.Helper()
	d := f.deps
	d.AfterStep = func(s string) {
		if s == stepName {
			runtime.Goexit()
		}
	}
	dead := New(d)
	done := make(chan error, 1)
	returned := false
	go func() {
		defer close(done)
		err := op(dead)
		returned = true
		done <- err
	}()
	err := <-done
	if returned {
		t.Fatalf("operation returned (err %v) instead of dying after step %s", err, stepName)
	}
	dead.mu.Lock()
	dead.handles = map[string]*Handles{}
	dead.mu.Unlock()
}

// assertNothingHeld checks what a VM that is not running must not hold:
// a VMM process, a TAP that is up or claimed, firewall rules, handles.
func assertNothingHeld(t *testing.T, f *fixture, fw *fakeFirewall, svc *Service, name string) store.VM {
	t.Helper()
	v := mustVM(t, f, name)
	if procs := procsUnder(t, v.Dir); len(procs) != 0 {
		t.Errorf("%s: vmm still running: pids %v", name, procs)
	}
	if v.Tap != "" {
		t.Errorf("%s: row still claims tap %s", name, v.Tap)
	}
	if s := f.h.String(); s != "procs=0 taps=[]" {
		t.Errorf("%s: host holds %s (a TAP still up)", name, s)
	}
	if s := fw.String(); s != "" {
		t.Errorf("%s: firewall still has %q", name, s)
	}
	if svc.handle(v.ID) != nil {
		t.Errorf("%s: handles still in memory", name)
	}
	if _, err := os.Stat(filepath.Join(v.Dir, paths.VMHandlesFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: handles.json left (%v)", name, err)
	}
	return v
}

// assertStartsAgain starts the VM on svc, checks a live VMM holds its TAP
// and rules, then kills it and checks nothing is left.
func assertStartsAgain(t *testing.T, f *fixture, fw *fakeFirewall, svc *Service, name string) {
	t.Helper()
	ctx := context.Background()
	v, err := svc.Start(ctx, name, nil)
	if err != nil {
		t.Fatalf("%s: start after reconcile: %v", name, err)
	}
	if procs := procsUnder(t, v.Dir); len(procs) != 1 || v.Tap == "" || !strings.Contains(fw.String(), "guard "+v.Tap) {
		t.Fatalf("%s: restarted vm: procs %v tap %q rules %q", name, procs, v.Tap, fw)
	}
	if _, err := svc.Kill(ctx, name); err != nil {
		t.Fatal(err)
	}
	assertNothingHeld(t, f, fw, svc, name)
}

// A daemon killed right after each start step, with a real VMM process when
// the step launched one. The restarted daemon's reconcile leaves a VM that
// is not running with nothing held (no process, TAP released, no rules, no
// handles) and one that is running adopted; either way the VM starts again.
func TestCrashAfterEachStartStep(t *testing.T) {
	f, fw := liveFixture(t)
	ctx := context.Background()
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "crashy", WorkDisk: "32M", NoStart: true, NAT: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, stepName := range []string{"seed", "tap", "nat", stepVMMStarted, "vmm_launch", "wait_ready"} {
		crashAfter(t, f, stepName, func(svc *Service) error { _, err := svc.Start(ctx, "crashy", nil); return err })
		row := mustVM(t, f, "crashy")
		switch stepName {
		case "tap", "nat":
			if row.Tap == "" || f.h.String() == "procs=0 taps=[]" {
				t.Fatalf("after %s: the crash left nothing to recover (row tap %q, host %s)", stepName, row.Tap, f.h)
			}
		case stepVMMStarted, "vmm_launch", "wait_ready":
			if len(procsUnder(t, v.Dir)) != 1 {
				t.Fatalf("after %s: no live vmm to recover", stepName)
			}
		}
		svc2 := New(f.deps) // the restarted daemon
		if err := svc2.Reconcile(ctx); err != nil {
			t.Fatalf("after %s: reconcile: %v", stepName, err)
		}
		got := mustVM(t, f, "crashy")
		switch stepName {
		case "vmm_launch", "wait_ready":
			// The row said running and its VMM is alive: adopted, guarded.
			pids := procsUnder(t, v.Dir)
			if got.State != StateRunning || !svc2.Running(got) || len(pids) != 1 || svc2.handle(v.ID).PID != pids[0] {
				t.Fatalf("after %s: not adopted: %+v pids %v", stepName, got, pids)
			}
			if want := "guard " + got.Tap; !strings.Contains(fw.String(), want) {
				t.Fatalf("after %s: adopted vm unguarded: %q", stepName, fw)
			}
			if _, err := svc2.Kill(ctx, "crashy"); err != nil {
				t.Fatal(err)
			}
			assertNothingHeld(t, f, fw, svc2, "crashy")
		default: // stepVMMStarted included: the row never said running, so its VMM is killed
			if got.State != StateStopped {
				t.Errorf("after %s: state %s (%s)", stepName, got.State, got.LastError)
			}
			assertNothingHeld(t, f, fw, svc2, "crashy")
		}
		assertStartsAgain(t, f, fw, svc2, "crashy")
	}
}

// Rows in states the start pipeline never leaves behind on its own, each with
// a live VMM: reconcile must kill it (a `creating` or `error` row is never
// adopted; a `stopped` one is a daemon killed inside vmm_launch before the
// row said running), and a `running` row whose VMM died is torn down.
func TestReconcileLiveVMMInEveryState(t *testing.T) {
	for _, tc := range []struct{ state, want string }{
		{StateCreating, StateError},
		{StateStopped, StateStopped},
		{StateError, StateError},
		{"running-dead", StateStopped},
	} {
		t.Run(tc.state, func(t *testing.T) {
			f, fw := liveFixture(t)
			ctx := context.Background()
			v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "vm1", WorkDisk: "32M", NAT: true}, nil)
			if err != nil {
				t.Fatal(err)
			}
			pids := procsUnder(t, v.Dir)
			if len(pids) != 1 || v.Tap == "" || fw.String() == "" {
				t.Fatalf("running vm: pids %v tap %q rules %q", pids, v.Tap, fw)
			}
			switch tc.state {
			case "running-dead":
				if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				for vmm.ProcessAlive(pids[0]) {
					time.Sleep(10 * time.Millisecond)
				}
			default:
				v.State = tc.state
				if err := f.st.UpdateVM(ctx, &v); err != nil {
					t.Fatal(err)
				}
			}
			// The daemon dies (its memory and monitor with it) and restarts.
			f.svc.mu.Lock()
			f.svc.handles = map[string]*Handles{}
			f.svc.mu.Unlock()
			svc2 := New(f.deps)
			if err := svc2.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			got := assertNothingHeld(t, f, fw, svc2, "vm1")
			if got.State != tc.want {
				t.Errorf("state %s, want %s (%s)", got.State, tc.want, got.LastError)
			}
			assertStartsAgain(t, f, fw, svc2, "vm1")
		})
	}
}

// handles.json is a scratch file: reconcile finds the VMM from the pid file
// and /proc and the TAP from the row, never from it. A corrupt file, or one
// naming a live process that is not this VM's VMM, changes nothing: the
// foreign process survives and the VM whose VMM died is torn down.
func TestReconcileDoesNotTrustHandlesFile(t *testing.T) {
	f, fw := liveFixture(t)
	ctx := context.Background()
	// A decoy: a live stand-in VMM of a directory no VM has.
	decoyDir := filepath.Join(f.layout.Root, "decoy")
	if err := os.MkdirAll(decoyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	f.h.taps["decoy"] = true
	decoy, err := f.deps.Driver.Start(ctx, vmm.Spec{Dir: decoyDir, Tap: "decoy"})
	if err != nil {
		t.Fatal(err)
	}
	delete(f.h.taps, "decoy")
	for _, content := range []string{"{not json", fmt.Sprintf(`{"pid":%d,"tap":"bgr-p0"}`, decoy)} {
		v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "vm1", WorkDisk: "32M"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		pids := procsUnder(t, v.Dir)
		if len(pids) != 1 {
			t.Fatalf("pids %v", pids)
		}
		_ = syscall.Kill(pids[0], syscall.SIGKILL)
		for vmm.ProcessAlive(pids[0]) {
			time.Sleep(10 * time.Millisecond)
		}
		f.svc.mu.Lock()
		f.svc.handles = map[string]*Handles{}
		f.svc.mu.Unlock()
		if err := os.WriteFile(filepath.Join(v.Dir, paths.VMHandlesFile), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		svc2 := New(f.deps)
		if err := svc2.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		if !vmm.ProcessAlive(decoy) {
			t.Fatalf("handles.json %q: reconcile killed the process it named", content)
		}
		if got := assertNothingHeld(t, f, fw, svc2, "vm1"); got.State != StateStopped || svc2.Running(got) {
			t.Fatalf("handles.json %q: vm %+v adopted through the file", content, got)
		}
		if err := svc2.Delete(ctx, "vm1", true); err != nil {
			t.Fatal(err)
		}
	}
}

// A daemon killed during `vm create`, before the row left `creating`: the
// restarted daemon marks it error, holds nothing for it, and delete removes
// every trace.
func TestCrashDuringCreate(t *testing.T) {
	f, fw := liveFixture(t)
	ctx := context.Background()
	for _, stepName := range []string{"vm_dir", "identity", "root_disk", "work_disk"} {
		crashAfter(t, f, stepName, func(svc *Service) error {
			_, err := svc.Create(ctx, api.CreateVMParams{Name: "mid", WorkDisk: "32M", NAT: true}, nil)
			return err
		})
		svc2 := New(f.deps)
		if err := svc2.Reconcile(ctx); err != nil {
			t.Fatalf("after %s: %v", stepName, err)
		}
		v := assertNothingHeld(t, f, fw, svc2, "mid")
		if v.State != StateError || !strings.Contains(v.LastError, "being created") {
			t.Fatalf("after %s: %+v", stepName, v)
		}
		if err := svc2.Delete(ctx, "mid", false); err != nil {
			t.Fatalf("after %s: delete: %v", stepName, err)
		}
		if _, err := os.Stat(v.Dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("after %s: vm dir left", stepName)
		}
		if keys, _ := f.kh.Keys(v.GuestIP); len(keys) != 0 {
			t.Fatalf("after %s: pin left", stepName)
		}
	}
}
