package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/logfile"
)

// A session is run by a supervisor: a re-exec of banger-agent
// (`banger-agent session-supervise STATE RUN NAME`) in a session of its own,
// which the agent's death does not reach (the unit has KillMode=process).
// The supervisor holds the PTY master, keeps the last SessionRing bytes of
// output in memory and all of it in <state>/<name>.log (two segments of
// SessionLogSegment), writes <state>/<name>.json, and serves attach, send,
// kill and resize on <run>/<name>.sock (frames, as on the host channel). The
// agent proxies the host's session operations to that socket, so a restarted
// agent reaches sessions its predecessor started. The state file outlives
// the supervisor and the boot: a "running" file whose supervisor does not
// answer is rewritten as ended ("vm stopped" when it was written in another
// boot, else "supervisor lost").

// File names and directories of sessions, documented once.
const (
	DefaultSessionStateDir = "/root/.banger/sessions" // on the work disk: survives stop/start
	DefaultSessionRunDir   = "/run/banger/sessions"   // tmpfs: sockets die with the boot
	sessionStateExt        = ".json"
	sessionLogExt          = ".log"
	sessionSockExt         = ".sock"
	maxSessionStateFile    = 64 << 10
	// maxSessionTail is the most a logs reply without --tail sends: the
	// whole log.
	maxSessionTail  = 2*SessionLogSegment + dataChunk
	sessionPoll     = 200 * time.Millisecond
	supervisorStart = 10 * time.Second
	// drainAfterExit bounds how long a supervisor forwards output after its
	// process exited (a background child holding the terminal).
	drainAfterExit = 2 * time.Second
	// detachLinger is how long a detach still forwards output, so the
	// echo of what was typed just before it is seen.
	detachLinger = 250 * time.Millisecond
)

// Supervisor operations on a session's socket.
const (
	supAttach = "attach"
	supSend   = "send"
	supKill   = "kill"
	supResize = "resize"
	supStatus = "status"
)

// SessionConfig places sessions; the zero value is the guest's layout.
type SessionConfig struct {
	StateDir string // default DefaultSessionStateDir
	RunDir   string // default DefaultSessionRunDir
	// Supervisor is the argv prefix that runs Supervise; default
	// /proc/self/exe session-supervise. Env is added to its environment.
	Supervisor []string
	Env        []string
	// BootID names the current boot; default /proc/sys/kernel/random/boot_id.
	BootID func() string
}

func (c SessionConfig) stateDir() string {
	if c.StateDir != "" {
		return c.StateDir
	}
	return DefaultSessionStateDir
}

func (c SessionConfig) runDir() string {
	if c.RunDir != "" {
		return c.RunDir
	}
	return DefaultSessionRunDir
}

func (c SessionConfig) bootID() string {
	if c.BootID != nil {
		return c.BootID()
	}
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

func sessionFile(dir, name, ext string) string { return filepath.Join(dir, name+ext) }

// sessionState is <state>/<name>.json.
type sessionState struct {
	Session
	SupervisorPID int    `json:"supervisor_pid,omitempty"`
	BootID        string `json:"boot_id,omitempty"`
}

func readSessionState(dir, name string) (sessionState, error) {
	var st sessionState
	f, err := os.OpenFile(sessionFile(dir, name, sessionStateExt), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("session %q: %w", name, ErrSessionNotFound)
	}
	if err != nil {
		return st, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSessionStateFile+1))
	if err != nil {
		return st, err
	}
	if len(b) > maxSessionStateFile {
		return st, fmt.Errorf("session %q: state file over %d bytes", name, maxSessionStateFile)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("session %q: state file: %w", name, err)
	}
	if st.Name != name {
		return st, fmt.Errorf("session %q: state file names %q", name, printable(st.Name, 64))
	}
	return st, nil
}

// writeSessionState replaces the state file atomically.
func writeSessionState(dir string, st sessionState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+st.Name+".tmp-")
	if err != nil {
		return err
	}
	_, werr := f.Write(append(b, '\n'))
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), sessionFile(dir, st.Name, sessionStateExt)); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	return nil
}

// ---- the supervisor ----

// ring keeps the last len(buf) bytes written.
type ring struct {
	buf  []byte
	next int
	full bool
}

