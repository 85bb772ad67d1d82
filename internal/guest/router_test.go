package guest

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
)

// fakeAgentVM stands for a guest with banger-agent: each dial gets a fresh
// in-process agent.Server session (the real protocol, the test host's
// shell), unless down is set. It keeps what happened to it.
type fakeAgentVM struct {
	down      atomic.Bool
	dials     atomic.Int32
	poweroffs atomic.Int32
	mu        sync.Mutex
	conns     []net.Conn // guest ends, to kill sessions
}

func (f *fakeAgentVM) dial(ctx context.Context) (net.Conn, error) {
	f.dials.Add(1)
	if f.down.Load() {
		return nil, errors.New("connection refused")
	}
	host, g := net.Pipe()
	srv := &agent.Server{Version: "test", Sync: func() {},
		Poweroff: func() error { f.poweroffs.Add(1); return nil }}
	f.mu.Lock()
	f.conns = append(f.conns, g)
	f.mu.Unlock()
	go func() { _ = srv.ServeConn(context.Background(), g) }()
	return host, nil
}

// kill ends every agent session, as a guest agent dying does.
func (f *fakeAgentVM) kill() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

func newRouter(t *testing.T) (*Router, *testServer, *fakeAgentVM, Target) {
	t.Helper()
	f := newFixture(t)
	srv := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	ag := &fakeAgentVM{}
	agents := NewAgents(nil)
	t.Cleanup(agents.Close)
	r := &Router{SSH: f.pool, Agents: agents}
	tg := target(srv)
	tg.Agent = ag.dial
	return r, srv, ag, tg
}

func routerExec(t *testing.T, r *Router, tg Target, req ExecRequest) (int, string, error) {
	t.Helper()
	var out bytes.Buffer
	req.Stdout = &out
	code, err := r.Exec(ctxT(t, 20*time.Second), tg, req)
	return code, out.String(), err
}

func TestRouterExecPrefersTheAgent(t *testing.T) {
	r, ssh, ag, tg := newRouter(t)
	// The test SSH server has no `echo $0`: only a real shell (the agent's) prints it.
	for i := range 2 {
		code, out, err := routerExec(t, r, tg, ExecRequest{Command: "echo agent-$((40+2)); exit 3"})
		if err != nil || code != 3 || out != "agent-42\n" {
			t.Fatalf("exec %d: code %d out %q err %v", i, code, out, err)
		}
	}
	if n := ag.dials.Load(); n != 1 {
		t.Errorf("agent dialled %d times for two execs, want 1 (the session is kept)", n)
	}
	if n := ssh.connCount(); n != 0 {
		t.Errorf("ssh connections = %d, want 0", n)
	}
	// Via ssh is SSH even with an agent.
	if code, _, err := routerExec(t, r, tg, ExecRequest{Argv: []string{"true"}, Via: ViaSSH}); err != nil || code != 0 {
		t.Fatalf("via ssh: %d %v", code, err)
	}
	if ssh.connCount() == 0 {
		t.Error("via ssh did not use ssh")
	}
}

func TestRouterFallsBackToSSH(t *testing.T) {
	r, ssh, ag, tg := newRouter(t)
	ag.down.Store(true)
	if code, _, err := routerExec(t, r, tg, ExecRequest{Argv: []string{"true"}}); err != nil || code != 0 {
		t.Fatalf("exec with the agent down: %d %v", code, err)
	}
	if ssh.connCount() == 0 {
		t.Fatal("fallback did not use ssh")
	}
	// A failed agent is left alone for RetryAfter: no dial per exec.
	before := ag.dials.Load()
	for range 3 {
		if _, _, err := routerExec(t, r, tg, ExecRequest{Argv: []string{"true"}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := ag.dials.Load(); n != before {
		t.Errorf("agent redialled %d times within RetryAfter", n-before)
	}
	// --via agent insists, and says why it cannot.
	_, _, err := routerExec(t, r, tg, ExecRequest{Argv: []string{"true"}, Via: ViaAgent})
	if !errors.Is(err, ErrNoAgent) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("via agent with the agent down: %v", err)
	}
	// The agent is back: --via agent reaches it; so does the default path.
	ag.down.Store(false)
	if code, out, err := routerExec(t, r, tg, ExecRequest{Command: "echo back", Via: ViaAgent}); err != nil || code != 0 || out != "back\n" {
		t.Fatalf("via agent after it came back: %d %q %v", code, out, err)
	}
	if code, out, err := routerExec(t, r, tg, ExecRequest{Command: "echo $((1+1))"}); err != nil || code != 0 || out != "2\n" {
		t.Fatalf("default path after the agent came back: %d %q %v", code, out, err)
	}
}

func TestRouterRedialsADeadAgent(t *testing.T) {
	r, _, ag, tg := newRouter(t)
	if _, _, err := routerExec(t, r, tg, ExecRequest{Command: "true"}); err != nil {
		t.Fatal(err)
	}
	ag.kill() // the guest agent died (systemd starts a new one)
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, out, err := routerExec(t, r, tg, ExecRequest{Command: "echo again", Via: ViaAgent})
		if err == nil && code == 0 && out == "again\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no agent exec after the agent restarted: %d %q %v", code, out, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := ag.dials.Load(); n < 2 {
		t.Fatalf("agent dials = %d, want a redial", n)
	}
}

func TestRouterShutdownAndReadinessUseTheAgent(t *testing.T) {
	r, ssh, ag, tg := newRouter(t)
	ssh.stop()
	tg.Addr = "127.0.0.1:1" // sshd not up: readiness must come from the agent
	if err := r.WaitReady(ctxT(t, 10*time.Second), tg, 50*time.Millisecond); err != nil {
		t.Fatalf("WaitReady with only the agent up: %v", err)
	}
	if err := r.Shutdown(ctxT(t, 10*time.Second), tg); err != nil {
		t.Fatalf("Shutdown over the agent: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for ag.poweroffs.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the agent never powered off")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// SSHOnly ignores the agent: nothing answers, so readiness fails.
	r.SSHOnly = true
	r.Agents.Drop(tg.VMID)
	if err := r.WaitReady(ctxT(t, 1*time.Second), tg, 50*time.Millisecond); err == nil {
		t.Fatal("WaitReady with SSHOnly succeeded through the agent")
	}
}

// Readiness may come from the agent before sshd listens: an SSH call then
// waits for sshd instead of failing with "connection refused".
func TestRouterSSHWaitsForALateSSHD(t *testing.T) {
	f := newFixture(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := &Router{SSH: f.pool, Agents: NewAgents(nil)}
	t.Cleanup(r.Agents.Close)
	started := make(chan *testServer, 1)
	go func() {
		time.Sleep(700 * time.Millisecond)
		started <- startServer(t, addr, f.signer.PublicKey())
	}()
	tg := Target{VMID: "late", Addr: addr, User: "root"}
	if code, _, err := routerExec(t, r, tg, ExecRequest{Argv: []string{"true"}, Via: ViaSSH}); err != nil || code != 0 {
		t.Fatalf("ssh exec against a late sshd: %d %v", code, err)
	}
	if s := <-started; s.connCount() == 0 {
		t.Fatal("no ssh connection")
	}
}
