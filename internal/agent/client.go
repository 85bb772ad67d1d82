package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"time"

	"github.com/hashicorp/yamux"
)

// Host-side limits on what the agent reports.
const (
	MaxPorts     = 4096
	maxPortsJSON = 1 << 20
	maxErrorText = 1024
	ctlTimeout   = 5 * time.Second // a kill sent after an aborted exec
)

// Client is the host end of an agent session.
type Client struct {
	sess    *yamux.Session
	log     *slog.Logger
	version string
}

// NewClient runs the handshake on conn and starts a yamux session over it.
// The client owns conn from here on: it is closed on error and by Close.
func NewClient(ctx context.Context, conn net.Conn, log *slog.Logger) (*Client, error) {
	log = orDiscard(log)
	br, version, err := clientHandshake(ctx, conn)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	guarded := &guardedConn{Conn: conn, g: newPingGuard(br, log)}
	sess, err := yamux.Client(guarded, yamuxConfig(log, 1))
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("agent session: %w", err)
	}
	c := &Client{sess: sess, log: log, version: version}
	go c.refuseStreams()
	return c, nil
}

// refuseStreams ends the session when the agent opens a stream: only the
// host may, and an accepted-but-unread stream would hold a window of memory.
func (c *Client) refuseStreams() {
	st, err := c.sess.AcceptStream()
	if err != nil {
		return
	}
	c.log.Warn("agent opened a stream; closing the session", "stream", st.StreamID())
	_ = c.sess.Close()
}

// Close ends the session and closes the connection.
func (c *Client) Close() error { return c.sess.Close() }

// Done is closed when the session dies: the guest went away, the agent
// restarted, the connection was closed.
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

// Version is the agent's protocol and build version from the handshake,
// e.g. "1.0 v0.4.1".
func (c *Client) Version() string { return c.version }

// call is one operation's stream.
type call struct {
	c    *Client
	op   string
	ctx  context.Context
	st   *yamux.Stream
	fr   *frameReader
	fw   *frameWriter
	stop func() bool
}

// open starts an operation: a stream, its request frame, and ctx bound to it
// (cancelling ctx unblocks every read and write on the stream).
func (c *Client) open(ctx context.Context, req request) (*call, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("agent %s: %w", req.Op, err)
	}
	st, err := c.openStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", req.Op, err)
	}
	cl := &call{c: c, op: req.Op, ctx: ctx, st: st, fr: newFrameReader(st), fw: &frameWriter{w: st}}
	cl.stop = context.AfterFunc(ctx, func() {
		_ = st.SetDeadline(time.Unix(1, 0))
		_ = st.Close()
	})
	if err := cl.fw.writeJSON(frameRequest, req); err != nil {
		cl.close()
		return nil, cl.wrap(err)
	}
	return cl, nil
}

// openStream opens a stream, bounded by ctx. yamux's OpenStream waits, without
// a context, for an unacknowledged open to be answered (AcceptBacklog 1); an
// agent that stops accepting streams would hold every caller for the stream
// close timeout. When ctx ends first, the agent is deemed unresponsive: the
// session is closed (Done fires, so the caller redials) and a stream that
// arrives after all is closed.
func (c *Client) openStream(ctx context.Context) (*yamux.Stream, error) {
	type opened struct {
		st  *yamux.Stream
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		st, err := c.sess.OpenStream()
		ch <- opened{st, err}
	}()
	select {
	case o := <-ch:
		return o.st, o.err
	case <-ctx.Done():
	}
	c.log.Warn("agent did not take a stream in time; closing the session", "err", ctx.Err())
	_ = c.sess.Close()
	go func() {
		if o := <-ch; o.st != nil {
			_ = o.st.Close()
		}
	}()
	return nil, ctx.Err()
}

func (cl *call) close() {
	cl.stop()
	_ = cl.st.Close()
}

// wrap names the operation and prefers ctx's error or the session's end over
// the stream error they caused.
func (cl *call) wrap(err error) error {
	if cerr := cl.ctx.Err(); cerr != nil {
		return fmt.Errorf("agent %s: %w", cl.op, cerr)
	}
	if cl.c.sess.IsClosed() && !errors.Is(err, ErrProtocol) {
		return fmt.Errorf("agent %s: session closed: %w", cl.op, err)
	}
	return fmt.Errorf("agent %s: %w", cl.op, err)
}