func (r *ring) Write(p []byte) {
	if len(p) >= len(r.buf) {
		copy(r.buf, p[len(p)-len(r.buf):])
		r.next, r.full = 0, true
		return
	}
	n := copy(r.buf[r.next:], p)
	if n < len(p) {
		copy(r.buf, p[n:])
		r.full = true
	}
	r.next = (r.next + len(p)) % len(r.buf)
	if r.next == 0 && len(p) > 0 {
		r.full = true
	}
}

func (r *ring) Bytes() []byte {
	if !r.full {
		return slices.Clone(r.buf[:r.next])
	}
	return append(slices.Clone(r.buf[r.next:]), r.buf[:r.next]...)
}

type supervisor struct {
	name             string
	stateDir, runDir string
	st               sessionState
	master           *os.File
	cmd              *exec.Cmd
	log              *logfile.Writer
	ln               *net.UnixListener
	done             chan struct{} // closed once the process exited and its output is drained

	mu       sync.Mutex
	ring     ring
	clients  map[*attachClient]struct{}
	exitCode int
}

// attachClient is one attached connection; out is bounded and a client that
// falls behind is dropped, never the session stalled.
type attachClient struct {
	out     chan []byte
	dropped chan struct{}
	once    sync.Once
}

func (c *attachClient) drop() { c.once.Do(func() { close(c.dropped) }) }

// Supervise is `banger-agent session-supervise STATE_DIR RUN_DIR NAME`: it
// reads the SessionSpec (and the boot id) from stdin, starts the session, reports "ok PID" or
// "error MESSAGE" on ready, and returns when the session's process exited.
func Supervise(args []string, stdin io.Reader, ready io.WriteCloser) int {
	// The ready pipe (fd 3, inherited without close-on-exec) must not reach
	// the session's process and every child of it.
	if rc, ok := ready.(syscall.Conn); ok {
		if raw, err := rc.SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) { unix.CloseOnExec(int(fd)) })
		}
	}
	fail := func(err error) int {
		fmt.Fprintf(ready, "error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		_ = ready.Close()
		return 1
	}
	if len(args) != 3 {
		return fail(errors.New("usage: banger-agent session-supervise STATE_DIR RUN_DIR NAME"))
	}
	if err := ValidSessionName(args[2]); err != nil {
		return fail(err)
	}
	b, err := io.ReadAll(io.LimitReader(stdin, MaxControl+1))
	if err != nil || len(b) > MaxControl {
		return fail(fmt.Errorf("reading the session spec: %d bytes, %v", len(b), err))
	}
	var in superviseInput
	if err := json.Unmarshal(b, &in); err != nil {
		return fail(fmt.Errorf("session spec: %w", err))
	}
	sv := &supervisor{name: args[2], stateDir: args[0], runDir: args[1], done: make(chan struct{}),
		ring: ring{buf: make([]byte, SessionRing)}, clients: map[*attachClient]struct{}{}, exitCode: -1}
	if err := sv.start(in.Spec, in.BootID); err != nil {
		return fail(err)
	}
	fmt.Fprintf(ready, "ok %d\n", sv.st.PID)
	_ = ready.Close()
	sv.run()
	return 0
}

// superviseInput is what the agent writes to a supervisor's stdin.
type superviseInput struct {
	Spec   SessionSpec `json:"spec"`
	BootID string      `json:"boot_id"`
}

