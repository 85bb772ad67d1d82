// Package forward owns `vm forward`: TCP listeners on the host whose
// connections are carried, one agent stream each, to a port on a running
// guest's loopback. Nothing goes over the guest network, so a forward works
// whether or not the host can route to the bridge, and reaches services the
// guest binds to 127.0.0.1 only.
//
// Every forward lives in the daemon: a foreground one (`vm forward`) for as
// long as the call that opened it, a detached one (`--detach`) until `vm
// forward --stop`, the VM's stop or delete, or the daemon's shutdown. Its
// listener is a loopback address unless the caller asked otherwise. Forwards
// are kept in memory only: a restarted daemon has none.
//
// Bounds: MaxConns connections open per forward (further clients wait in
// the listen backlog); per connection, a yamux window (1 MiB) each way in the
// daemon and the agent, and one 32 KiB copy buffer each way here.
package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// Defaults of Deps.
const (
	MaxConns    = 128
	dialTimeout = 15 * time.Second
	maxEvents   = 16 // connection errors queued for a foreground client
)

var (
	// ErrStopped: `vm forward --stop` ended the forward.
	ErrStopped = errors.New("forward stopped")
	// ErrClientGone: the foreground command went away.
	ErrClientGone = errors.New("forward command went away")
)

// Conn is a connection to a guest port (agent.Conn in production).
type Conn interface {
	io.Reader
	io.Writer
	CloseWrite() error
	Close() error
}

// VMs is what forwards need of the VM service.
type VMs interface {
	// Running resolves a name or id to a running VM's id and name; an error
	// wrapping api.ErrNotRunning when it does not run.
	Running(ctx context.Context, name string) (id, vmName string, err error)
	// Alive reports whether the VM (by id) runs now.
	Alive(id string) bool
	// Dial connects to port on the VM's loopback through its agent; done
	// ends the connection's hold on the VM (it is in use while open).
	Dial(ctx context.Context, id string, port int) (c Conn, done func(), err error)
}

// Deps are the manager's collaborators, wired in cmd/bangerd.
type Deps struct {
	Log *slog.Logger
	VMs VMs
	// MaxConns bounds the open connections of one forward (0: MaxConns).
	MaxConns int
	// DialTimeout bounds reaching the guest port for one connection (0: 15 s).
	DialTimeout time.Duration
	// Now is the clock of Since (nil: time.Now).
	Now func() time.Time
}

// Manager holds every forward of the daemon.
type Manager struct {
	d      Deps
	mu     sync.Mutex
	closed bool
	byVM   map[string][]*Forward
}

// New returns a manager without forwards.
func New(d Deps) *Manager {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.MaxConns <= 0 {
		d.MaxConns = MaxConns
	}
	if d.DialTimeout <= 0 {
		d.DialTimeout = dialTimeout
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return &Manager{d: d, byVM: map[string][]*Forward{}}
}

// ParseLocal checks a --local address and returns the one to listen on:
// "" is 127.0.0.1:guestPort, a bare "PORT" is 127.0.0.1:PORT, otherwise
// "ADDR:PORT" with an IP literal ("[::1]:PORT" for IPv6) or localhost. A
// host that is not a loopback address needs allowRemote: whoever reaches
// it reaches the guest's port.
func ParseLocal(local string, guestPort int, allowRemote bool) (netip.AddrPort, error) {
	bad := func(format string, args ...any) (netip.AddrPort, error) {
		return netip.AddrPort{}, fmt.Errorf("--local %q: %s: %w", local, fmt.Sprintf(format, args...), api.ErrInvalid)
	}
	host, portText := "127.0.0.1", strconv.Itoa(guestPort)
	switch {
	case local == "":
	case !strings.Contains(local, ":"):
		portText = local
	default:
		h, p, err := net.SplitHostPort(local)
		if err != nil {
			return bad("want ADDR:PORT")
		}
		host, portText = h, p
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return bad("port %q: want 0-65535", portText)
	}
	switch host {
	case "":
		return bad("give the address to listen on (127.0.0.1:PORT; 0.0.0.0:PORT with --allow-remote)")
	case "localhost":
		host = "127.0.0.1"
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return bad("address %q: want an IP address or localhost", host)
	}
	addr = addr.Unmap()
	if !addr.IsLoopback() && !allowRemote {
		return bad("%s is not a loopback address, so others could reach the guest's port through it; add --allow-remote to mean it", addr)
	}
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// Start opens a forward from p.Local to p.GuestPort of the running VM
// p.Name. It returns once the listener is bound.
func (m *Manager) Start(ctx context.Context, p api.ForwardParams) (*Forward, error) {
	if p.GuestPort < 1 || p.GuestPort > 65535 {
		return nil, fmt.Errorf("guest port %d: want 1-65535: %w", p.GuestPort, api.ErrInvalid)
	}
	local, err := ParseLocal(p.Local, p.GuestPort, p.AllowRemote)
	if err != nil {
		return nil, err
	}
	id, name, err := m.d.VMs.Running(ctx, p.Name)
	if err != nil {
		return nil, err
	}
	network := "tcp4"
	if local.Addr().Is6() {
		network = "tcp6"
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, network, local.String())
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			err = fmt.Errorf("%w: %w", err, api.ErrBusy)
		}
		return nil, fmt.Errorf("vm %q: forward: %w", name, err)
	}
	fctx, cancel := context.WithCancel(context.Background())
	f := &Forward{m: m, vmID: id, vmName: name, port: p.GuestPort, detached: p.Detach, since: m.d.Now(),
		ln: ln, local: ln.Addr().String(), ctx: fctx, cancel: cancel, done: make(chan struct{}),
		conns: map[io.Closer]struct{}{}, events: make(chan string, maxEvents)}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		f.shut(api.ErrShuttingDown)
		return nil, fmt.Errorf("vm %q: forward: %w", name, api.ErrShuttingDown)
	}
	m.byVM[id] = append(m.byVM[id], f)
	m.mu.Unlock()
	// A stop that ran between Running and the registration found nothing
	// to end: look again now that StopVM would find this one.
	if !m.d.VMs.Alive(id) {
		f.Stop(nil)
		return nil, fmt.Errorf("vm %q: %w", name, api.ErrNotRunning)
	}
	f.wg.Add(1)
	go f.serve()
	m.d.Log.InfoContext(ctx, "forward started", "vm", name, "guest_port", p.GuestPort, "local", f.local, "detached", p.Detach)
	return f, nil
}

