package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-dev/banger/internal/api"
)

// ExecRequest is one remote command. Set Argv (quoted for the remote shell)
// or Command (a shell string used as is, e.g. `vm ssh dev -- 'echo hi; exit 3'`);
// with neither, the login shell runs (interactive with a TTY, else reading stdin).
type ExecRequest struct {
	Argv    []string
	Command string
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	TTY     *TTY           // request a PTY; nil = none
	Resize  <-chan Winsize // window changes while running
	// Signals are forwarded ("INT", "TERM", "HUP", "KILL", "QUIT", "USR1",
	// "USR2"). When the server refuses a signal request and there is a TTY,
	// INT is also typed as ^C so the remote line discipline delivers it.
	Signals <-chan string
	Env     map[string]string // exported by the remote shell (sshd drops "env" requests without AcceptEnv)
	Dir     string            // cd here first
	// Via picks the transport: ViaAny (agent, else SSH), ViaAgent, ViaSSH.
	// Only Router reads it; Pool is SSH.
	Via string
}

// TTY asks for a pseudo-terminal.
type TTY struct {
	Term       string
	Cols, Rows int
}

// Winsize is a terminal size change.
type Winsize struct{ Cols, Rows int }

var forwardable = map[string]bool{"INT": true, "TERM": true, "HUP": true, "KILL": true, "QUIT": true, "USR1": true, "USR2": true}

// Exec runs req on the VM's kept connection and returns the remote exit code
// (128+signo when the remote command died of a signal). Transport failures
// and cancellation are errors, never exit codes.
func (p *Pool) Exec(ctx context.Context, t Target, req ExecRequest) (int, error) {
	cmd, err := buildCommand(req)
	if err != nil {
		return -1, err
	}
	sess, err := p.session(ctx, t)
	if err != nil {
		return -1, err
	}
	defer sess.Close()
	// A writer that fails (a LimitWriter past its limit, a gone client)
	// stops reading the channel; the guest would then block on a full
	// window forever. Cancelling tears the session down instead.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	if req.TTY != nil {
		term, cols, rows := req.TTY.Term, req.TTY.Cols, req.TTY.Rows
		if term == "" {
			term = "xterm-256color"
		}
		if cols <= 0 || rows <= 0 {
			cols, rows = 80, 24
		}
		modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
		if err := sess.RequestPty(term, rows, cols, modes); err != nil {
			return -1, fmt.Errorf("vm %s: request pty: %w", t.VMID, err)
		}
	}
	sess.Stdout, sess.Stderr = abortOnError(req.Stdout, cancel), abortOnError(req.Stderr, cancel)
	var in *stdinWriter
	if req.Stdin != nil || (req.TTY != nil && req.Signals != nil) {
		w, err := sess.StdinPipe()
		if err != nil {
			return -1, fmt.Errorf("vm %s: stdin: %w", t.VMID, err)
		}
		in = &stdinWriter{w: w}
	}
	if cmd == "" {
		err = sess.Shell()
	} else {
		err = sess.Start(cmd)
	}
	if err != nil {
		return -1, fmt.Errorf("vm %s: start remote command: %w", t.VMID, err)
	}

	done := make(chan struct{})
	var wg sync.WaitGroup
	if req.Stdin != nil {
		// Not waited for: a Read on an interactive stdin may block after
		// the command ended; the caller owns that reader.
		go in.copyFrom(req.Stdin)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.forward(ctx, t, sess, req, in, done)
	}()

	err = sess.Wait()
	close(done)
	wg.Wait()
	if ctx.Err() != nil {
		return -1, fmt.Errorf("vm %s: remote command: %w", t.VMID, context.Cause(ctx))
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return ee.ExitStatus(), nil
	}
	if err != nil {
		return -1, fmt.Errorf("vm %s: remote command: %w", t.VMID, err)
	}
	return 0, nil
}

// abortWriter cancels the command when its output cannot be written.
type abortWriter struct {
	w      io.Writer
	cancel context.CancelCauseFunc
}

func abortOnError(w io.Writer, cancel context.CancelCauseFunc) io.Writer {
	if w == nil {
		return nil
	}
	return abortWriter{w, cancel}
}

func (a abortWriter) Write(p []byte) (int, error) {
	n, err := a.w.Write(p)
	if err != nil {
		a.cancel(err)
	}
	return n, err
}

// session opens a channel on the kept connection. A connection that died
// since its keepalive is redialled once: no command has started yet, so the
// retry cannot run anything twice.
func (p *Pool) session(ctx context.Context, t Target) (*ssh.Session, error) {
	for attempt := 0; ; attempt++ {
		c, err := p.Client(ctx, t)
		if err != nil {
			return nil, err
		}
		sess, err := c.NewSession()
		if err == nil {
			return sess, nil
		}
		var oce *ssh.OpenChannelError
		if attempt > 0 || errors.As(err, &oce) {
			return nil, fmt.Errorf("vm %s: open ssh session: %w", t.VMID, err)
		}
		p.forget(t.VMID, c)
	}
}

