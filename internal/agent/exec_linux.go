package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

const (
	execPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// quietAfterExit is how long output may pause after the process exited
	// before the exec is over: a background child that inherited stdout
	// would otherwise hold the exec open forever, while output still flowing
	// is never cut.
	quietAfterExit = 300 * time.Millisecond
)

var signalNumbers = map[string]syscall.Signal{
	"INT": unix.SIGINT, "TERM": unix.SIGTERM, "HUP": unix.SIGHUP, "KILL": unix.SIGKILL,
	"QUIT": unix.SIGQUIT, "USR1": unix.SIGUSR1, "USR2": unix.SIGUSR2,
}

// execProc is a running exec, reachable by ctl requests.
type execProc struct {
	pid     int
	tty     *os.File // pty master, nil without a TTY
	stdin   *os.File // pipe to the process, nil without stdin or with a TTY
	stdinMu sync.Once

	mu       sync.Mutex
	finished bool // the exec is over: its pid may be reused, signal nothing
	aborted  atomic.Bool
	exited   atomic.Bool
}

// signal sends sig to the process group, and with a TTY to the terminal's
// foreground group too (a job an interactive shell started).
func (p *execProc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return errors.New("process already finished")
	}
	if p.tty != nil {
		if fg, err := ioctlGetPgrp(p.tty); err == nil && fg > 0 && fg != p.pid {
			_ = unix.Kill(-fg, sig)
		}
	}
	if err := unix.Kill(-p.pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// abort kills the process group and unblocks a write to its stdin.
func (p *execProc) abort() {
	if p.aborted.Swap(true) {
		return
	}
	_ = p.signal(unix.SIGKILL)
	p.closeStdin()
}

func (p *execProc) closeStdin() {
	p.stdinMu.Do(func() {
		if p.stdin != nil {
			_ = p.stdin.Close()
		}
	})
}

func ioctlGetPgrp(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var pgrp int
	var ierr error
	if err := rc.Control(func(fd uintptr) { pgrp, ierr = unix.IoctlGetInt(int(fd), unix.TIOCGPGRP) }); err != nil {
		return 0, err
	}
	return pgrp, ierr
}

func setWinsize(f *os.File, cols, rows int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)})
	}); err != nil {
		return err
	}
	return ierr
}

// openPTY opens a pseudo-terminal whose master is in the runtime poller, so
// reads take deadlines and Close interrupts them (creack/pty leaves it in
// blocking mode).
func openPTY() (master, tty *os.File, err error) {
	m, t, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	defer m.Close()
	// Close-on-exec from the start: a Dup then CloseOnExec would leak the
	// master into a command another goroutine starts in between.
	fd, err := unix.FcntlInt(m.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		_ = t.Close()
		return nil, nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		_ = t.Close()
		return nil, nil, err
	}
	return os.NewFile(uintptr(fd), "ptmx"), t, nil
}

// account is who the agent runs commands as: its own user, root in a guest.
type account struct{ name, home, shell string }

// lookupAccount reads the agent's user from /etc/passwd (there is no NSS to
// ask in a static binary), falling back to root's defaults.
func lookupAccount() account {
	a := account{name: "root", home: "/root", shell: "/bin/sh"}
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return a
	}
	defer f.Close()
	uid := strconv.Itoa(os.Getuid())
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Split(sc.Text(), ":")
		if len(fl) == 7 && fl[2] == uid {
			a.name = fl[0]
			if fl[5] != "" {
				a.home = fl[5]
			}
			if fl[6] != "" {
				a.shell = fl[6]
			}
			break
		}
	}
	return a
}