// result reads frames until the operation's result, copying output frames to
// out and stderr frames to errOut (nil: such a frame is a violation), and
// decodes the result into v (nil: ignored).
func (cl *call) result(out, errOut io.Writer, v any) error {
	for {
		t, p, err := cl.fr.next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: stream ended without a result", ErrProtocol)
			}
			return cl.wrap(err)
		}
		switch t {
		case frameOutput, frameStderr:
			w := out
			if t == frameStderr {
				w = errOut
			}
			if w == nil {
				return cl.wrap(fmt.Errorf("%w: unexpected output frame", ErrProtocol))
			}
			if _, err := w.Write(p); err != nil {
				return fmt.Errorf("agent %s: writing output: %w", cl.op, err)
			}
		case frameResult:
			if v == nil {
				return nil
			}
			if err := json.Unmarshal(p, v); err != nil {
				return cl.wrap(fmt.Errorf("%w: result: %v", ErrProtocol, err))
			}
			return nil
		case frameError:
			var m errorMsg
			if err := json.Unmarshal(p, &m); err != nil {
				return cl.wrap(fmt.Errorf("%w: error frame: %v", ErrProtocol, err))
			}
			if cl.ctx.Err() != nil { // the agent answering the host's abort
				return cl.wrap(errAborted)
			}
			return sessionError(cl.op, m)
		default:
			return cl.wrap(fmt.Errorf("%w: unexpected frame %q", ErrProtocol, t))
		}
	}
}

// started waits for an exec's 'S' frame; a failure before it wraps
// ErrNotStarted (an 'X' frame is the agent refusing: not retryable).
func (cl *call) started() error {
	t, p, err := cl.fr.next()
	switch {
	case err != nil:
		if errors.Is(err, io.EOF) {
			err = errors.New("stream ended")
		}
		return fmt.Errorf("%w: %w", ErrNotStarted, cl.wrap(err))
	case t == frameStarted:
		return nil
	case t == frameError:
		var m errorMsg
		if err := json.Unmarshal(p, &m); err != nil {
			return cl.wrap(fmt.Errorf("%w: error frame: %v", ErrProtocol, err))
		}
		return fmt.Errorf("agent %s: %s", cl.op, printable(m.Message, maxErrorText))
	default:
		return cl.wrap(fmt.Errorf("%w: frame %q before the exec started", ErrProtocol, t))
	}
}

// Info is the agent's identity; a successful Info means the guest is ready.
type Info struct {
	Version  string        `json:"version"`  // agent build
	Protocol string        `json:"protocol"` // "<major>.<minor>"
	Hostname string        `json:"hostname"`
	Kernel   string        `json:"kernel"` // uname release
	Uptime   time.Duration `json:"uptime_ns"`
}

// Info asks the agent who it is.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var info Info
	if err := c.simple(ctx, opInfo, &info); err != nil {
		return Info{}, err
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{{"version", info.Version, 128}, {"protocol", info.Protocol, 16}, {"hostname", info.Hostname, 255}, {"kernel", info.Kernel, 256}} {
		if err := checkText(f.name, f.v, f.max); err != nil {
			return Info{}, fmt.Errorf("agent info: %w", err)
		}
	}
	if info.Uptime < 0 {
		return Info{}, fmt.Errorf("agent info: %w: negative uptime", ErrProtocol)
	}
	return info, nil
}

// simple runs an operation without input or output frames.
func (c *Client) simple(ctx context.Context, op string, v any) error {
	cl, err := c.open(ctx, request{Op: op})
	if err != nil {
		return err
	}
	defer cl.close()
	return cl.result(nil, nil, v)
}

// checkText refuses agent text that is too long or not printable ASCII.
func checkText(field, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%w: %s of %d bytes exceeds %d", ErrProtocol, field, len(s), max)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] >= 0x7f {
			return fmt.Errorf("%w: %s holds byte 0x%02x", ErrProtocol, field, s[i])
		}
	}
	return nil
}

// TTY asks for a pseudo-terminal.
type TTY struct {
	Term string `json:"term"`
	Cols int    `json:"cols"`
	Rows int    `json:"rows"`
}

// Winsize is a terminal size change.
type Winsize struct {
	Cols int `json:"cols"`
	Rows int `json:"rows"`
}

// ExecRequest is a command to run in the guest.
type ExecRequest struct {
	Command        string    // run by the login shell with -c; "" = interactive login shell
	Stdin          io.Reader // nil = no stdin (/dev/null)
	Stdout, Stderr io.Writer // nil = discard
	TTY            *TTY      // with a TTY, stderr is merged into stdout
	Resize         <-chan Winsize
	Signals        <-chan string // INT, TERM, HUP, KILL, QUIT, USR1, USR2
}

// Signals an exec may forward.
var signalNames = map[string]bool{"INT": true, "TERM": true, "HUP": true, "KILL": true, "QUIT": true, "USR1": true, "USR2": true}