func (sv *supervisor) start(spec SessionSpec, boot string) error {
	for _, d := range []string{sv.stateDir, sv.runDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	logPath := sessionFile(sv.stateDir, sv.name, sessionLogExt)
	if err := logfile.Remove(logPath); err != nil {
		return err
	}
	lw, err := logfile.Open(logPath, logfile.Policy{Segment: SessionLogSegment, Keep: 1})
	if err != nil {
		return err
	}
	sv.log = lw
	sock := sessionFile(sv.runDir, sv.name, sessionSockExt)
	_ = os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return err
	}
	sv.ln = ln

	acct := lookupAccount()
	cmd := exec.Command(acct.shell, "-c", spec.Command)
	cmd.Env = []string{"HOME=" + acct.home, "USER=" + acct.name, "LOGNAME=" + acct.name, "SHELL=" + acct.shell,
		"PATH=" + execPath, "TERM=xterm-256color"}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range spec.Env {
			if !yield(k) {
				return
			}
		}
	}) {
		cmd.Env = append(cmd.Env, k+"="+spec.Env[k])
	}
	cmd.Dir = acct.home
	if spec.Dir != "" {
		cmd.Dir = spec.Dir
		if !filepath.IsAbs(spec.Dir) {
			cmd.Dir = filepath.Join(acct.home, spec.Dir)
		}
	}
	master, tty, err := openPTY()
	if err != nil {
		return fmt.Errorf("pty: %w", err)
	}
	cols, rows := spec.Cols, spec.Rows
	if !validSize(cols, rows) {
		cols, rows = 120, 40
	}
	if err := setWinsize(master, cols, rows); err != nil {
		_ = master.Close()
		_ = tty.Close()
		return fmt.Errorf("pty size: %w", err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err = cmd.Start()
	_ = tty.Close()
	if err != nil {
		_ = master.Close()
		return err
	}
	sv.master, sv.cmd = master, cmd
	sv.st = sessionState{Session: Session{Name: sv.name, Command: spec.Command, Dir: spec.Dir, State: SessionRunning,
		PID: cmd.Process.Pid, Started: time.Now().UTC()}, SupervisorPID: os.Getpid(), BootID: boot}
	if err := writeSessionState(sv.stateDir, sv.st); err != nil {
		_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		_ = cmd.Wait()
		return err
	}
	return nil
}

// run serves the socket and pumps output until the process exited.
func (sv *supervisor) run() {
	go sv.serve()
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		buf := make([]byte, 32<<10)
		for {
			n, err := sv.master.Read(buf)
			if n > 0 {
				sv.output(buf[:n])
			}
			if err != nil {
				return // EIO: the last holder of the terminal closed it
			}
		}
	}()
	_ = sv.cmd.Wait()
	_ = sv.master.SetReadDeadline(time.Now().Add(drainAfterExit))
	<-pumped
	ws := sv.cmd.ProcessState.Sys().(syscall.WaitStatus)
	code := ws.ExitStatus()
	if ws.Signaled() {
		code = 128 + int(ws.Signal())
	}
	sv.mu.Lock()
	sv.exitCode = code
	sv.st.State, sv.st.ExitCode, sv.st.Ended = SessionExited, &code, time.Now().UTC()
	st := sv.st
	sv.mu.Unlock()
	_ = writeSessionState(sv.stateDir, st)
	close(sv.done)
	_ = sv.ln.Close()
	_ = os.Remove(sessionFile(sv.runDir, sv.name, sessionSockExt))
	// Attached clients get their last output and the exit code.
	time.Sleep(100 * time.Millisecond)
	_ = sv.log.Close()
	_ = sv.master.Close()
}

func (sv *supervisor) output(p []byte) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	sv.ring.Write(p)
	_, _ = sv.log.Write(p)
	for c := range sv.clients {
		select {
		case c.out <- slices.Clone(p):
		default:
			c.drop()
		}
	}
}

func (sv *supervisor) serve() {
	for {
		conn, err := sv.ln.Accept()
		if err != nil {
			return
		}
		go sv.serveConn(conn)
	}
}

func (sv *supervisor) ended() bool {
	select {
	case <-sv.done:
		return true
	default:
		return false
	}
}

func (sv *supervisor) serveConn(conn net.Conn) {
	defer conn.Close()
	fr, fw := newFrameReader(conn), &frameWriter{w: conn}
	t, p, err := fr.next()
	if err != nil || t != frameRequest {
		return
	}
	var req request
	if err := json.Unmarshal(p, &req); err != nil || req.Session == nil {
		_ = fw.writeJSON(frameError, errorMsg{Message: "bad request"})
		return
	}
	var res any = struct{}{}
	switch req.Op {
	case supAttach:
		sv.attach(req.Session, fr, fw)
		return
	case supSend:
		err = sv.send(req.Session, fr)
	case supKill:
		err = sv.kill(req.Session.Signal)
	case supResize:
		if r := req.Session.Resize; r == nil || !validSize(r.Cols, r.Rows) {
			err = fmt.Errorf("%w: invalid terminal size", ErrSessionInvalid)
		} else {
			err = setWinsize(sv.master, r.Cols, r.Rows)
		}
	case supStatus:
		sv.mu.Lock()
		res = sv.st.Session
		sv.mu.Unlock()
	default:
		err = fmt.Errorf("unknown supervisor operation %q", req.Op)
	}
	if err == nil && sv.ended() && req.Op != supStatus {
		err = fmt.Errorf("session %q: %w", sv.name, ErrSessionEnded)
	}
	if err != nil {
		_ = fw.writeJSON(frameError, errorMsg{Message: err.Error(), Code: errCode(err)})
		return
	}
	_ = fw.writeJSON(frameResult, res)
}

