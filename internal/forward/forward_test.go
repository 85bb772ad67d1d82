package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/agent/agenttest"
	"github.com/banger-dev/banger/internal/api"
)

// fakeVMs is the VM service: VMs by name, id "id-NAME", reached through
// one agent client; it counts holds.
type fakeVMs struct {
	client  *agent.Client
	mu      sync.Mutex
	running map[string]bool
	alive   func(id string) bool // overrides running for Alive
	holds   atomic.Int32
	dial    func(ctx context.Context, port int) (Conn, error) // nil: the agent's
}

func (f *fakeVMs) Running(ctx context.Context, name string) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.running[name]
	if !ok {
		return "", "", fmt.Errorf("vm %q: %w", name, api.ErrNotFound)
	}
	if !r {
		return "", "", fmt.Errorf("vm %q is stopped: %w", name, api.ErrNotRunning)
	}
	return "id-" + name, name, nil
}

func (f *fakeVMs) Alive(id string) bool {
	if f.alive != nil {
		return f.alive(id)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running[strings.TrimPrefix(id, "id-")]
}

func (f *fakeVMs) setDial(dial func(ctx context.Context, port int) (Conn, error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dial = dial
}

func (f *fakeVMs) Dial(ctx context.Context, id string, port int) (Conn, func(), error) {
	var c Conn
	var err error
	f.mu.Lock()
	dial := f.dial
	f.mu.Unlock()
	if dial != nil {
		c, err = dial(ctx, port)
	} else {
		var ac *agent.Conn
		ac, err = f.client.Dial(ctx, port)
		if err == nil {
			c = ac
		}
	}
	if err != nil {
		return nil, nil, err
	}
	f.holds.Add(1)
	var once sync.Once
	return c, func() { once.Do(func() { f.holds.Add(-1) }) }, nil
}

func setup(t *testing.T) (*Manager, *fakeVMs) {
	vms := &fakeVMs{client: agenttest.Start(t, &agent.Server{}), running: map[string]bool{"web": true, "off": false}}
	m := New(Deps{VMs: vms})
	t.Cleanup(m.Close)
	return m, vms
}

func start(t *testing.T, m *Manager, p api.ForwardParams) *Forward {
	t.Helper()
	if p.Local == "" {
		p.Local = "127.0.0.1:0"
	}
	f, err := m.Start(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func dialLocal(t *testing.T, f *Forward) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", f.Local(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestForwardEchoes: many clients at once through one forward, every byte
// back in order (sha-checked), each connection held and released.
func TestForwardEchoes(t *testing.T) {
	m, vms := setup(t)
	f := start(t, m, api.ForwardParams{Name: "web", GuestPort: agenttest.Service(t, agenttest.Echo)})
	const conns = 50
	agenttest.Echoes(t, conns, func() (agenttest.HalfCloser, error) {
		c, err := net.DialTimeout("tcp", f.Local(), 5*time.Second)
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	})
	waitFor(t, "every connection to end", func() bool { return f.View().Open == 0 && vms.holds.Load() == 0 })
	if v := f.View(); v.Served != conns || v.Failed != 0 || v.VM != "web" || v.Detached {
		t.Fatalf("view %+v", v)
	}
}

func TestForwardHalfClose(t *testing.T) {
	m, _ := setup(t)
	f := start(t, m, api.ForwardParams{Name: "web", GuestPort: agenttest.Service(t, func(s *net.TCPConn) {
		b, _ := io.ReadAll(s)
		fmt.Fprintf(s, "got %q", b)
	})})
	c := dialLocal(t, f)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("question")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); err != nil || string(b) != `got "question"` {
		t.Fatalf("answer after the client's EOF: %q %v", b, err)
	}
}

// TestForwardDialFailure: a connection to a guest port nothing listens on
// is reset at once; the forward stays up, counts it and says why.
func TestForwardDialFailure(t *testing.T) {
	m, vms := setup(t)
	port := agenttest.ClosedPort(t)
	f := start(t, m, api.ForwardParams{Name: "web", GuestPort: port})
	// The reset can beat the dial's own completion check on loopback, so
	// it may surface from Dial rather than from the first read.
	var b []byte
	c, err := net.DialTimeout("tcp", f.Local(), 5*time.Second)
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err = io.ReadAll(c)
		c.Close()
	}
	if len(b) != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read %q %v, want a reset", b, err)
	}
	select {
	case ev := <-f.Events():
		if !strings.Contains(ev, fmt.Sprintf("guest port %d: %v", port, agent.ErrDial)) {
			t.Fatalf("event %q", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for the failed connection")
	}
	v := f.View()
	if v.Served != 1 || v.Failed != 1 || !strings.Contains(v.LastError, "refused") {
		t.Fatalf("view %+v", v)
	}
	if vms.holds.Load() != 0 {
		t.Fatal("a failed dial holds the VM")
	}
	if !listening(f.Local()) {
		t.Fatal("the forward stopped listening after a failed connection")
	}
	waitFor(t, "the second failure", func() bool { return f.View().Failed == 2 })

	// An old agent is a failure of the same kind, with its reason.
	vms.setDial(func(ctx context.Context, port int) (Conn, error) {
		return nil, fmt.Errorf("agent dial: %w for forward (protocol 1.1)", agent.ErrAgentTooOld)
	})
	if !listening(f.Local()) {
		t.Fatal("the forward stopped listening")
	}
	waitFor(t, "the failure to be recorded", func() bool { return strings.Contains(f.View().LastError, "too old for forward") })
}

// listening reports whether something accepts on addr: a connection the
// forward takes and then resets (its guest port is closed) counts.
func listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return !errors.Is(err, syscall.ECONNREFUSED)
	}
	c.Close()
	return true
}

// TestForwardStopVM: the VM's teardown ends its forwards: no listener,
// open connections closed, holds released, the reason reported.
func TestForwardStopVM(t *testing.T) {
	// No Close at the end: a StopVM that fails to stop would hang it.
	vms := &fakeVMs{client: agenttest.Start(t, &agent.Server{}), running: map[string]bool{"web": true}}
	m := New(Deps{VMs: vms})
	hold := make(chan struct{})
	defer close(hold)
	port := agenttest.Service(t, func(s *net.TCPConn) { _, _ = s.Write([]byte("hi")); <-hold })
	f := start(t, m, api.ForwardParams{Name: "web", GuestPort: port, Detach: true})
	g := start(t, m, api.ForwardParams{Name: "web", GuestPort: port})
	c := dialLocal(t, f)
	defer c.Close()
	if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	if n := len(m.List("id-web")); n != 2 {
		t.Fatalf("%d forwards listed, want 2", n)
	}
	stopped := make(chan struct{})
	go func() { defer close(stopped); m.StopVM("id-web") }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("StopVM did not return within 10 s")
	}
	for _, fw := range []*Forward{f, g} {
		select {
		case <-fw.Done():
		default:
			t.Fatal("StopVM returned before the forward ended")
		}
		if !errors.Is(fw.Err(), api.ErrNotRunning) || !strings.Contains(fw.Err().Error(), `vm "web" stopped`) {
			t.Fatalf("reason %v", fw.Err())
		}
		if listening(fw.Local()) {
			t.Fatalf("%s still accepts after the VM stopped", fw.Local())
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("an open connection survived the VM's stop")
	}
	if vms.holds.Load() != 0 {
		t.Fatal("holds left after the stop")
	}
	if n := len(m.List("id-web")); n != 0 {
		t.Fatalf("%d forwards listed after the stop", n)
	}
}

func TestForwardStop(t *testing.T) {
	m, _ := setup(t)
	port := agenttest.Service(t, agenttest.Echo)
	a := start(t, m, api.ForwardParams{Name: "web", GuestPort: port, Detach: true})
	b := start(t, m, api.ForwardParams{Name: "web", GuestPort: port, Detach: true})
	other := start(t, m, api.ForwardParams{Name: "web", GuestPort: agenttest.ClosedPort(t), Detach: true})
	// One by its local address, then the rest of the port.
	got, err := m.Stop(context.Background(), api.ForwardStopParams{Name: "web", GuestPort: port, Local: a.Local()})
	if err != nil || len(got) != 1 || got[0].Local != a.Local() || listening(a.Local()) || !listening(b.Local()) {
		t.Fatalf("stop by address: %+v %v", got, err)
	}
	if !errors.Is(a.Err(), ErrStopped) {
		t.Fatalf("reason %v", a.Err())
	}
	if got, err := m.Stop(context.Background(), api.ForwardStopParams{Name: "web", GuestPort: port}); err != nil || len(got) != 1 {
		t.Fatalf("stop by port: %+v %v", got, err)
	}
	if _, err := m.Stop(context.Background(), api.ForwardStopParams{Name: "web", GuestPort: port}); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("stop of nothing: %v", err)
	}
	if !listening(other.Local()) {
		t.Fatal("another port's forward was stopped")
	}
}