func validSize(cols, rows int) bool {
	return cols > 0 && rows > 0 && cols <= math.MaxUint16 && rows <= math.MaxUint16
}

// Exec runs a command and returns its exit code: the process's, or 128+n when
// signal n killed it. A failure of the channel is an error, never a code. When
// ctx ends or Stdout/Stderr fail, the agent kills the process group.
//
// A Stdin that blocks in Read keeps a goroutine alive after Exec returns
// until the Read returns.
func (c *Client) Exec(ctx context.Context, r ExecRequest) (int, error) {
	if r.TTY != nil && !validSize(r.TTY.Cols, r.TTY.Rows) {
		return 0, fmt.Errorf("agent exec: invalid terminal size %dx%d", r.TTY.Cols, r.TTY.Rows)
	}
	if r.TTY != nil && checkText("term", r.TTY.Term, 64) != nil {
		return 0, fmt.Errorf("agent exec: invalid TERM %q", r.TTY.Term)
	}
	cl, err := c.open(ctx, request{Op: opExec, Command: r.Command, Stdin: r.Stdin != nil, TTY: r.TTY})
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNotStarted, err)
	}
	defer cl.close()
	id := cl.st.StreamID()
	if err := cl.started(); err != nil {
		return 0, err
	}
	done := make(chan struct{})
	defer close(done)

	if r.Stdin != nil {
		go func() {
			rerr, werr := cl.fw.pumpData(frameInput, r.Stdin)
			if werr != nil {
				return // the exec is over
			}
			if rerr != nil {
				c.log.Debug("agent exec: reading stdin; sending EOF", "err", rerr)
			}
			_ = cl.fw.write(frameInEOF, nil)
		}()
	}
	if r.Resize != nil || r.Signals != nil {
		go c.forwardCtl(ctx, id, r.Resize, r.Signals, done)
	}

	stdout, stderr := r.Stdout, r.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	var res execResult
	if err := cl.result(stdout, stderr, &res); err != nil {
		// Closing the stream aborts the exec too, but a kill on a stream of
		// its own also reaches an agent stuck writing stdin nobody reads.
		// Sent in the background: a stuck agent must not delay the error.
		go func() {
			kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ctlTimeout)
			defer cancel()
			if kerr := c.ctl(kctx, request{Stream: id, Kill: true}); kerr != nil {
				c.log.Debug("agent exec: kill after abort", "err", kerr)
			}
		}()
		return 0, err
	}
	if res.ExitCode < 0 || res.ExitCode > 255 {
		return 0, cl.wrap(fmt.Errorf("%w: exit code %d", ErrProtocol, res.ExitCode))
	}
	return res.ExitCode, nil
}

// forwardCtl sends window changes and signals until done.
func (c *Client) forwardCtl(ctx context.Context, id uint32, resize <-chan Winsize, signals <-chan string, done <-chan struct{}) {
	for {
		req := request{Stream: id}
		select {
		case <-done:
			return
		case ws, ok := <-resize:
			if !ok {
				resize = nil
				continue
			}
			if !validSize(ws.Cols, ws.Rows) {
				c.log.Warn("agent exec: ignoring invalid window size", "cols", ws.Cols, "rows", ws.Rows)
				continue
			}
			req.Resize = &ws
		case sig, ok := <-signals:
			if !ok {
				signals = nil
				continue
			}
			if !signalNames[sig] {
				c.log.Warn("agent exec: refusing to forward signal", "signal", sig)
				continue
			}
			req.Signal = sig
		}
		if err := c.ctl(ctx, req); err != nil {
			c.log.Debug("agent exec: control", "err", err)
		}
	}
}

// ctl steers a running exec from a stream of its own, so a signal or a kill
// never waits behind stdin the process does not read.
func (c *Client) ctl(ctx context.Context, req request) error {
	req.Op = opCtl
	if err := ctx.Err(); err != nil {
		return err
	}
	st, err := c.openStream(ctx)
	if err != nil {
		return fmt.Errorf("agent ctl: %w", err)
	}
	cl := &call{c: c, op: opCtl, ctx: ctx, st: st, fr: newFrameReader(st), fw: &frameWriter{w: st}}
	cl.stop = context.AfterFunc(ctx, func() {
		_ = st.SetDeadline(time.Unix(1, 0))
		_ = st.Close()
	})
	defer cl.close()
	if err := cl.fw.writeJSON(frameRequest, req); err != nil {
		return cl.wrap(err)
	}
	return cl.result(nil, nil, nil)
}

