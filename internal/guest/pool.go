package guest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-dev/banger/internal/api"
)

// Target names one guest: its SSH endpoint and its agent channel.
type Target struct {
	VMID  string
	Addr  string      // "ip:22"
	User  string      // "root" when empty
	Agent AgentDialer // nil: no agent channel, SSH only
}

// sshKey is what identifies t's SSH endpoint (Agent, a func, is not comparable).
func (t Target) sshKey() [3]string { return [3]string{t.VMID, t.Addr, t.User} }

func (t Target) user() string {
	if t.User == "" {
		return "root"
	}
	return t.User
}

// Pool keeps one *ssh.Client per VM and reuses it.
type Pool struct {
	log    *slog.Logger
	signer ssh.Signer
	kh     *KnownHosts

	// KeepaliveTimeout bounds the liveness probe of a kept connection; a
	// guest that does not answer within it is redialled.
	KeepaliveTimeout time.Duration
	// AttemptTimeout bounds one dial+probe inside WaitReady.
	AttemptTimeout time.Duration

	mu     sync.Mutex
	conns  map[string]*pooled
	closed bool
}

type pooled struct {
	sem     chan struct{} // one dialler per VM; a channel so waiting honours ctx
	client  *ssh.Client   // guarded by Pool.mu
	target  Target        // guarded by Pool.mu
	dropped bool          // guarded by Pool.mu
}

// ErrPoolClosed is returned after Close.
var ErrPoolClosed = errors.New("ssh pool closed")

// NewPool makes a pool that authenticates with signer and checks host keys
// against kh.
func NewPool(log *slog.Logger, signer ssh.Signer, kh *KnownHosts) *Pool {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pool{
		log:              log,
		signer:           signer,
		kh:               kh,
		KeepaliveTimeout: 5 * time.Second,
		AttemptTimeout:   15 * time.Second,
		conns:            map[string]*pooled{},
	}
}

// Client returns the kept connection for t.VMID, dialling when there is none
// or the kept one no longer answers a keepalive. The pool owns the client:
// callers must not Close it (use Drop).
func (p *Pool) Client(ctx context.Context, t Target) (*ssh.Client, error) {
	if t.VMID == "" || t.Addr == "" {
		return nil, fmt.Errorf("ssh target %+v: vm id and address required: %w", t, api.ErrInvalid)
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrPoolClosed
	}
	e := p.conns[t.VMID]
	if e == nil {
		e = &pooled{sem: make(chan struct{}, 1)}
		p.conns[t.VMID] = e
	}
	p.mu.Unlock()

	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("vm %s: ssh: %w", t.VMID, ctx.Err())
	}
	defer func() { <-e.sem }()

	p.mu.Lock()
	c, same := e.client, e.target.sshKey() == t.sshKey()
	p.mu.Unlock()
	if c != nil {
		if same {
			err := p.alive(ctx, c)
			if err == nil {
				return c, nil
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("vm %s: ssh: %w", t.VMID, ctx.Err())
			}
			p.log.Info("kept ssh connection is dead; redialling", "vm", t.VMID, "addr", t.Addr, "err", err)
		}
		p.forget(t.VMID, c)
	}

	start := time.Now()
	c, err := p.dial(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("vm %s: ssh %s@%s: %w", t.VMID, t.user(), t.Addr, err)
	}
	p.mu.Lock()
	if e.dropped || p.closed {
		p.mu.Unlock()
		c.Close()
		return nil, fmt.Errorf("vm %s: ssh connection dropped while dialling: %w", t.VMID, api.ErrNotRunning)
	}
	e.client, e.target = c, t
	p.mu.Unlock()
	p.log.Debug("ssh connected", "vm", t.VMID, "addr", t.Addr, "took", time.Since(start))
	// Forget the client as soon as the transport dies, so the next caller
	// dials without first waiting for a keepalive to fail.
	go func() {
		err := c.Wait()
		p.forget(t.VMID, c)
		p.log.Debug("ssh connection closed", "vm", t.VMID, "err", err)
	}()
	return c, nil
}

