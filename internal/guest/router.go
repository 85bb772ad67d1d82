package guest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-dev/banger/internal/agent"
)

// Transports an ExecRequest may ask for (Via).
const (
	ViaAny   = ""      // the agent when it answers, else SSH
	ViaAgent = "agent" // the agent or an error
	ViaSSH   = "ssh"   // SSH only
)

// ErrNoAgent: the VM has no agent channel, or its agent does not answer.
var ErrNoAgent = errors.New("guest agent not available")

// Router reaches a guest through its agent when the agent answers and
// through SSH otherwise (images without the agent, an agent restarting).
// `vm ssh` always gets SSH (Client).
type Router struct {
	Log    *slog.Logger
	SSH    *Pool
	Agents *Agents
	// SSHOnly never uses the agent (bangerd --guest-via ssh): a way out
	// when an agent misbehaves, and the baseline of the benchmarks.
	SSHOnly bool
}

// target is t as this router may use it: without the agent when SSHOnly.
func (r *Router) target(t Target) Target {
	if r.SSHOnly {
		t.Agent = nil
	}
	return t
}

func (r *Router) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// WaitReady returns when the agent or sshd answers. The agent is asked
// first every round: it is up before sshd and is what exec then uses.
func (r *Router) WaitReady(ctx context.Context, t Target, interval time.Duration) error {
	t = r.target(t)
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	if t.Agent == nil {
		return r.SSH.WaitReady(ctx, t, interval)
	}
	start := time.Now()
	sshDone := make(chan error, 1)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { sshDone <- r.SSH.WaitReady(sctx, t, interval) }()
	var sshErr error
	for {
		if _, err := r.Agents.client(ctx, t, true); err == nil {
			r.log().Debug("agent ready", "vm", t.VMID, "took", time.Since(start))
			return nil
		}
		select {
		case sshErr = <-sshDone:
			if sshErr != nil {
				return sshErr
			}
			// sshd first: the agent gets one more try, then exec uses SSH
			// until the agent answers a later call.
			if _, err := r.Agents.client(ctx, t, true); err != nil {
				r.log().Info("guest ready over ssh; the agent does not answer", "vm", t.VMID, "err", err)
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("vm %s: not ready after %s: %w", t.VMID, time.Since(start).Round(time.Millisecond), ctx.Err())
		case <-time.After(interval):
		}
	}
}

// Exec runs req over the agent, or over SSH when the agent is not there.
// A command that started over the agent is never re-run over SSH.
func (r *Router) Exec(ctx context.Context, t Target, req ExecRequest) (int, error) {
	t = r.target(t)
	if req.Via != ViaSSH && t.Agent != nil {
		c, err := r.Agents.client(ctx, t, req.Via == ViaAgent)
		if err == nil {
			code, err := r.agentExec(ctx, t, c, req)
			if !errors.Is(err, agent.ErrNotStarted) || req.Via == ViaAgent || ctx.Err() != nil {
				return code, err
			}
			// Nothing ran and no stdin was read (the agent died, or is
			// being restarted): SSH runs it, the next call redials.
			r.Agents.forget(t.VMID, c)
		}
		if req.Via == ViaAgent {
			return -1, err
		}
		r.log().Debug("exec over ssh", "vm", t.VMID, "agent", err)
	} else if req.Via == ViaAgent {
		return -1, fmt.Errorf("vm %s: %w", t.VMID, ErrNoAgent)
	}
	if _, err := r.Client(ctx, t); err != nil {
		return -1, err
	}
	return r.SSH.Exec(ctx, t, req)
}

// sshBootWait is how long an SSH call waits for sshd to start listening:
// readiness may have come from the agent, which starts before sshd.
const sshBootWait = 30 * time.Second

func (r *Router) agentExec(ctx context.Context, t Target, c *agent.Client, req ExecRequest) (int, error) {
	cmd, err := buildCommand(req)
	if err != nil {
		return -1, err
	}
	ar := agent.ExecRequest{Command: cmd, Stdin: req.Stdin, Stdout: req.Stdout, Stderr: req.Stderr, Signals: req.Signals}
	if req.TTY != nil {
		// Like the SSH path: no size (not a terminal) is 80x24.
		tty := agent.TTY{Term: req.TTY.Term, Cols: req.TTY.Cols, Rows: req.TTY.Rows}
		if tty.Term == "" {
			tty.Term = "xterm-256color"
		}
		if tty.Cols <= 0 || tty.Rows <= 0 {
			tty.Cols, tty.Rows = 80, 24
		}
		ar.TTY = &tty
	}
	if req.Resize != nil {
		ch := make(chan agent.Winsize)
		ar.Resize = ch
		done := make(chan struct{})
		defer close(done)
		go func() {
			for {
				select {
				case w, ok := <-req.Resize:
					if !ok {
						return
					}
					select {
					case ch <- agent.Winsize{Cols: w.Cols, Rows: w.Rows}:
					case <-done:
						return
					}
				case <-done:
					return
				}
			}
		}()
	}
	code, err := c.Exec(ctx, ar)
	if err != nil {
		return code, fmt.Errorf("vm %s: agent: %w", t.VMID, err)
	}
	return code, nil
}

// Shutdown syncs the guest's disks and starts its poweroff: over the agent
// when it answers within reachTimeout, else over SSH reached as quickly.
func (r *Router) Shutdown(ctx context.Context, t Target) error {
	t = r.target(t)
	if t.Agent != nil {
		rctx, cancel := context.WithTimeout(ctx, reachTimeout)
		c, err := r.Agents.client(rctx, t, true)
		cancel()
		if err == nil {
			if err := c.Shutdown(ctx); err != nil {
				return fmt.Errorf("vm %s: agent: %w", t.VMID, err)
			}
			return nil
		}
		r.log().Debug("shutdown over ssh", "vm", t.VMID, "agent", err)
	}
	rctx, cancel := context.WithTimeout(ctx, reachTimeout)
	_, err := r.SSH.Client(rctx, t)
	cancel()
	if err != nil {
		return err
	}
	return r.SSH.Shutdown(ctx, t)
}

// reachTimeout bounds reaching a guest for a graceful stop.
const reachTimeout = 2 * time.Second

// Client is SSH's: `vm ssh` and port forwards stay on sshd. It waits for
// sshd briefly, since readiness may have come from the agent first.
func (r *Router) Client(ctx context.Context, t Target) (*ssh.Client, error) {
	deadline := time.Now().Add(sshBootWait)
	for {
		c, err := r.SSH.Client(ctx, t)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			return c, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Agent returns the VM's agent client (stats, ports, sessions).
func (r *Router) Agent(ctx context.Context, t Target) (*agent.Client, error) {
	t = r.target(t)
	return r.Agents.client(ctx, t, true)
}

// KeptSSH lists the host ends of the SSH connections the daemon itself
// keeps to the VM (at most one), which are no person's session.
func (r *Router) KeptSSH(vmID string) []netip.AddrPort {
	if a, ok := r.SSH.LocalAddr(vmID); ok {
		return []netip.AddrPort{a}
	}
	return nil
}

// Drop forgets both connections of a VM (stop, delete).
func (r *Router) Drop(vmID string) {
	r.SSH.Drop(vmID)
	r.Agents.Drop(vmID)
}

// Close closes every connection.
func (r *Router) Close() {
	r.SSH.Close()
	r.Agents.Close()
}

// Agents keeps one agent connection per VM. A VM whose agent did not
// answer is not asked again for RetryAfter unless the caller insists
// (readiness, an explicit --via agent), so exec falls back to SSH at once.
type Agents struct {
	Log *slog.Logger
	// HandshakeTimeout bounds dial + version handshake.
	HandshakeTimeout time.Duration
	// RetryAfter is how long a failed agent is left alone.
	RetryAfter time.Duration

	mu     sync.Mutex
	closed bool
	m      map[string]*agentEntry
}

type agentEntry struct {
	mu       sync.Mutex // serialises dials: QEMU's port takes one client
	c        *agent.Client
	failedAt time.Time
	lastErr  error
	dropped  bool
}

// NewAgents returns an empty agent pool with default timeouts.
func NewAgents(log *slog.Logger) *Agents {
	return &Agents{Log: log, HandshakeTimeout: 1500 * time.Millisecond, RetryAfter: 10 * time.Second}
}

func (a *Agents) entry(id string) (*agentEntry, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, ErrPoolClosed
	}
	if a.m == nil {
		a.m = map[string]*agentEntry{}
	}
	e := a.m[id]
	if e == nil {
		e = &agentEntry{}
		a.m[id] = e
	}
	return e, nil
}

// client returns the kept connection, dialling one when there is none (or
// it died). insist ignores a recent failure.
func (a *Agents) client(ctx context.Context, t Target, insist bool) (*agent.Client, error) {
	if t.Agent == nil {
		return nil, fmt.Errorf("vm %s: %w", t.VMID, ErrNoAgent)
	}
	e, err := a.entry(t.VMID)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.c != nil {
		select {
		case <-e.c.Done():
			e.c.Close()
			e.c = nil
		default:
			return e.c, nil
		}
	}
	if !insist && !e.failedAt.IsZero() && time.Since(e.failedAt) < a.RetryAfter {
		return nil, fmt.Errorf("vm %s: %w (last try %s ago: %v)", t.VMID, ErrNoAgent,
			time.Since(e.failedAt).Round(time.Second), e.lastErr)
	}
	hctx, cancel := context.WithTimeout(ctx, a.HandshakeTimeout)
	defer cancel()
	c, err := a.dial(hctx, t)
	if err != nil {
		e.failedAt, e.lastErr = time.Now(), err
		return nil, fmt.Errorf("vm %s: %w: %w", t.VMID, ErrNoAgent, err)
	}
	if e.dropped {
		c.Close()
		return nil, fmt.Errorf("vm %s: %w: dropped", t.VMID, ErrNoAgent)
	}
	e.c, e.failedAt, e.lastErr = c, time.Time{}, nil
	return c, nil
}

func (a *Agents) dial(ctx context.Context, t Target) (*agent.Client, error) {
	conn, err := t.Agent(ctx)
	if err != nil {
		return nil, err
	}
	c, err := agent.NewClient(ctx, conn, a.Log)
	if err != nil {
		conn.Close()
		if errors.Is(err, agent.ErrVersion) && a.Log != nil {
			a.Log.Warn("guest agent speaks another protocol; using ssh", "vm", t.VMID, "err", err)
		}
		return nil, err
	}
	return c, nil
}

// forget closes c if it is still the VM's kept connection, so the next
// call dials again.
func (a *Agents) forget(vmID string, c *agent.Client) {
	a.mu.Lock()
	e := a.m[vmID]
	a.mu.Unlock()
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.c == c {
		e.c.Close()
		e.c = nil
	}
}

// Drop closes and forgets a VM's agent connection.
func (a *Agents) Drop(vmID string) {
	a.mu.Lock()
	e := a.m[vmID]
	delete(a.m, vmID)
	a.mu.Unlock()
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dropped = true
	if e.c != nil {
		e.c.Close()
		e.c = nil
	}
}

// Close drops every connection; the pool refuses further use.
func (a *Agents) Close() {
	a.mu.Lock()
	a.closed = true
	ids := make([]string, 0, len(a.m))
	for id := range a.m {
		ids = append(ids, id)
	}
	a.mu.Unlock()
	for _, id := range ids {
		a.Drop(id)
	}
}

// AgentDialer opens the raw agent channel of one VM (vmm.Driver.DialAgent).
type AgentDialer func(ctx context.Context) (net.Conn, error)