// Put extracts the tar stream under dir in the guest (created 0755 when
// missing). Entries that would land outside dir fail the whole Put; entries
// before the failing one stay extracted.
func (c *Client) Put(ctx context.Context, dir string, tarStream io.Reader) error {
	cl, err := c.open(ctx, request{Op: opPut, Path: dir})
	if err != nil {
		return err
	}
	defer cl.close()
	readErr := make(chan error, 1)
	go func() {
		rerr, werr := cl.fw.pumpData(frameInput, tarStream)
		switch {
		case werr != nil: // the agent answered early, or the stream is gone
		case rerr != nil:
			readErr <- rerr
			_ = cl.st.Close() // ends the stream without EOF: the agent aborts
		default:
			_ = cl.fw.write(frameInEOF, nil)
		}
	}()
	err = cl.result(nil, nil, nil)
	select {
	case rerr := <-readErr:
		return fmt.Errorf("agent put: reading tar stream: %w", rerr)
	default:
	}
	return err
}

// Get writes a tar stream of path in the guest (a file or a directory tree,
// named relative to path's parent) to w. An error of w aborts the transfer and
// is returned wrapped.
func (c *Client) Get(ctx context.Context, path string, w io.Writer) error {
	cl, err := c.open(ctx, request{Op: opGet, Path: path})
	if err != nil {
		return err
	}
	defer cl.close()
	return cl.result(w, nil, nil)
}

// CPUTimes are the guest's cumulative CPU times in USER_HZ ticks, from the
// "cpu" line of /proc/stat.
type CPUTimes struct {
	User    uint64 `json:"user"`
	Nice    uint64 `json:"nice"`
	System  uint64 `json:"system"`
	Idle    uint64 `json:"idle"`
	IOWait  uint64 `json:"iowait"`
	IRQ     uint64 `json:"irq"`
	SoftIRQ uint64 `json:"softirq"`
	Steal   uint64 `json:"steal"`
}

func (t CPUTimes) total() uint64 {
	return t.User + t.Nice + t.System + t.Idle + t.IOWait + t.IRQ + t.SoftIRQ + t.Steal
}

// CPUPercent is the share of busy CPU time between two samples, 0 to 100
// (of all CPUs together); 0 when the samples are out of order. Steal (time
// the host ran something else while a vCPU wanted to run) is neither busy
// nor idle for the guest: it is left out of both, so a guest starved by a
// busy host does not look busy.
func CPUPercent(prev, cur CPUTimes) float64 {
	pt, ct := prev.total()-prev.Steal, cur.total()-cur.Steal
	pi, ci := prev.Idle+prev.IOWait, cur.Idle+cur.IOWait
	if ct <= pt || ci < pi || ct-pt < ci-pi {
		return 0
	}
	return 100 * float64((ct-pt)-(ci-pi)) / float64(ct-pt)
}

// DiskUsage is a statfs result.
type DiskUsage struct {
	Total uint64 `json:"total"`
	Used  uint64 `json:"used"`
}

// Stats is one sample of the guest's resource use.
type Stats struct {
	CPU          CPUTimes      `json:"cpu"`
	MemTotal     uint64        `json:"mem_total"`     // bytes
	MemAvailable uint64        `json:"mem_available"` // bytes
	Load1        float64       `json:"load1"`
	Load5        float64       `json:"load5"`
	Load15       float64       `json:"load15"`
	Root         DiskUsage     `json:"root"` // statfs("/")
	Home         DiskUsage     `json:"home"` // statfs("/root")
	Uptime       time.Duration `json:"uptime_ns"`
	// SSH counts the guest's established TCP connections to its port 22
	// (/proc/net/tcp{,6}); nil from an agent that predates it.
	SSH *SSHConns `json:"ssh,omitempty"`
	// SessionOutputAge is the whole seconds since a banger session last
	// wrote output (the newest modification of a session log), or
	// NoSessionOutput when no session has a log; nil from an agent that
	// predates it.
	SessionOutputAge *int64 `json:"session_output_age,omitempty"`
}

// NoSessionOutput is Stats.SessionOutputAge when no session has output.
const NoSessionOutput = -1

// maxSessionOutputAge bounds Stats.SessionOutputAge (over a century).
const maxSessionOutputAge = 1 << 32

// SSHConns are the established TCP connections to the guest's port 22.
type SSHConns struct {
	Count int      `json:"count"`
	Peers []string `json:"peers,omitempty"` // remote "addr:port" of the first MaxSSHPeers
}

// Bounds of Stats.SSH: what a guest reports beyond them is a protocol error.
const (
	MaxSSHPeers = 64
	maxSSHConns = 1 << 20
)