func TestForwardRefused(t *testing.T) {
	m, vms := setup(t)
	for _, tc := range []struct {
		p    api.ForwardParams
		want error
	}{
		{api.ForwardParams{Name: "off", GuestPort: 80, Local: "127.0.0.1:0"}, api.ErrNotRunning},
		{api.ForwardParams{Name: "nope", GuestPort: 80, Local: "127.0.0.1:0"}, api.ErrNotFound},
		{api.ForwardParams{Name: "web", GuestPort: 0}, api.ErrInvalid},
		{api.ForwardParams{Name: "web", GuestPort: 65536}, api.ErrInvalid},
		{api.ForwardParams{Name: "web", GuestPort: 80, Local: "0.0.0.0:0"}, api.ErrInvalid},
	} {
		if _, err := m.Start(context.Background(), tc.p); !errors.Is(err, tc.want) {
			t.Errorf("%+v: %v, want %v", tc.p, err, tc.want)
		}
	}
	// A local address in use.
	f := start(t, m, api.ForwardParams{Name: "web", GuestPort: 80})
	if _, err := m.Start(context.Background(), api.ForwardParams{Name: "web", GuestPort: 81, Local: f.Local()}); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("address in use: %v", err)
	}
	// A VM that stops between the check and the registration leaves no
	// listener behind.
	vms.alive = func(string) bool { return false }
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if _, err := m.Start(context.Background(), api.ForwardParams{Name: "web", GuestPort: 80, Local: addr}); !errors.Is(err, api.ErrNotRunning) {
		t.Fatalf("raced stop: %v", err)
	}
	if listening(addr) {
		t.Fatal("a listener outlived the refused start")
	}
}

