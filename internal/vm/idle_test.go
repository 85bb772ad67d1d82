package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/store"
)

// agentGuest is fakeGuest plus a guest agent per VM: a real agent.Server
// over net.Pipe whose stats come from the state the test sets (CPU times
// that advance by a chosen busy share per sample, SSH peers), and an Exec
// that can be held open. It also keeps "the daemon's own" SSH peers.
type agentGuest struct {
	fakeGuest
	mu      sync.Mutex
	clients map[string]*agent.Client
	vms     map[string]*guestState
	kept    map[string][]netip.AddrPort
	gate    chan struct{} // when set, Exec waits for it to close
	reached chan struct{} // when set, closed once Exec is waiting at the gate
	now     func() time.Time
}

type guestState struct {
	down    bool
	busyPer uint64 // busy ticks added per sample, out of 1000
	cpu     agent.CPUTimes
	ssh     *agent.SSHConns
	output  time.Time // last session output; zero: none
	samples int
}

func newAgentGuest(h *host) *agentGuest {
	return &agentGuest{fakeGuest: fakeGuest{h}, clients: map[string]*agent.Client{}, vms: map[string]*guestState{},
		kept: map[string][]netip.AddrPort{}}
}

func (g *agentGuest) state(id string) *guestState {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.vms[id]
	if st == nil {
		st = &guestState{ssh: &agent.SSHConns{}}
		g.vms[id] = st
	}
	return st
}

// set changes a VM's guest state under the lock.
func (g *agentGuest) set(id string, f func(st *guestState)) {
	st := g.state(id)
	g.mu.Lock()
	defer g.mu.Unlock()
	f(st)
}

func (g *agentGuest) Agent(ctx context.Context, t guest.Target) (*agent.Client, error) {
	st := g.state(t.VMID)
	g.mu.Lock()
	defer g.mu.Unlock()
	if st.down {
		return nil, fmt.Errorf("vm %s: %w: connection refused", t.VMID, guest.ErrNoAgent)
	}
	if c := g.clients[t.VMID]; c != nil {
		return c, nil
	}
	host, gc := net.Pipe()
	srv := &agent.Server{Version: "test", Stats: func() (agent.Stats, error) {
		g.mu.Lock()
		defer g.mu.Unlock()
		st.samples++
		st.cpu.User += st.busyPer
		st.cpu.Idle += 1000 - st.busyPer
		age := int64(agent.NoSessionOutput)
		if !st.output.IsZero() {
			age = int64(g.now().Sub(st.output) / time.Second)
		}
		return agent.Stats{SessionOutputAge: &age, CPU: st.cpu, MemTotal: 1 << 30, MemAvailable: 768 << 20, Load1: 0.5, Load5: 0.25, Load15: 0.125,
			Root: agent.DiskUsage{Total: 4 << 30, Used: 1 << 30}, Home: agent.DiskUsage{Total: 8 << 30, Used: 64 << 20},
			Uptime: 90 * time.Second, SSH: st.ssh}, nil
	}}
	go func() { _ = srv.ServeConn(context.Background(), gc) }()
	c, err := agent.NewClient(ctx, host, nil)
	if err != nil {
		return nil, err
	}
	g.clients[t.VMID] = c
	return c, nil
}

func (g *agentGuest) Exec(ctx context.Context, t guest.Target, req guest.ExecRequest) (int, error) {
	g.mu.Lock()
	gate, reached := g.gate, g.reached
	g.mu.Unlock()
	if gate != nil {
		if reached != nil {
			close(reached) // the service holds the VM by now
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return -1, ctx.Err()
		}
	}
	return g.fakeGuest.Exec(ctx, t, req)
}

func (g *agentGuest) KeptSSH(id string) []netip.AddrPort {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.kept[id]
}

func (g *agentGuest) setKept(id string, a ...netip.AddrPort) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.kept[id] = a
}

func (g *agentGuest) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.clients {
		c.Close()
	}
}

// fakeClock is the idle check's clock, moved by the test.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// idleFixture is the service fixture with agentGuest and, unless the clock
// is nil, a fake clock.
func idleFixture(t *testing.T, clock *fakeClock) (*fixture, *agentGuest) {
	t.Helper()
	f := newFixture(t)
	g := newAgentGuest(f.h)
	t.Cleanup(g.close)
	f.deps.Guest = g
	g.now = time.Now
	if clock != nil {
		f.deps.Now = clock.Now
		g.now = clock.Now
	}
	f.svc = New(f.deps)
	return f, g
}