func (sv *supervisor) kill(name string) error {
	if name == "" {
		name = "TERM"
	}
	sig, ok := signalNumbers[name]
	if !ok {
		return fmt.Errorf("%w: signal %q not allowed", ErrSessionInvalid, printable(name, 16))
	}
	if sv.ended() {
		return fmt.Errorf("session %q: %w", sv.name, ErrSessionEnded)
	}
	pid := sv.st.PID
	if fg, err := ioctlGetPgrp(sv.master); err == nil && fg > 0 && fg != pid {
		_ = unix.Kill(-fg, sig)
	}
	if err := unix.Kill(-pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// send writes input frames to the terminal until the end of input.
func (sv *supervisor) send(req *sessionReq, fr *frameReader) error {
	for {
		t, b, err := fr.next()
		if err != nil {
			return errAborted
		}
		switch t {
		case frameInput:
			if sv.ended() {
				return fmt.Errorf("session %q: %w", sv.name, ErrSessionEnded)
			}
			if _, err := sv.master.Write(b); err != nil {
				return err
			}
		case frameInEOF:
			if req.EOF {
				_, err := sv.master.Write([]byte{4})
				return err
			}
			return nil
		default:
			return fmt.Errorf("%w: frame %q in input", ErrProtocol, t)
		}
	}
}

// attach sends the ring, then live output; input frames go to the
// terminal. An end-of-input frame detaches; so does the connection closing.
func (sv *supervisor) attach(req *sessionReq, fr *frameReader, fw *frameWriter) {
	c := &attachClient{out: make(chan []byte, 64), dropped: make(chan struct{})}
	sv.mu.Lock()
	recent := sv.ring.Bytes()
	ended := sv.ended()
	if !ended {
		sv.clients[c] = struct{}{}
	}
	code := sv.exitCode
	sv.mu.Unlock()
	defer func() {
		sv.mu.Lock()
		delete(sv.clients, c)
		sv.mu.Unlock()
	}()
	if req.Resize != nil && validSize(req.Resize.Cols, req.Resize.Rows) && !ended {
		_ = setWinsize(sv.master, req.Resize.Cols, req.Resize.Rows)
	}
	for len(recent) > 0 {
		n := min(len(recent), dataChunk)
		if err := fw.write(frameOutput, recent[:n]); err != nil {
			return
		}
		recent = recent[n:]
	}
	if ended {
		_ = fw.writeJSON(frameResult, AttachResult{Ended: true, ExitCode: code})
		return
	}
	detach := make(chan bool, 1) // true: asked for; false: the connection ended
	go func() {
		for {
			t, b, err := fr.next()
			if err != nil {
				detach <- false
				return
			}
			switch t {
			case frameInput:
				_, _ = sv.master.Write(b)
			case frameInEOF:
				detach <- true
				return
			default:
				detach <- false
				return
			}
		}
	}()
	for {
		select {
		case b := <-c.out:
			if err := fw.write(frameOutput, b); err != nil {
				return
			}
		case <-c.dropped:
			_ = fw.writeJSON(frameError, errorMsg{Message: "attach fell behind the session's output; attach again"})
			return
		case asked := <-detach:
			if asked {
				// The output of what was just typed (its echo, at least)
				// goes out before the detach.
				linger := time.After(detachLinger)
				for {
					select {
					case b := <-c.out:
						if err := fw.write(frameOutput, b); err != nil {
							return
						}
						continue
					case <-linger:
					}
					break
				}
				_ = fw.writeJSON(frameResult, AttachResult{Detached: true, ExitCode: -1})
			}
			return
		case <-sv.done:
			for len(c.out) > 0 {
				if err := fw.write(frameOutput, <-c.out); err != nil {
					return
				}
			}
			sv.mu.Lock()
			code := sv.exitCode
			sv.mu.Unlock()
			_ = fw.writeJSON(frameResult, AttachResult{Ended: true, ExitCode: code})
			return
		}
	}
}

// ---- the agent's side ----

// sessions serialises starts, so one name is never started twice.
var sessionStartMu sync.Mutex

func (s *Server) sessionStart(ctx context.Context, sr *sessionReq) (Session, error) {
	if sr == nil || sr.Spec == nil {
		return Session{}, fmt.Errorf("%w: no session spec", ErrSessionInvalid)
	}
	spec := *sr.Spec
	if err := validSpec(spec); err != nil {
		return Session{}, err
	}
	if spec.Name != "" {
		if err := ValidSessionName(spec.Name); err != nil {
			return Session{}, err
		}
	}
	cfg := s.Sessions
	dir := cfg.stateDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Session{}, err
	}
	sessionStartMu.Lock()
	defer sessionStartMu.Unlock()
	if spec.Name == "" {
		spec.Name = s.freeSessionName(spec.Command)
	}
	if ses, err := s.sessionInfo(spec.Name); err == nil && ses.State == SessionRunning {
		return Session{}, fmt.Errorf("session %q is running: %w", spec.Name, ErrSessionExists)
	}
	if err := s.pruneSessions(spec.Name); err != nil {
		return Session{}, err
	}

	argv := cfg.Supervisor
	if len(argv) == 0 {
		argv = []string{"/proc/self/exe", "session-supervise"}
	}
	b, err := json.Marshal(superviseInput{Spec: spec, BootID: cfg.bootID()})
	if err != nil {
		return Session{}, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return Session{}, err
	}
	defer readyR.Close()
	cmd := exec.Command(argv[0], append(slices.Clone(argv[1:]), dir, cfg.runDir(), spec.Name)...)
	cmd.Stdin = bytes.NewReader(b)
	cmd.ExtraFiles = []*os.File{readyW} // fd 3
	cmd.Env = append([]string{"PATH=" + execPath, "LC_ALL=C"}, cfg.Env...)
	cmd.Dir = "/"
	// A session of its own: neither the agent's death nor a signal to its
	// process group reaches the supervisor.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	_ = readyW.Close()
	if err != nil {
		return Session{}, fmt.Errorf("session %q: starting the supervisor: %w", spec.Name, err)
	}
	go func() { _ = cmd.Wait() }() // reaped here while the agent lives, by init after
	line, err := readLine(ctx, readyR, supervisorStart)
	if err != nil {
		_ = cmd.Process.Kill()
		return Session{}, fmt.Errorf("session %q: supervisor: %w", spec.Name, err)
	}
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		return Session{}, fmt.Errorf("session %q: %s", spec.Name, msg)
	}
	if !strings.HasPrefix(line, "ok ") {
		return Session{}, fmt.Errorf("session %q: supervisor said %q", spec.Name, printable(line, 200))
	}
	return s.sessionInfo(spec.Name)
}