// TestForwardClose: the daemon's shutdown ends every forward and refuses
// new ones.
func TestForwardClose(t *testing.T) {
	m, _ := setup(t)
	f := start(t, m, api.ForwardParams{Name: "web", GuestPort: 80, Detach: true})
	m.Close()
	if listening(f.Local()) || !errors.Is(f.Err(), api.ErrShuttingDown) {
		t.Fatalf("after Close: listening %v, reason %v", listening(f.Local()), f.Err())
	}
	if _, err := m.Start(context.Background(), api.ForwardParams{Name: "web", GuestPort: 80, Local: "127.0.0.1:0"}); !errors.Is(err, api.ErrShuttingDown) {
		t.Fatalf("start after Close: %v", err)
	}
}

// TestForwardMaxConns: beyond the bound clients wait; they are served as
// others end.
func TestForwardMaxConns(t *testing.T) {
	vms := &fakeVMs{client: agenttest.Start(t, &agent.Server{}), running: map[string]bool{"web": true}}
	m := New(Deps{VMs: vms, MaxConns: 2})
	t.Cleanup(m.Close)
	var accepted atomic.Int32
	port := agenttest.Service(t, func(s *net.TCPConn) { accepted.Add(1); agenttest.Echo(s) })
	f := start(t, m, api.ForwardParams{Name: "web", GuestPort: port})
	cs := []*net.TCPConn{dialLocal(t, f), dialLocal(t, f), dialLocal(t, f)}
	waitFor(t, "two connections", func() bool { return accepted.Load() == 2 })
	time.Sleep(300 * time.Millisecond)
	if n := accepted.Load(); n != 2 {
		t.Fatalf("%d connections reached the guest, bound is 2", n)
	}
	cs[0].Close()
	waitFor(t, "the waiting client to be served", func() bool { return accepted.Load() == 3 })
	for _, c := range cs[1:] {
		c.Close()
	}
}

func TestParseLocal(t *testing.T) {
	for _, tc := range []struct {
		in     string
		remote bool
		want   string // "" = refused
	}{
		{"", false, "127.0.0.1:8080"},
		{"9000", false, "127.0.0.1:9000"},
		{"0", false, "127.0.0.1:0"},
		{"localhost:9000", false, "127.0.0.1:9000"},
		{"127.0.0.2:9000", false, "127.0.0.2:9000"},
		{"[::1]:9000", false, "[::1]:9000"},
		{"0.0.0.0:9000", false, ""},
		{"0.0.0.0:9000", true, "0.0.0.0:9000"},
		{"192.168.1.5:80", false, ""},
		{"[::]:80", false, ""},
		{":9000", true, ""},
		{"example.com:80", true, ""},
		{"127.0.0.1:65536", false, ""},
		{"127.0.0.1:-1", false, ""},
		{"127.0.0.1", false, ""},
		{"[::ffff:127.0.0.1]:80", false, "127.0.0.1:80"},
	} {
		got, err := ParseLocal(tc.in, 8080, tc.remote)
		switch {
		case tc.want == "" && !errors.Is(err, api.ErrInvalid):
			t.Errorf("%q (remote %v): %v, %v; want refused", tc.in, tc.remote, got, err)
		case tc.want != "" && (err != nil || got != netip.MustParseAddrPort(tc.want)):
			t.Errorf("%q (remote %v): %v, %v; want %s", tc.in, tc.remote, got, err, tc.want)
		}
	}
	_, err := ParseLocal("0.0.0.0:80", 80, false)
	if err == nil || !strings.Contains(err.Error(), "--allow-remote") {
		t.Fatalf("non-loopback refusal does not say how: %v", err)
	}
}