// idleState prints what the idle check left: state, stop record, and
// whether the host still runs the VMM.
func idleState(t *testing.T, f *fixture, name string) string {
	t.Helper()
	v := mustVM(t, f, name)
	view := f.svc.View(v)
	s := fmt.Sprintf("%s timeout=%ds", v.State, view.IdleTimeout)
	if view.StopReason != "" {
		s += fmt.Sprintf(" stopped=%q at=%s", view.StopReason, view.StoppedAt.Format(time.TimeOnly))
	}
	return s + " " + f.h.String()
}

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func createIdle(t *testing.T, f *fixture, name string, secs int) store.VM {
	t.Helper()
	v, err := f.svc.Create(context.Background(), api.CreateVMParams{Name: name, WorkDisk: "32M", IdleTimeout: secs}, nil)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return v
}

func TestIdleStopAndRestart(t *testing.T) {
	clock := &fakeClock{t: t0}
	f, _ := idleFixture(t, clock)
	ctx := context.Background()
	v := createIdle(t, f, "lazy", 60)
	createIdle(t, f, "never", 0)
	var got []string
	step := func(d time.Duration) {
		clock.advance(d)
		f.svc.checkIdle(ctx)
		got = append(got, fmt.Sprintf("+%s %s | never %s", clock.Now().Sub(t0), idleState(t, f, "lazy"),
			mustVM(t, f, "never").State))
	}
	step(30 * time.Second)
	step(29 * time.Second)
	step(16 * time.Second) // 75 s without use (checks are 15 s apart for a 60 s timeout)
	if _, err := f.svc.Start(ctx, "lazy", nil); err != nil {
		t.Fatal(err)
	}
	got = append(got, "start "+idleState(t, f, "lazy"))
	step(30 * time.Second)
	tap := mustVM(t, f, "never").Tap
	want := []string{
		`+30s running timeout=60s procs=2 taps=` + fmt.Sprint(sortedTaps(v.Tap, tap)) + ` | never running`,
		`+59s running timeout=60s procs=2 taps=` + fmt.Sprint(sortedTaps(v.Tap, tap)) + ` | never running`,
		`+1m15s stopped timeout=60s stopped="idle for 1m" at=12:01:15 procs=1 taps=[` + tap + `] | never running`,
		`start running timeout=60s procs=2 taps=` + fmt.Sprint(sortedTaps(mustVM(t, f, "lazy").Tap, tap)),
		`+1m45s running timeout=60s procs=2 taps=` + fmt.Sprint(sortedTaps(mustVM(t, f, "lazy").Tap, tap)) + ` | never running`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Each kind of use keeps a VM with a 60 s timeout running past 60 s; the
// same VM without it is stopped.
func TestIdleActivityKeepsVMRunning(t *testing.T) {
	daemonPeer := netip.MustParseAddrPort("172.30.9.1:41000")
	for _, tc := range []struct {
		name string
		// use runs 35 s after the start (after the first check, before
		// the second at 61 s), on the VM.
		use  func(t *testing.T, f *fixture, g *agentGuest, v store.VM)
		want string // the state at 61 s
	}{
		{"nothing", func(*testing.T, *fixture, *agentGuest, store.VM) {}, "stopped"},
		{"exec finished", func(t *testing.T, f *fixture, g *agentGuest, v store.VM) {
			if _, err := f.svc.Exec(context.Background(), v.Name, guest.ExecRequest{Command: "true"}); err != nil {
				t.Fatal(err)
			}
		}, "running"},
		{"touch", func(t *testing.T, f *fixture, g *agentGuest, v store.VM) { f.svc.Touch(v.ID) }, "running"},
		{"agent session", func(t *testing.T, f *fixture, g *agentGuest, v store.VM) {
			if _, _, err := f.svc.Agent(context.Background(), v.Name); err != nil {
				t.Fatal(err)
			}
		}, "running"},
		{"ssh connection", func(t *testing.T, f *fixture, g *agentGuest, v store.VM) {
			g.set(v.ID, func(st *guestState) {
				st.ssh = &agent.SSHConns{Count: 2, Peers: []string{daemonPeer.String(), "172.30.9.1:50000"}}
			})
			g.setKept(v.ID, daemonPeer)
		}, "running"},
		{"only the daemon's ssh connection", func(t *testing.T, f *fixture, g *agentGuest, v store.VM) {
			g.set(v.ID, func(st *guestState) { st.ssh = &agent.SSHConns{Count: 1, Peers: []string{daemonPeer.String()}} })
			g.setKept(v.ID, daemonPeer)
		}, "stopped"},
		{"busy cpu", func(t *testing.T, f *fixture, g *agentGuest, v store.VM) {
			// 2 vCPUs: 3% of all is 6% of one, over the 5% threshold.
			g.set(v.ID, func(st *guestState) { st.busyPer = 30 })
		}, "running"},
		{"quiet cpu", func(t *testing.T, f *fixture, g *agentGuest, v store.VM) {
			g.set(v.ID, func(st *guestState) { st.busyPer = 20 }) // 4% of one vCPU
		}, "stopped"},
		{"session output", func(t *testing.T, f *fixture, g *agentGuest, v store.VM) {
			// Written now (35 s), seen by the check at 61 s as 26 s old.
			g.set(v.ID, func(st *guestState) { st.output = g.now() })
		}, "running"},
		{"old session output", func(t *testing.T, f *fixture, g *agentGuest, v store.VM) {
			g.set(v.ID, func(st *guestState) { st.output = t0.Add(-time.Second) }) // before the launch
		}, "stopped"},
		{"agent down", func(t *testing.T, f *fixture, g *agentGuest, v store.VM) {
			g.set(v.ID, func(st *guestState) { st.down = true })
		}, "running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{t: t0}
			f, g := idleFixture(t, clock)
			ctx := context.Background()
			v := createIdle(t, f, "vm", 60)
			clock.advance(30 * time.Second)
			f.svc.checkIdle(ctx) // the first check: the CPU baseline
			clock.advance(5 * time.Second)
			tc.use(t, f, g, v)
			clock.advance(26 * time.Second)
			// The CPU share is over what happened between the checks:
			// the busy VM's counters move with its own samples.
			f.svc.checkIdle(ctx)
			if got := mustVM(t, f, "vm").State; got != tc.want {
				t.Fatalf("at 61 s: %s, want %s", got, tc.want)
			}
		})
	}
}

// An exec in progress holds the VM however long it runs; when it ends, the
// timeout starts over.
func TestIdleExecInProgress(t *testing.T) {
	clock := &fakeClock{t: t0}
	f, g := idleFixture(t, clock)
	ctx := context.Background()
	createIdle(t, f, "vm", 60)
	gate, reached := make(chan struct{}), make(chan struct{})
	g.mu.Lock()
	g.gate, g.reached = gate, reached
	g.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		_, err := f.svc.Exec(ctx, "vm", guest.ExecRequest{Command: "sleep 120"})
		done <- err
	}()
	<-reached           // the exec is in progress before the clock moves
	for i := range 10 { // 5 minutes of checks while it runs
		clock.advance(30 * time.Second)
		f.svc.checkIdle(ctx)
		if s := mustVM(t, f, "vm").State; s != StateRunning {
			t.Fatalf("check %d during the exec: %s", i, s)
		}
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	clock.advance(59 * time.Second)
	f.svc.checkIdle(ctx)
	if s := mustVM(t, f, "vm").State; s != StateRunning {
		t.Fatalf("59 s after the exec: %s", s)
	}
	clock.advance(16 * time.Second)
	f.svc.checkIdle(ctx)
	if s := mustVM(t, f, "vm").State; s != StateStopped {
		t.Fatalf("75 s after the exec: %s", s)
	}
}

// A daemon restart gives adopted VMs a fresh timeout: the first daemon's
// idle time does not count.
func TestIdleClockStartsAtAdoption(t *testing.T) {
	clock := &fakeClock{t: t0}
	f, _ := idleFixture(t, clock)
	ctx := context.Background()
	createIdle(t, f, "vm", 60)
	clock.advance(50 * time.Second)
	svc2 := New(f.deps)
	if err := svc2.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	clock.advance(20 * time.Second) // 70 s after the launch, 20 s after adoption
	svc2.checkIdle(ctx)
	if s := mustVM(t, f, "vm").State; s != StateRunning {
		t.Fatalf("right after a restart: %s", s)
	}
	clock.advance(41 * time.Second)
	svc2.checkIdle(ctx)
	if s := mustVM(t, f, "vm").State; s != StateStopped {
		t.Fatalf("61 s after adoption: %s", s)
	}
}

// RunIdle on the real clock, with a 1 s timeout and a short tick.
func TestRunIdleStopsWithinTimeout(t *testing.T) {
	f, _ := idleFixture(t, nil)
	f.svc.idleFloor = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	createIdle(t, f, "quick", 1)
	createIdle(t, f, "busy", 1)
	done := make(chan struct{})
	go func() { f.svc.RunIdle(ctx); close(done) }()
	busy := mustVM(t, f, "busy")
	for mustVM(t, f, "quick").State == StateRunning {
		if time.Since(start) > 10*time.Second {
			t.Fatal("not stopped within 10 s")
		}
		f.svc.Touch(busy.ID)
		time.Sleep(20 * time.Millisecond)
	}
	// The reason is recorded just after the row says stopped (the
	// teardown's last steps run in between): give it a moment.
	for s := idleState(t, f, "quick"); !strings.Contains(s, `stopped timeout=1s stopped="idle for 1s"`); s = idleState(t, f, "quick") {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("quick: %s", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := mustVM(t, f, "busy").State; s != StateRunning {
		t.Fatalf("a touched VM was stopped: %s", s)
	}
	cancel()
	<-done
}

func TestIdleTimeoutSetAndValidated(t *testing.T) {
	clock := &fakeClock{t: t0}
	f, _ := idleFixture(t, clock)
	ctx := context.Background()
	if _, err := f.svc.Create(ctx, api.CreateVMParams{Name: "neg", IdleTimeout: -1}, nil); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("negative idle timeout: %v", err)
	}
	createIdle(t, f, "vm", 0)
	set := func(secs int) error {
		_, err := f.svc.Set(ctx, api.SetVMParams{Name: "vm", IdleTimeout: &secs})
		return err
	}
	// On a running VM, alone: applied at once, the timeout counted from now.
	clock.advance(time.Hour)
	if err := set(60); err != nil {
		t.Fatal(err)
	}
	clock.advance(59 * time.Second)
	f.svc.checkIdle(ctx)
	if s := idleState(t, f, "vm"); !strings.HasPrefix(s, "running timeout=60s") {
		t.Fatalf("after set: %s", s)
	}
	if err := set(-5); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("set -5: %v", err)
	}
	// With a change that needs a stopped VM: refused as a whole.
	vcpu := 1
	secs := 0
	if _, err := f.svc.Set(ctx, api.SetVMParams{Name: "vm", IdleTimeout: &secs, VCPU: &vcpu}); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("set with vcpu on a running vm: %v", err)
	}
	if err := set(0); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Hour)
	f.svc.checkIdle(ctx)
	if s := idleState(t, f, "vm"); !strings.HasPrefix(s, "running timeout=0s") {
		t.Fatalf("timeout off: %s", s)
	}
}