func validSpec(spec SessionSpec) error {
	switch {
	case strings.TrimSpace(spec.Command) == "":
		return fmt.Errorf("%w: no command", ErrSessionInvalid)
	case len(spec.Command) > MaxSessionCommand || strings.IndexByte(spec.Command, 0) >= 0 || !utf8.ValidString(spec.Command):
		return fmt.Errorf("%w: command of %d bytes", ErrSessionInvalid, len(spec.Command))
	case len(spec.Dir) > maxSessionDir || strings.IndexByte(spec.Dir, 0) >= 0:
		return fmt.Errorf("%w: bad directory", ErrSessionInvalid)
	}
	n := 0
	for k, v := range spec.Env {
		n += len(k) + len(v)
		if !validEnvKey(k) || strings.IndexByte(v, 0) >= 0 {
			return fmt.Errorf("%w: environment variable %q", ErrSessionInvalid, printable(k, 64))
		}
	}
	if n > maxSessionEnv {
		return fmt.Errorf("%w: environment of %d bytes", ErrSessionInvalid, n)
	}
	return nil
}

func validEnvKey(k string) bool {
	if k == "" || len(k) > 256 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}

// readLine reads one line from r within d.
func readLine(ctx context.Context, r *os.File, d time.Duration) (string, error) {
	_ = r.SetReadDeadline(time.Now().Add(d))
	stop := context.AfterFunc(ctx, func() { _ = r.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var b []byte
	buf := make([]byte, 512)
	for len(b) < 8<<10 {
		n, err := r.Read(buf)
		b = append(b, buf[:n]...)
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			return string(b[:i]), nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return "", fmt.Errorf("exited without a word: %q", printable(string(b), 200))
			}
			return "", err
		}
	}
	return "", errors.New("over-long reply")
}