// forward relays window changes, signals and cancellation until done.
func (p *Pool) forward(ctx context.Context, t Target, sess *ssh.Session, req ExecRequest, in *stdinWriter, done <-chan struct{}) {
	resize, signals := req.Resize, req.Signals
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			// Tell the remote side, then tear the channel down so Wait returns.
			_ = sess.Signal(ssh.SIGTERM)
			_ = sess.Close()
			<-done
			return
		case ws, ok := <-resize:
			if !ok {
				resize = nil
				continue
			}
			if ws.Cols > 0 && ws.Rows > 0 {
				_ = sess.WindowChange(ws.Rows, ws.Cols)
			}
		case sig, ok := <-signals:
			if !ok {
				signals = nil
				continue
			}
			sig = strings.TrimPrefix(strings.ToUpper(sig), "SIG")
			if !forwardable[sig] {
				p.log.Warn("not forwarding unknown signal", "vm", t.VMID, "signal", sig)
				continue
			}
			ok, err := sess.SendRequest("signal", true, ssh.Marshal(struct{ Signal string }{sig}))
			if err == nil && !ok && sig == "INT" && req.TTY != nil && in != nil {
				// The server ignores signal requests; ^C through the PTY
				// reaches the foreground process group instead.
				_ = in.write([]byte{0x03})
			}
		}
	}
}

// stdinWriter lets the stdin copier and the ^C injector share the channel.
type stdinWriter struct {
	mu     sync.Mutex
	w      io.WriteCloser
	closed bool
}

func (s *stdinWriter) write(b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return io.ErrClosedPipe
	}
	_, err := s.w.Write(b)
	return err
}

func (s *stdinWriter) copyFrom(r io.Reader) {
	buf := make([]byte, 32*1024)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if werr := s.write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			break
		}
	}
	s.mu.Lock()
	s.closed = true
	_ = s.w.Close() // EOF to the remote side
	s.mu.Unlock()
}

// Shutdown flushes the guest's page cache to its disks (waiting for `sync`,
// bounded by ctx) and then starts a poweroff without waiting for it: the
// connection dies with the guest, so its result is never observable.
func (p *Pool) Shutdown(ctx context.Context, t Target) error {
	code, err := p.Exec(ctx, t, ExecRequest{Argv: []string{"sync"}})
	if err != nil {
		return fmt.Errorf("vm %s: sync before poweroff: %w", t.VMID, err)
	}
	if code != 0 {
		return fmt.Errorf("vm %s: sync before poweroff exited %d", t.VMID, code)
	}
	sess, err := p.session(ctx, t)
	if err != nil {
		return fmt.Errorf("vm %s: poweroff: %w", t.VMID, err)
	}
	if err := sess.Start("systemctl --no-block poweroff || poweroff -f"); err != nil {
		sess.Close()
		return fmt.Errorf("vm %s: poweroff: %w", t.VMID, err)
	}
	go func() {
		// Reap the session if the guest answers; never hold it open long.
		res := make(chan struct{})
		go func() { _ = sess.Wait(); close(res) }()
		select {
		case <-res:
		case <-time.After(10 * time.Second):
		}
		sess.Close()
	}()
	return nil
}

// buildCommand renders req as the remote shell's command line; "" means an
// interactive shell.
func buildCommand(req ExecRequest) (string, error) {
	if len(req.Argv) > 0 && req.Command != "" {
		return "", fmt.Errorf("exec: set Argv or Command, not both: %w", api.ErrInvalid)
	}
	for _, a := range req.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return "", fmt.Errorf("exec: argument %q contains NUL: %w", a, api.ErrInvalid)
		}
	}
	if strings.IndexByte(req.Command, 0) >= 0 || strings.IndexByte(req.Dir, 0) >= 0 {
		return "", fmt.Errorf("exec: command or dir contains NUL: %w", api.ErrInvalid)
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(req.Env)) {
		v := req.Env[k]
		if !validEnvName(k) || strings.IndexByte(v, 0) >= 0 {
			return "", fmt.Errorf("exec: environment variable %q: %w", k, api.ErrInvalid)
		}
		b.WriteString("export " + k + "=" + quoteArg(v) + "\n")
	}
	if req.Dir != "" {
		b.WriteString("cd -- " + quoteArg(req.Dir) + " || exit 1\n")
	}
	body := req.Command
	if len(req.Argv) > 0 {
		body = ShellQuote(req.Argv)
	}
	if body == "" {
		if b.Len() == 0 {
			return "", nil
		}
		body = `exec "${SHELL:-/bin/sh}" -l`
	}
	return b.String() + body, nil
}

func validEnvName(k string) bool {
	if k == "" {
		return false
	}
	for i, r := range k {
		if r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (i > 0 && r >= '0' && r <= '9') {
			continue
		}
		return false
	}
	return true
}

// ShellQuote joins args into one POSIX shell command line that the remote
// shell splits back into exactly args. Arguments must not contain NUL (no
// shell can carry one; Exec rejects them).
func ShellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = quoteArg(a)
	}
	return strings.Join(q, " ")
}

// Words the shell would read as syntax in command position, so they are
// always quoted (a quoted reserved word is an ordinary word).
var reservedWords = map[string]bool{
	"case": true, "coproc": true, "do": true, "done": true, "elif": true, "else": true, "esac": true,
	"fi": true, "for": true, "function": true, "if": true, "in": true, "select": true, "then": true,
	"time": true, "until": true, "while": true,
}

func quoteArg(s string) string {
	if s != "" && !reservedWords[s] && strings.IndexFunc(s, unsafeShellRune) < 0 {
		return s
	}
	// Inside single quotes nothing is special; a quote is closed, escaped, reopened.
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// '=' is unsafe: an unquoted FOO=bar in command position is an assignment.
func unsafeShellRune(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return false
	}
	return !strings.ContainsRune("_-./:@%+,", r)
}