// exec runs req like sshd would: the login shell with -c, a clean
// environment, its own session; output streamed as it comes.
func (s *Server) exec(ctx context.Context, sess *session, id uint32, req request, fr *frameReader, fw *frameWriter) (execResult, error) {
	acct := lookupAccount()
	args := []string{"-l"}
	if req.Command != "" {
		args = []string{"-c", req.Command}
	}
	cmd := exec.Command(acct.shell, args...)
	cmd.Env = []string{"HOME=" + acct.home, "USER=" + acct.name, "LOGNAME=" + acct.name, "SHELL=" + acct.shell, "PATH=" + execPath}
	cmd.Dir = acct.home
	if fi, err := os.Stat(acct.home); err != nil || !fi.IsDir() {
		cmd.Dir = "/"
	}

	p := &execProc{}
	var (
		outs            []*os.File // read ends, pumped to the host
		types           []byte     // their frame types
		closeAfterStart []*os.File // the child's ends
	)
	defer func() {
		for _, f := range closeAfterStart {
			_ = f.Close()
		}
	}()
	if req.TTY != nil {
		if !validSize(req.TTY.Cols, req.TTY.Rows) {
			return execResult{}, fmt.Errorf("invalid terminal size %dx%d", req.TTY.Cols, req.TTY.Rows)
		}
		term := req.TTY.Term
		if term == "" {
			term = "xterm"
		}
		cmd.Env = append(cmd.Env, "TERM="+term)
		master, tty, err := openPTY()
		if err != nil {
			return execResult{}, fmt.Errorf("pty: %w", err)
		}
		defer master.Close()
		closeAfterStart = append(closeAfterStart, tty)
		if err := setWinsize(master, req.TTY.Cols, req.TTY.Rows); err != nil {
			return execResult{}, fmt.Errorf("pty size: %w", err)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		// Pdeathsig: the unit kills only the agent (KillMode=process, for
		// sessions), so an exec's shell must die with the agent by itself.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Pdeathsig: syscall.SIGKILL}
		p.tty = master
		outs, types = []*os.File{master}, []byte{frameOutput}
	} else {
		if req.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return execResult{}, err
			}
			closeAfterStart = append(closeAfterStart, r)
			cmd.Stdin, p.stdin = r, w
			defer p.closeStdin()
		}
		var ws [2]*os.File
		for i, t := range []byte{frameOutput, frameStderr} {
			r, w, err := os.Pipe()
			if err != nil {
				return execResult{}, err
			}
			defer r.Close()
			closeAfterStart = append(closeAfterStart, w)
			outs, types, ws[i] = append(outs, r), append(types, t), w
		}
		cmd.Stdout, cmd.Stderr = ws[0], ws[1]
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return execResult{}, err
	}
	for _, f := range closeAfterStart {
		_ = f.Close()
	}
	closeAfterStart = nil
	// Before any output and before stdin is read: the host retries an
	// exec elsewhere only when this never arrived.
	if err := fw.write(frameStarted, nil); err != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		return execResult{}, errAborted
	}
	p.pid = cmd.Process.Pid
	sess.set(id, p)
	defer sess.set(id, nil)
	stopAbort := context.AfterFunc(ctx, p.abort) // the session ended
	defer stopAbort()

	go s.execInput(p, fr)

	var wg sync.WaitGroup
	for i, f := range outs {
		wg.Go(func() {
			if err := pumpOutput(f, types[i], fw, &p.exited); err != nil {
				p.abort() // the host is gone or stopped reading
			}
		})
	}
	_ = cmd.Wait() // the exit status is in ProcessState
	p.exited.Store(true)
	for _, f := range outs {
		_ = f.SetReadDeadline(time.Now().Add(quietAfterExit))
	}
	wg.Wait()
	p.mu.Lock()
	p.finished = true
	p.mu.Unlock()
	if p.aborted.Load() {
		return execResult{}, errAborted
	}
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return execResult{ExitCode: 128 + int(ws.Signal())}, nil
	}
	return execResult{ExitCode: ws.ExitStatus()}, nil
}

// execInput feeds stdin from the exec's stream. The stream ending before the
// result went out means the host abandoned the exec.
func (s *Server) execInput(p *execProc, fr *frameReader) {
	eof := false
	for {
		t, b, err := fr.next()
		if err != nil {
			p.mu.Lock()
			finished := p.finished
			p.mu.Unlock()
			if !finished {
				p.abort()
			}
			return
		}
		switch {
		case t == frameInput && !eof && p.tty != nil:
			_, _ = p.tty.Write(b)
		case t == frameInput && !eof && p.stdin != nil:
			if _, err := p.stdin.Write(b); err != nil {
				p.closeStdin() // the process closed stdin: drop the rest
			}
		case t == frameInEOF && !eof:
			eof = true
			if p.tty != nil {
				// A terminal has no EOF of its own: send the EOF character,
				// which ends a read in canonical mode.
				_, _ = p.tty.Write([]byte{4})
			} else {
				p.closeStdin()
			}
		default:
			orDiscard(s.Log).Warn("agent exec: unexpected frame", "type", t)
			p.abort()
			return
		}
	}
}

// pumpOutput copies f into frames of type t until EOF (EIO for a pty whose
// last slave closed) or, once the process exited, until output pauses for
// quietAfterExit. It returns only write errors.
func pumpOutput(f *os.File, t byte, fw *frameWriter, exited *atomic.Bool) error {
	buf := make([]byte, frameHeader+dataChunk)
	for {
		n, err := f.Read(buf[frameHeader:])
		if n > 0 {
			if werr := fw.writeBuf(t, buf[:frameHeader+n]); werr != nil {
				return werr
			}
			if exited.Load() {
				_ = f.SetReadDeadline(time.Now().Add(quietAfterExit))
			}
		}
		if err != nil {
			return nil
		}
	}
}

// ctl applies a signal, a window change or a kill to a running exec.
func ctl(sess *session, req request) error {
	p := sess.lookup(req.Stream)
	if p == nil {
		return fmt.Errorf("no running exec on stream %d", req.Stream)
	}
	switch {
	case req.Kill:
		p.abort()
	case req.Signal != "":
		sig, ok := signalNumbers[req.Signal]
		if !ok {
			return fmt.Errorf("signal %q not allowed", req.Signal)
		}
		return p.signal(sig)
	case req.Resize != nil:
		if p.tty == nil {
			return errors.New("no terminal to resize")
		}
		if !validSize(req.Resize.Cols, req.Resize.Rows) {
			return fmt.Errorf("invalid terminal size %dx%d", req.Resize.Cols, req.Resize.Rows)
		}
		return setWinsize(p.tty, req.Resize.Cols, req.Resize.Rows)
	}
	return nil
}