// freeSessionName derives a name from the command's first word: its base
// name in the allowed characters, then -2, -3, ... while taken.
func (s *Server) freeSessionName(command string) string {
	base := "s"
	if f := strings.Fields(command); len(f) > 0 {
		var b strings.Builder
		for _, c := range strings.ToLower(filepath.Base(strings.Trim(f[0], `'"`))) {
			if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || b.Len() > 0 && (c == '-' || c == '_' || c == '.') {
				b.WriteRune(c)
			}
			if b.Len() >= 48 {
				break
			}
		}
		if b.Len() > 0 {
			base = b.String()
		}
	}
	dir := s.Sessions.stateDir()
	for i := 1; ; i++ {
		n := base
		if i > 1 {
			n = base + "-" + strconv.Itoa(i)
		}
		if _, err := os.Lstat(sessionFile(dir, n, sessionStateExt)); errors.Is(err, os.ErrNotExist) {
			return n
		}
	}
}

// pruneSessions makes room for one more session: the oldest ended ones go.
func (s *Server) pruneSessions(keep string) error {
	all, err := s.listSessions()
	if err != nil {
		return err
	}
	if len(all) < MaxSessions {
		return nil
	}
	dir := s.Sessions.stateDir()
	for _, ses := range all { // oldest first
		if len(all) < MaxSessions {
			return nil
		}
		if ses.State == SessionRunning || ses.Name == keep {
			continue
		}
		_ = os.Remove(sessionFile(dir, ses.Name, sessionStateExt))
		_ = logfile.Remove(sessionFile(dir, ses.Name, sessionLogExt))
		all = all[1:]
	}
	if len(all) >= MaxSessions {
		return fmt.Errorf("%d sessions are running; kill one first", MaxSessions)
	}
	return nil
}

// sessionInfo reads one session's state, settling a "running" one whose
// supervisor is gone as ended.
func (s *Server) sessionInfo(name string) (Session, error) {
	cfg := s.Sessions
	st, err := readSessionState(cfg.stateDir(), name)
	if err != nil {
		return Session{}, err
	}
	if st.State == SessionRunning && s.supervisorGone(name) {
		// The supervisor writes its final state before it closes its
		// socket: read again, an exit may have landed since the first read.
		if again, err := readSessionState(cfg.stateDir(), name); err == nil && again.State != SessionRunning {
			ses := again.Session
			ses.LastOutput = lastLine(sessionFile(cfg.stateDir(), name, sessionLogExt))
			return ses, nil
		}
		st.State, st.Ended, st.Reason = SessionEnded, time.Now().UTC(), ReasonSupervisorLost
		if st.BootID != "" && st.BootID != cfg.bootID() {
			st.Reason = ReasonVMStopped
		}
		st.PID = 0
		if err := writeSessionState(cfg.stateDir(), st); err != nil {
			orDiscard(s.Log).Warn("agent: recording an ended session", "session", name, "err", err)
		}
	}
	ses := st.Session
	ses.LastOutput = lastLine(sessionFile(cfg.stateDir(), name, sessionLogExt))
	return ses, nil
}

// lastLine is the last non-empty line of a log, at most maxLastOutput bytes.
func lastLine(path string) string {
	b, err := logfile.Tail(path, 4096)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.ReplaceAll(string(b), "\r", ""), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l == "" {
			continue
		}
		for len(l) > maxLastOutput || !utf8.ValidString(l) {
			if len(l) > maxLastOutput {
				l = l[:maxLastOutput]
			}
			l = strings.ToValidUTF8(l, "")
		}
		return l
	}
	return ""
}