// remove forgets f.
func (m *Manager) remove(f *Forward) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fs := m.byVM[f.vmID]
	for i, g := range fs {
		if g == f {
			fs = append(fs[:i], fs[i+1:]...)
			break
		}
	}
	if len(fs) == 0 {
		delete(m.byVM, f.vmID)
	} else {
		m.byVM[f.vmID] = fs
	}
}

func (m *Manager) forwards(id string) []*Forward {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*Forward(nil), m.byVM[id]...)
}

// List returns the forwards of a VM (by id), oldest first.
func (m *Manager) List(id string) []api.Forward {
	var out []api.Forward
	for _, f := range m.forwards(id) {
		out = append(out, f.View())
	}
	return out
}

// Stop ends the forwards of VM p.Name's (a name or an id) guest port
// p.GuestPort (only the one bound to p.Local when given) and returns them;
// api.ErrNotFound when there is none.
func (m *Manager) Stop(ctx context.Context, p api.ForwardStopParams) ([]api.Forward, error) {
	var local netip.AddrPort
	if p.Local != "" {
		var err error
		if local, err = ParseLocal(p.Local, p.GuestPort, true); err != nil {
			return nil, err
		}
	}
	m.mu.Lock()
	var match []*Forward
	for id, fs := range m.byVM {
		for _, f := range fs {
			if (id == p.Name || f.vmName == p.Name) && f.port == p.GuestPort && (p.Local == "" || f.local == local.String()) {
				match = append(match, f)
			}
		}
	}
	m.mu.Unlock()
	var stopped []api.Forward
	for _, f := range match {
		f.Stop(ErrStopped)
		stopped = append(stopped, f.View())
	}
	if len(stopped) == 0 {
		what := fmt.Sprintf("guest port %d", p.GuestPort)
		if p.Local != "" {
			what += " on " + local.String()
		}
		return nil, fmt.Errorf("vm %q: no forward of %s: %w", p.Name, what, api.ErrNotFound)
	}
	m.d.Log.InfoContext(ctx, "forwards stopped", "vm", p.Name, "guest_port", p.GuestPort, "count", len(stopped))
	return stopped, nil
}

// StopVM ends every forward of a VM (by id): its teardown (stop, kill,
// delete, a VMM that died) calls it, so no listener outlives the guest.
func (m *Manager) StopVM(id string) {
	for _, f := range m.forwards(id) {
		f.Stop(fmt.Errorf("vm %q stopped: %w", f.vmName, api.ErrNotRunning))
	}
}

// Close ends every forward and refuses new ones (daemon shutdown).
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	var all []*Forward
	for _, fs := range m.byVM {
		all = append(all, fs...)
	}
	m.mu.Unlock()
	for _, f := range all {
		f.Stop(api.ErrShuttingDown)
	}
}

// Forward is one listener and its connections.
type Forward struct {
	m        *Manager
	vmID     string
	vmName   string
	port     int
	local    string
	detached bool
	since    time.Time
	ln       net.Listener
	ctx      context.Context // ends when the forward stops: dials in progress give up
	cancel   context.CancelFunc
	events   chan string
	wg       sync.WaitGroup // serve and the connections
	stopOnce sync.Once
	done     chan struct{}

	mu       sync.Mutex
	stopping bool
	reason   error
	conns    map[io.Closer]struct{}
	open     int
	served   int64
	failed   int64
	lastErr  string
}