// The idle check and stats never create activity for VMs that do not run:
// stopped VMs with a timeout leave no entry, and a deleted VM drops its own
// (teardown clears it). A regression guard: it passed before the change too.
func TestIdleNoActivityForStoppedVMs(t *testing.T) {
	clock := &fakeClock{t: t0}
	f, _ := idleFixture(t, clock)
	ctx := context.Background()
	v := createIdle(t, f, "vm", 60)
	if _, err := f.svc.Stop(ctx, "vm", false); err != nil {
		t.Fatal(err)
	}
	entries := func() int {
		f.svc.act.mu.Lock()
		defer f.svc.act.mu.Unlock()
		return len(f.svc.act.m)
	}
	clock.advance(time.Minute)
	f.svc.checkIdle(ctx)
	if f.svc.stillIdle(v.ID, time.Second) {
		t.Fatal("a stopped vm is still idle")
	}
	if n := entries(); n != 0 {
		t.Fatalf("%d activity entries after checking a stopped vm", n)
	}
	f.svc.Hold(v.ID)() // a use that lost a race with the delete
	if err := f.svc.Delete(ctx, "vm", false); err != nil {
		t.Fatal(err)
	}
	if n := entries(); n != 0 {
		t.Fatalf("%d activity entries after the delete", n)
	}
}