// supervisorAlive asks the session's supervisor for its status.
// supervisorGone reports whether a session's supervisor is certainly gone:
// its socket is missing or refuses connections. A slow answer (a loaded
// guest) is not proof: the session stays "running" rather than being
// recorded as lost for good.
func (s *Server) supervisorGone(name string) bool {
	conn, err := s.dialSupervisor(name, 2*time.Second)
	if err != nil {
		return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	fw := &frameWriter{w: conn}
	if err := fw.writeJSON(frameRequest, request{Op: supStatus, Session: &sessionReq{Name: name}}); err != nil {
		return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
	}
	t, _, err := newFrameReader(conn).next()
	if err == nil {
		return t != frameResult
	}
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

func (s *Server) dialSupervisor(name string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.Dial("unix", sessionFile(s.Sessions.runDir(), name, sessionSockExt))
}

// listSessions reads every state file, oldest first.
func (s *Server) listSessions() ([]Session, error) {
	ents, err := os.ReadDir(s.Sessions.stateDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Session
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), sessionStateExt)
		if !ok || !e.Type().IsRegular() || ValidSessionName(name) != nil {
			continue
		}
		ses, err := s.sessionInfo(name)
		if err != nil {
			orDiscard(s.Log).Warn("agent: skipping a session", "session", name, "err", err)
			continue
		}
		out = append(out, ses)
	}
	slices.SortStableFunc(out, func(a, b Session) int { return a.Started.Compare(b.Started) })
	return out, nil
}

// writeSessionList sends the list as JSON in output frames.
func (s *Server) writeSessionList(fw *frameWriter) error {
	list, err := s.listSessions()
	if err != nil {
		return err
	}
	if list == nil {
		list = []Session{}
	}
	b, err := json.Marshal(list)
	if err != nil {
		return err
	}
	ow := newOutputWriter(fw)
	if _, err := ow.Write(b); err != nil {
		return err
	}
	return ow.Flush()
}

// sessionNamed validates the request's session name and checks it exists.
func (s *Server) sessionNamed(sr *sessionReq) (Session, error) {
	if sr == nil {
		return Session{}, fmt.Errorf("%w: no session named", ErrSessionInvalid)
	}
	if err := ValidSessionName(sr.Name); err != nil {
		return Session{}, err
	}
	return s.sessionInfo(sr.Name)
}