// Stats samples the guest's CPU, memory, load and disk use.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	if err := c.simple(ctx, opStats, &s); err != nil {
		return Stats{}, err
	}
	if err := s.validate(); err != nil {
		return Stats{}, fmt.Errorf("agent stats: %w", err)
	}
	return s, nil
}

func (s Stats) validate() error {
	for _, l := range []float64{s.Load1, s.Load5, s.Load15} {
		if math.IsNaN(l) || l < 0 || l > 1e6 {
			return fmt.Errorf("%w: load average %v", ErrProtocol, l)
		}
	}
	switch {
	case s.MemAvailable > s.MemTotal:
		return fmt.Errorf("%w: available memory %d over total %d", ErrProtocol, s.MemAvailable, s.MemTotal)
	case s.Root.Used > s.Root.Total || s.Home.Used > s.Home.Total:
		return fmt.Errorf("%w: disk use over its size", ErrProtocol)
	case s.Uptime < 0:
		return fmt.Errorf("%w: negative uptime", ErrProtocol)
	}
	if a := s.SessionOutputAge; a != nil && (*a < NoSessionOutput || *a > maxSessionOutputAge) {
		return fmt.Errorf("%w: session output age %d", ErrProtocol, *a)
	}
	if c := s.SSH; c != nil {
		if c.Count < 0 || c.Count > maxSSHConns || len(c.Peers) > min(c.Count, MaxSSHPeers) {
			return fmt.Errorf("%w: %d ssh connections with %d peers", ErrProtocol, c.Count, len(c.Peers))
		}
		for _, p := range c.Peers {
			if len(p) > 64 {
				return fmt.Errorf("%w: ssh peer of %d bytes", ErrProtocol, len(p))
			}
			if _, err := netip.ParseAddrPort(p); err != nil {
				return fmt.Errorf("%w: ssh peer %q", ErrProtocol, token(p, 64))
			}
		}
	}
	return nil
}

// Port is a listening TCP or bound UDP socket in the guest.
type Port struct {
	Proto   string `json:"proto"` // "tcp" or "udp"
	Addr    string `json:"addr"`  // local address, e.g. "0.0.0.0", "::1"
	Port    int    `json:"port"`
	Process string `json:"process,omitempty"` // comm of the owner; "" if unknown
	PID     int    `json:"pid,omitempty"`
}

// Ports lists the guest's listening sockets, at most MaxPorts.
func (c *Client) Ports(ctx context.Context) ([]Port, error) {
	cl, err := c.open(ctx, request{Op: opPorts})
	if err != nil {
		return nil, err
	}
	defer cl.close()
	buf := &limitBuffer{max: maxPortsJSON}
	if err := cl.result(buf, nil, nil); err != nil {
		return nil, err
	}
	var ports []Port
	if err := json.Unmarshal(buf.b, &ports); err != nil {
		return nil, fmt.Errorf("agent ports: %w: %v", ErrProtocol, err)
	}
	if len(ports) > MaxPorts {
		return nil, fmt.Errorf("agent ports: %w: %d ports exceed %d", ErrProtocol, len(ports), MaxPorts)
	}
	for _, p := range ports {
		if err := p.validate(); err != nil {
			return nil, fmt.Errorf("agent ports: %w", err)
		}
	}
	return ports, nil
}

func (p Port) validate() error {
	if p.Proto != "tcp" && p.Proto != "udp" {
		return fmt.Errorf("%w: protocol %q", ErrProtocol, token(p.Proto, 16))
	}
	if len(p.Addr) > 64 {
		return fmt.Errorf("%w: address of %d bytes", ErrProtocol, len(p.Addr))
	}
	if _, err := netip.ParseAddr(p.Addr); err != nil {
		return fmt.Errorf("%w: address %q", ErrProtocol, token(p.Addr, 64))
	}
	if p.Port < 0 || p.Port > math.MaxUint16 || p.PID < 0 || p.PID > 1<<22 {
		return fmt.Errorf("%w: port %d pid %d", ErrProtocol, p.Port, p.PID)
	}
	return checkText("process name", p.Process, 64)
}

// limitBuffer collects at most max bytes and fails beyond.
type limitBuffer struct {
	b   []byte
	max int
}

func (l *limitBuffer) Write(p []byte) (int, error) {
	if len(l.b)+len(p) > l.max {
		return 0, fmt.Errorf("%w: reply over %d bytes", ErrProtocol, l.max)
	}
	l.b = append(l.b, p...)
	return len(p), nil
}

// Shutdown has the guest sync its disks, then power off. It returns once the
// sync is done; the power-off follows.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.simple(ctx, opShutdown, nil)
}