// Local is the bound address.
func (f *Forward) Local() string { return f.local }

// Done is closed once the forward has stopped: listener closed, every
// connection ended.
func (f *Forward) Done() <-chan struct{} { return f.done }

// Err is why the forward stopped (nil while it runs, or when its own
// command stopped it).
func (f *Forward) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reason
}

// Events delivers why connections failed, for a foreground client; what
// nobody reads in time is dropped.
func (f *Forward) Events() <-chan string { return f.events }

// View is the forward as the API shows it.
func (f *Forward) View() api.Forward {
	f.mu.Lock()
	defer f.mu.Unlock()
	return api.Forward{VM: f.vmName, GuestPort: f.port, Local: f.local, Detached: f.detached, Open: f.open,
		Served: f.served, Failed: f.failed, LastError: f.lastErr, Since: f.since}
}

// Stop closes the listener and every connection and returns once they have
// ended. reason is what Err reports.
func (f *Forward) Stop(reason error) {
	f.stopOnce.Do(func() {
		f.shut(reason)
		f.m.remove(f)
		f.m.d.Log.Info("forward stopped", "vm", f.vmName, "guest_port", f.port, "local", f.local, "reason", fmt.Sprint(reason))
	})
	<-f.done
}

// shut closes everything and waits; once.
func (f *Forward) shut(reason error) {
	f.mu.Lock()
	f.stopping, f.reason = true, reason
	conns := make([]io.Closer, 0, len(f.conns))
	for c := range f.conns {
		conns = append(conns, c)
	}
	f.mu.Unlock()
	f.cancel()
	_ = f.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	f.wg.Wait()
	close(f.done)
}

// track registers c for Stop to close; false when the forward is stopping
// (c is closed then).
func (f *Forward) track(c io.Closer) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopping {
		_ = c.Close()
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forward) untrack(c io.Closer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
}

func (f *Forward) serve() {
	defer f.wg.Done()
	slots := make(chan struct{}, f.m.d.MaxConns)
	var backoff time.Duration
	for {
		select {
		case slots <- struct{}{}:
		case <-f.ctx.Done():
			return
		}
		c, err := f.ln.Accept()
		if err != nil {
			<-slots
			if f.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of fds and the like: wait, as the RPC server does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			f.m.d.Log.Warn("forward accept", "vm", f.vmName, "local", f.local, "err", err, "retry_in", backoff.String())
			select {
			case <-time.After(backoff):
			case <-f.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer func() { <-slots }()
			f.handle(c.(*net.TCPConn))
		}()
	}
}

func (f *Forward) handle(local *net.TCPConn) {
	if !f.track(local) {
		return
	}
	defer f.untrack(local)
	defer local.Close()
	f.mu.Lock()
	f.served++
	f.open++
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.open--
		f.mu.Unlock()
	}()
	dctx, cancel := context.WithTimeout(f.ctx, f.m.d.DialTimeout)
	remote, done, err := f.m.d.VMs.Dial(dctx, f.vmID, f.port)
	cancel()
	if err != nil {
		f.connFailed(local, err)
		return
	}
	defer done()
	if !f.track(remote) {
		return
	}
	defer f.untrack(remote)
	splice(local, remote)
}

// connFailed records a connection the guest did not take and resets it.
func (f *Forward) connFailed(local *net.TCPConn, err error) {
	_ = local.SetLinger(0) // the client sees a reset, as from a closed port
	f.mu.Lock()
	stopping := f.stopping
	if !stopping {
		f.failed++
		f.lastErr = err.Error()
	}
	f.mu.Unlock()
	if stopping {
		return
	}
	f.m.d.Log.Debug("forward connection failed", "vm", f.vmName, "guest_port", f.port, "peer", local.RemoteAddr().String(), "err", err)
	select {
	case f.events <- fmt.Sprintf("connection from %s: %v", local.RemoteAddr(), err):
	default:
	}
}

// splice copies both ways until both directions are over. An EOF on one
// side half-closes the other; an error on either aborts both (the client
// gets a reset when the guest's side failed).
func splice(local *net.TCPConn, remote Conn) {
	var abortOnce sync.Once
	abort := func() {
		abortOnce.Do(func() {
			_ = local.SetLinger(0)
			_ = local.Close()
			_ = remote.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Go(func() { // client → guest
		if _, err := io.Copy(remote, local); err != nil {
			abort()
			return
		}
		if err := remote.CloseWrite(); err != nil {
			abort()
		}
	})
	wg.Go(func() { // guest → client
		if _, err := io.Copy(local, remote); err != nil {
			abort()
			return
		}
		if err := local.CloseWrite(); err != nil {
			abort()
		}
	})
	wg.Wait()
	_ = local.Close()
	_ = remote.Close()
}