// sessionCtl runs kill or resize on the session's supervisor.
func (s *Server) sessionCtl(op string, sr *sessionReq) error {
	ses, err := s.sessionNamed(sr)
	if err != nil {
		return err
	}
	if ses.State != SessionRunning {
		return fmt.Errorf("session %q: %w", ses.Name, ErrSessionEnded)
	}
	if op == supKill {
		if _, ok := signalNumbers[cmpOr(sr.Signal, "TERM")]; !ok {
			return fmt.Errorf("%w: signal %q not allowed", ErrSessionInvalid, printable(sr.Signal, 16))
		}
	}
	conn, err := s.dialSupervisor(ses.Name, 5*time.Second)
	if err != nil {
		return fmt.Errorf("session %q: %w", ses.Name, ErrSessionEnded)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fw := &frameWriter{w: conn}
	if err := fw.writeJSON(frameRequest, request{Op: op, Session: sr}); err != nil {
		return err
	}
	return supervisorReply(newFrameReader(conn))
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// supervisorReply turns the supervisor's last frame into an error.
func supervisorReply(fr *frameReader) error {
	t, p, err := fr.next()
	if err != nil {
		return fmt.Errorf("session supervisor: %w", err)
	}
	switch t {
	case frameResult:
		return nil
	case frameError:
		var m errorMsg
		_ = json.Unmarshal(p, &m)
		return codedError(m)
	}
	return fmt.Errorf("%w: session supervisor sent frame %q", ErrProtocol, t)
}

// codedError rebuilds an error the supervisor sent, keeping its sentinel.
func codedError(m errorMsg) error {
	if s := codeSentinel(m.Code); s != nil {
		return fmt.Errorf("%s%w", strings.TrimSuffix(m.Message, s.Error()), s)
	}
	return errors.New(m.Message)
}

// sessionProxy serves attach and send: the host's stream is joined to the
// supervisor's socket, frames passing through unchanged both ways.
func (s *Server) sessionProxy(ctx context.Context, op string, sr *sessionReq, st io.ReadWriteCloser, fw *frameWriter) error {
	ses, err := s.sessionNamed(sr)
	if err != nil {
		return err
	}
	var conn net.Conn
	if ses.State == SessionRunning {
		conn, err = s.dialSupervisor(ses.Name, 5*time.Second)
	}
	if ses.State != SessionRunning || err != nil {
		if op == supSend {
			return fmt.Errorf("session %q: %w", ses.Name, ErrSessionEnded)
		}
		// Attach to an ended session: its last output and how it ended.
		return s.attachEnded(ses, fw)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	if err := (&frameWriter{w: conn}).writeJSON(frameRequest, request{Op: op, Session: sr}); err != nil {
		return err
	}
	go func() {
		_, _ = io.Copy(conn, st) // host → supervisor, until the host closes
		if uc, ok := conn.(*net.UnixConn); ok {
			_ = uc.CloseWrite()
		}
	}()
	if _, err := io.Copy(writerOnly{fw: fw}, conn); err != nil {
		return errAborted
	}
	return errReplied
}

// writerOnly writes raw bytes (whole frames from the supervisor) under the
// stream's frame lock.
type writerOnly struct{ fw *frameWriter }

func (w writerOnly) Write(p []byte) (int, error) {
	w.fw.mu.Lock()
	defer w.fw.mu.Unlock()
	return w.fw.w.Write(p)
}

// errReplied: the handler already sent the operation's last frame.
var errReplied = errors.New("replied")

func (s *Server) attachEnded(ses Session, fw *frameWriter) error {
	b, _ := logfile.Tail(sessionFile(s.Sessions.stateDir(), ses.Name, sessionLogExt), SessionRing)
	for len(b) > 0 {
		n := min(len(b), dataChunk)
		if err := fw.write(frameOutput, b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	res := AttachResult{Ended: true, ExitCode: -1}
	if ses.ExitCode != nil {
		res.ExitCode = *ses.ExitCode
	}
	if err := fw.writeJSON(frameResult, res); err != nil {
		return err
	}
	return errReplied
}

// sessionLogs sends the last sr.Tail lines of the log (all of it without),
// then, with Follow, what is appended until the session ends or the host
// closes the stream.
func (s *Server) sessionLogs(ctx context.Context, sr *sessionReq, fr *frameReader, fw *frameWriter) error {
	ses, err := s.sessionNamed(sr)
	if err != nil {
		return err
	}
	if sr.Tail < 0 {
		return fmt.Errorf("%w: negative tail", ErrSessionInvalid)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // the host closing its end stops a follow
		for {
			if _, _, err := fr.next(); err != nil {
				cancel()
				return
			}
		}
	}()
	path := sessionFile(s.Sessions.stateDir(), ses.Name, sessionLogExt)
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil // nothing logged (yet)
	}
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("session %q: log is not a regular file", ses.Name)
	}
	size := fi.Size()
	// The older segment, then the live file up to size.
	var old []byte
	if size < maxSessionTail {
		old, _ = logfile.Tail(path+".1", maxSessionTail-size)
	}
	live, err := io.ReadAll(io.NewSectionReader(f, max(size-maxSessionTail, 0), min(size, maxSessionTail)))
	if err != nil {
		return err
	}
	data := append(old, live...)
	if sr.Tail > 0 {
		data = lastLines(data, sr.Tail)
	}
	ow := newOutputWriter(fw)
	if _, err := ow.Write(data); err != nil {
		return err
	}
	if err := ow.Flush(); err != nil {
		return err
	}
	if !sr.Follow {
		return nil
	}
	off := size
	buf := make([]byte, dataChunk)
	for {
		n, rerr := f.ReadAt(buf, off)
		if n > 0 {
			off += int64(n)
			if err := fw.write(frameOutput, buf[:n]); err != nil {
				return errAborted
			}
			continue
		}
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return rerr
		}
		// Drained: a rotation means the rest is in a new live file.
		if cur, err := os.Lstat(path); err == nil && !os.SameFile(cur, fi) {
			nf, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
			if err == nil {
				if nfi, err := nf.Stat(); err == nil {
					_ = f.Close()
					f, fi, off = nf, nfi, 0
					continue
				}
				_ = nf.Close()
			}
		}
		if st, err := readSessionState(s.Sessions.stateDir(), ses.Name); err != nil || st.State != SessionRunning {
			// Ended: what it wrote last is in the file already; one more read.
			if n, _ := f.ReadAt(buf, off); n > 0 {
				off += int64(n)
				_ = fw.write(frameOutput, buf[:n])
				continue
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return errAborted
		case <-time.After(sessionPoll):
		}
	}
}

// lastLines is the last n lines of b (a final line without a newline counts).
func lastLines(b []byte, n int) []byte {
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	for i := end - 1; i >= 0; i-- {
		if b[i] == '\n' {
			n--
			if n == 0 {
				return b[i+1:]
			}
		}
	}
	return b
}