// forget closes c and clears it from the entry if it is still the kept one.
func (p *Pool) forget(vmID string, c *ssh.Client) {
	p.mu.Lock()
	if e := p.conns[vmID]; e != nil && e.client == c {
		e.client = nil
	}
	p.mu.Unlock()
	c.Close()
}

func (p *Pool) alive(ctx context.Context, c *ssh.Client) error {
	res := make(chan error, 1)
	go func() {
		// Any reply, even "unsupported", proves the transport is up.
		_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
		res <- err
	}()
	timer := time.NewTimer(p.KeepaliveTimeout)
	defer timer.Stop()
	select {
	case err := <-res:
		return err
	case <-timer.C:
		c.Close() // unblocks the request goroutine
		return errors.New("keepalive timed out")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dial connects and handshakes, bounded by ctx throughout (x/crypto's
// handshake knows nothing of contexts, so ctx ending expires the conn).
func (p *Pool) dial(ctx context.Context, t Target) (*ssh.Client, error) {
	cfg := &ssh.ClientConfig{
		User:              t.user(),
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(p.signer)},
		HostKeyCallback:   p.kh.callback(p.log),
		HostKeyAlgorithms: p.kh.HostKeyAlgorithms(t.Addr),
		ClientVersion:     "SSH-2.0-banger",
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, ctxFirst(ctx, err)
	}
	// Only ctx ending interrupts the handshake (not a copy of its deadline,
	// which could fire before ctx.Err() is set and hide the cause).
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	cc, chans, reqs, err := ssh.NewClientConn(conn, t.Addr, cfg)
	if !stop() {
		if err == nil {
			cc.Close()
		}
		conn.Close()
		if err != nil && errors.Is(err, ErrHostKeyMismatch) {
			return nil, err
		}
		return nil, ctx.Err()
	}
	if err != nil {
		conn.Close()
		if errors.Is(err, ErrHostKeyMismatch) {
			return nil, err
		}
		return nil, ctxFirst(ctx, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(cc, chans, reqs), nil
}

// WaitReady dials and runs `true` until it succeeds or ctx ends. A host-key
// mismatch is returned at once: retrying cannot fix it and must not hide it.
func (p *Pool) WaitReady(ctx context.Context, t Target, interval time.Duration) error {
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	start := time.Now()
	var last error
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, p.AttemptTimeout)
		code, err := p.Exec(actx, t, ExecRequest{Argv: []string{"true"}})
		cancel()
		if err == nil && code == 0 {
			p.log.Debug("ssh ready", "vm", t.VMID, "attempts", attempt, "took", time.Since(start))
			return nil
		}
		if errors.Is(err, ErrHostKeyMismatch) || errors.Is(err, ErrPoolClosed) {
			return err
		}
		if err == nil {
			err = fmt.Errorf("`true` exited %d", code)
		}
		// An attempt cut short by our own deadline says nothing about the
		// guest; keep the error from before it.
		if last == nil || ctx.Err() == nil {
			last = err
		}
		timer := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("vm %s: ssh not ready after %s (%d attempts): %w; last error: %w",
				t.VMID, time.Since(start).Round(time.Millisecond), attempt, ctx.Err(), last)
		case <-timer.C:
		}
	}
}

// LocalAddr is the host end of the VM's kept connection, if there is one:
// the guest sees it as a connection to its port 22 that is no person's
// session (the idle check leaves it out).
func (p *Pool) LocalAddr(vmID string) (netip.AddrPort, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.conns[vmID]
	if e == nil || e.client == nil {
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(e.client.LocalAddr().String())
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// Drop closes and forgets the VM's connection (stop, delete).
func (p *Pool) Drop(vmID string) {
	p.mu.Lock()
	e := p.conns[vmID]
	delete(p.conns, vmID)
	var c *ssh.Client
	if e != nil {
		e.dropped = true
		c, e.client = e.client, nil
	}
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// Close drops every connection; the pool refuses further use.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	ids := make([]string, 0, len(p.conns))
	for id := range p.conns {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	for _, id := range ids {
		p.Drop(id)
	}
}

// ctxFirst reports a failure caused by ctx ending as the context's error.
func ctxFirst(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}
