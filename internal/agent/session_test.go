package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// The test binary is also the sessions' supervisor (like banger-agent
// session-supervise): SessionConfig.Supervisor re-execs it with this set.
const superviseEnv = "BANGER_AGENT_TEST_SUPERVISE"

func TestMain(m *testing.M) {
	if os.Getenv(superviseEnv) == "1" {
		os.Exit(Supervise(os.Args[1:], os.Stdin, os.NewFile(3, "ready")))
	}
	os.Exit(m.Run())
}

// sessionConfig is a guest layout in a temp dir; the sessions it starts are
// killed when the test ends.
func sessionConfig(t *testing.T) SessionConfig {
	t.Helper()
	dir := t.TempDir()
	cfg := SessionConfig{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"),
		Supervisor: []string{os.Args[0]}, Env: []string{superviseEnv + "=1"}}
	t.Cleanup(func() {
		ents, _ := os.ReadDir(cfg.StateDir)
		for _, e := range ents {
			name, ok := strings.CutSuffix(e.Name(), sessionStateExt)
			if !ok {
				continue
			}
			if st, err := readSessionState(cfg.StateDir, name); err == nil && st.State == SessionRunning {
				_ = syscall.Kill(-st.PID, syscall.SIGKILL)
				_ = syscall.Kill(st.SupervisorPID, syscall.SIGKILL)
			}
		}
	})
	return cfg
}

func startSession(t *testing.T, c *Client, name, command string) Session {
	t.Helper()
	ses, err := c.SessionStart(testCtx(t, 20*time.Second), SessionSpec{Name: name, Command: command})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	// A short command may have ended by the time the start is answered.
	if (ses.State != SessionRunning && ses.State != SessionExited) || ses.PID <= 0 || (name != "" && ses.Name != name) {
		t.Fatalf("started session: %+v", ses)
	}
	return ses
}

func findSession(t *testing.T, c *Client, name string) Session {
	t.Helper()
	list, err := c.SessionList(testCtx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("session %s not listed: %+v", name, list)
	return Session{}
}

func waitState(t *testing.T, c *Client, name, state string) Session {
	t.Helper()
	var s Session
	waitFor(t, 15*time.Second, name+" "+state, func() bool {
		s = findSession(t, c, name)
		return s.State == state
	})
	return s
}

func logs(t *testing.T, c *Client, name string, tail int) string {
	t.Helper()
	var b strings.Builder
	if err := c.SessionLogs(testCtx(t, 10*time.Second), name, tail, false, &b); err != nil {
		t.Fatalf("logs %s: %v", name, err)
	}
	return b.String()
}

func waitLogs(t *testing.T, c *Client, name, want string) string {
	t.Helper()
	var out string
	waitFor(t, 15*time.Second, "logs of "+name+" to show "+want, func() bool {
		out = logs(t, c, name, 0)
		return strings.Contains(out, want)
	})
	return out
}

const ticker = `i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done`

func TestSessionStartListLogsKill(t *testing.T) {
	c := pair(t, &Server{Sessions: sessionConfig(t)})
	startSession(t, c, "web", ticker)
	if s := findSession(t, c, "web"); s.State != SessionRunning || s.Command != ticker || s.ExitCode != nil {
		t.Fatalf("listed: %+v", s)
	}
	waitLogs(t, c, "web", "tick 5")
	tail := strings.ReplaceAll(logs(t, c, "web", 3), "\r", "")
	if lines := strings.Split(strings.TrimSuffix(tail, "\n"), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[0], "tick ") {
		t.Fatalf("logs --tail 3: %q", tail)
	}
	if s := findSession(t, c, "web"); !strings.HasPrefix(s.LastOutput, "tick ") {
		t.Fatalf("last output %q", s.LastOutput)
	}
	// A running name is taken.
	_, err := c.SessionStart(testCtx(t, 10*time.Second), SessionSpec{Name: "web", Command: "true"})
	if !errors.Is(err, ErrSessionExists) {
		t.Fatalf("second start of web: %v, want ErrSessionExists", err)
	}
	if err := c.SessionKill(testCtx(t, 10*time.Second), "web", "TERM"); err != nil {
		t.Fatal(err)
	}
	s := waitState(t, c, "web", SessionExited)
	if s.ExitCode == nil || *s.ExitCode != 143 || s.Ended.IsZero() {
		t.Fatalf("after kill TERM: %+v, want exit code 143", s)
	}
	if err := c.SessionKill(testCtx(t, 10*time.Second), "web", "TERM"); !errors.Is(err, ErrSessionEnded) {
		t.Fatalf("kill of an ended session: %v, want ErrSessionEnded", err)
	}
	if err := c.SessionKill(testCtx(t, 10*time.Second), "nope", ""); !errors.Is(err, ErrSessionNotFound) {
		t.Fatalf("kill of no session: %v, want ErrSessionNotFound", err)
	}
}

func TestSessionExitCodeAndDefaultName(t *testing.T) {
	c := pair(t, &Server{Sessions: sessionConfig(t)})
	s := startSession(t, c, "", `sh -c "echo bye; exit 7"`)
	if s.Name != "sh" {
		t.Fatalf("default name %q, want sh", s.Name)
	}
	s = waitState(t, c, "sh", SessionExited)
	if s.ExitCode == nil || *s.ExitCode != 7 || s.LastOutput != "bye" {
		t.Fatalf("exited session: %+v", s)
	}
	// The name of an ended session is taken by default naming, reusable by hand.
	if s2 := startSession(t, c, "", "sleep 60"); s2.Name != "sleep" {
		t.Fatalf("default name %q", s2.Name)
	}
	if s3 := startSession(t, c, "", "sleep 60"); s3.Name != "sleep-2" {
		t.Fatalf("default name %q, want sleep-2", s3.Name)
	}
	startSession(t, c, "sh", "sleep 60")
}

// TestSessionNoReadyPipe: the supervisor's ready pipe (its fd 3) does not
// leak into the session's process.
func TestSessionNoReadyPipe(t *testing.T) {
	c := pair(t, &Server{Sessions: sessionConfig(t)})
	startSession(t, c, "fds", `if [ -e /proc/$$/fd/3 ]; then echo "fd3 open: $(readlink /proc/$$/fd/3)"; else echo "fd3 closed"; fi`)
	waitState(t, c, "fds", SessionExited)
	out := logs(t, c, "fds", 0)
	if !strings.Contains(out, "fd3 closed") {
		t.Fatalf("session sees the ready pipe:\n%s", out)
	}
}

func TestSessionSendEnvDir(t *testing.T) {
	c := pair(t, &Server{Sessions: sessionConfig(t)})
	dir := t.TempDir()
	_, err := c.SessionStart(testCtx(t, 20*time.Second), SessionSpec{Name: "cat", Dir: dir, Env: map[string]string{"FOO": "bar baz"},
		Command: `echo "env=$FOO pwd=$(pwd)"; exec cat`})
	if err != nil {
		t.Fatal(err)
	}
	waitLogs(t, c, "cat", "env=bar baz pwd="+dir)
	if err := c.SessionSend(testCtx(t, 10*time.Second), "cat", strings.NewReader("hello session\n"), false); err != nil {
		t.Fatal(err)
	}
	// The terminal echoes the line, then cat prints it: twice.
	waitFor(t, 10*time.Second, "the line twice", func() bool { return strings.Count(logs(t, c, "cat", 0), "hello session") == 2 })
	if s := findSession(t, c, "cat"); s.State != SessionRunning {
		t.Fatalf("send ended the session: %+v", s)
	}
	// --eof: ^D ends cat's read.
	if err := c.SessionSend(testCtx(t, 10*time.Second), "cat", strings.NewReader(""), true); err != nil {
		t.Fatal(err)
	}
	if s := waitState(t, c, "cat", SessionExited); *s.ExitCode != 0 {
		t.Fatalf("cat after EOF: %+v", s)
	}
	if err := c.SessionSend(testCtx(t, 10*time.Second), "cat", strings.NewReader("late\n"), false); !errors.Is(err, ErrSessionEnded) {
		t.Fatalf("send to an ended session: %v", err)
	}
}

// lineWriter signals each write.
type notifyBuffer struct {
	syncBuffer
	n atomic.Int64
}

func (b *notifyBuffer) Write(p []byte) (int, error) {
	b.n.Add(1)
	return b.syncBuffer.Write(p)
}

func TestSessionAttachDetach(t *testing.T) {
	c := pair(t, &Server{Sessions: sessionConfig(t)})
	startSession(t, c, "repl", `echo ready; while read l; do echo "got $l"; done`)
	waitLogs(t, c, "repl", "ready")

	inR, inW := io.Pipe()
	out := &notifyBuffer{}
	type result struct {
		res AttachResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := c.SessionAttach(testCtx(t, 30*time.Second), "repl", AttachRequest{Stdin: inR, Stdout: out, Size: &Winsize{Cols: 100, Rows: 30}})
		done <- result{res, err}
	}()
	// Recent output first, from before the attach.
	waitFor(t, 10*time.Second, "the ring replayed", func() bool { return strings.Contains(out.String(), "ready") })
	// Then live output, and input reaches the process.
	if _, err := inW.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "live output", func() bool { return strings.Contains(out.String(), "got one") })
	_ = inW.Close() // detach
	r := <-done
	if r.err != nil || !r.res.Detached {
		t.Fatalf("attach: %+v %v", r.res, r.err)
	}
	if s := findSession(t, c, "repl"); s.State != SessionRunning {
		t.Fatalf("detach ended the session: %+v", s)
	}

	// The host dropping the stream (ctx ends) leaves it running too.
	ctx, cancel := context.WithCancel(context.Background())
	out2 := &notifyBuffer{}
	go func() {
		_, err := c.SessionAttach(ctx, "repl", AttachRequest{Stdout: out2})
		done <- result{err: err}
	}()
	waitFor(t, 10*time.Second, "second attach", func() bool { return strings.Contains(out2.String(), "got one") })
	cancel()
	if r := <-done; r.err == nil {
		t.Fatal("attach cancelled by ctx returned no error")
	}
	if err := c.SessionSend(testCtx(t, 10*time.Second), "repl", strings.NewReader("two\n"), false); err != nil {
		t.Fatal(err)
	}
	waitLogs(t, c, "repl", "got two")

	// An attach when the session ends gets its exit code.
	go func() {
		res, err := c.SessionAttach(testCtx(t, 30*time.Second), "repl", AttachRequest{Stdout: io.Discard})
		done <- result{res, err}
	}()
	time.Sleep(300 * time.Millisecond)
	if err := c.SessionKill(testCtx(t, 10*time.Second), "repl", "KILL"); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil || !r.res.Ended || r.res.ExitCode != 137 {
		t.Fatalf("attach across the end: %+v %v", r.res, r.err)
	}
	// Attach to an ended session: its output, then how it ended.
	var b strings.Builder
	res, err := c.SessionAttach(testCtx(t, 10*time.Second), "repl", AttachRequest{Stdout: &b})
	if err != nil || !res.Ended || res.ExitCode != 137 || !strings.Contains(b.String(), "got two") {
		t.Fatalf("attach to an ended session: %+v %v %q", res, err, b.String())
	}
}

// A restarted agent (another Server on the same directories) reaches the
// sessions its predecessor started; one whose supervisor died shows ended,
// "vm stopped" when the boot changed.
func TestSessionOutlivesAgent(t *testing.T) {
	cfg := sessionConfig(t)
	boot := atomic.Value{}
	boot.Store("boot-1")
	cfg.BootID = func() string { return boot.Load().(string) }
	c1 := pair(t, &Server{Sessions: cfg})
	startSession(t, c1, "web", ticker)
	startSession(t, c1, "lost", "sleep 600")
	c1.Close()

	c2 := pair(t, &Server{Sessions: cfg})
	if s := findSession(t, c2, "web"); s.State != SessionRunning {
		t.Fatalf("after an agent restart: %+v", s)
	}
	waitLogs(t, c2, "web", "tick 3")
	if err := c2.SessionSend(testCtx(t, 10*time.Second), "web", strings.NewReader("x"), false); err != nil {
		t.Fatal(err)
	}

	kill := func(name string) {
		st, err := readSessionState(cfg.StateDir, name)
		if err != nil {
			t.Fatal(err)
		}
		_ = syscall.Kill(st.SupervisorPID, syscall.SIGKILL)
		_ = syscall.Kill(-st.PID, syscall.SIGKILL)
		waitFor(t, 5*time.Second, "supervisor gone", func() bool { return syscall.Kill(st.SupervisorPID, 0) != nil })
	}
	kill("lost")
	if s := findSession(t, c2, "lost"); s.State != SessionEnded || s.Reason != ReasonSupervisorLost || s.ExitCode != nil {
		t.Fatalf("supervisor killed: %+v", s)
	}
	kill("web")
	boot.Store("boot-2")
	if s := findSession(t, c2, "web"); s.State != SessionEnded || s.Reason != ReasonVMStopped {
		t.Fatalf("after a reboot: %+v", s)
	}
	// Settled once: the file says so now.
	if st, _ := readSessionState(cfg.StateDir, "web"); st.State != SessionEnded || st.Reason != ReasonVMStopped {
		t.Fatalf("state file: %+v", st)
	}
}

func TestSessionLogsFollow(t *testing.T) {
	c := pair(t, &Server{Sessions: sessionConfig(t)})
	startSession(t, c, "short", `for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done; exit 3`)
	var b strings.Builder
	if err := c.SessionLogs(testCtx(t, 20*time.Second), "short", 0, true, &b); err != nil {
		t.Fatal(err)
	}
	out := strings.ReplaceAll(b.String(), "\r", "")
	if out != "line 1\nline 2\nline 3\nline 4\nline 5\n" {
		t.Fatalf("logs -f until the end: %q", out)
	}
	// A follow the host gives up on ends.
	startSession(t, c, "long", "sleep 600")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := c.SessionLogs(ctx, "long", 0, true, io.Discard); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("follow cut by ctx: %v", err)
	}
}

func TestSessionNames(t *testing.T) {
	for _, n := range []string{"web", "a", "s1", "npm-dev", "x.y_z", strings.Repeat("a", 63)} {
		if err := ValidSessionName(n); err != nil {
			t.Errorf("%q refused: %v", n, err)
		}
	}
	for _, n := range []string{"", "../x", "..", ".x", "-x", "A", "a/b", "a b", "a\n", strings.Repeat("a", 64), "é"} {
		if err := ValidSessionName(n); !errors.Is(err, ErrSessionInvalid) {
			t.Errorf("%q accepted (%v)", n, err)
		}
	}
	cfg := sessionConfig(t)
	c := pair(t, &Server{Sessions: cfg})
	if _, err := c.SessionStart(testCtx(t, 10*time.Second), SessionSpec{Name: "../x", Command: "true"}); !errors.Is(err, ErrSessionInvalid) {
		t.Fatalf("client start ../x: %v", err)
	}
	// The agent refuses it too, when a host skips the check.
	for _, req := range []request{
		{Op: opSessionStart, Session: &sessionReq{Spec: &SessionSpec{Name: "../x", Command: "true"}}},
		{Op: opSessionStart, Session: &sessionReq{Spec: &SessionSpec{Name: "ok", Command: "true", Env: map[string]string{"A=B": "c"}}}},
		{Op: opSessionStart, Session: &sessionReq{Spec: &SessionSpec{Name: "ok", Command: " "}}},
		{Op: opSessionLogs, Session: &sessionReq{Name: "../../etc/passwd"}},
		{Op: opSessionKill, Session: &sessionReq{Name: "../x", Signal: "TERM"}},
		{Op: opSessionAttach, Session: &sessionReq{Name: "/x"}},
	} {
		cl, err := c.open(testCtx(t, 10*time.Second), req)
		if err != nil {
			t.Fatal(err)
		}
		err = cl.result(io.Discard, nil, nil)
		cl.close()
		if !errors.Is(err, ErrSessionInvalid) {
			t.Errorf("%s %+v: %v, want ErrSessionInvalid", req.Op, req.Session, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Dir(cfg.StateDir)); len(ents) != 0 {
		t.Errorf("refused requests left files: %v", ents)
	}
}

// A hostile agent's session replies are refused, never trusted.
func TestHostileSessionReplies(t *testing.T) {
	reply := func(frames ...[]byte) func(st *yamux.Stream) {
		return func(st *yamux.Stream) {
			for _, f := range frames {
				if _, err := st.Write(f); err != nil {
					return
				}
			}
			_, _ = io.Copy(io.Discard, st)
		}
	}
	frame := func(t byte, p []byte) []byte {
		return append(header(t, uint32(len(p))), p...)
	}
	list := func(ss ...Session) []byte {
		b, _ := json.Marshal(ss)
		return b
	}
	now := time.Now()
	code := 300
	huge := make([]Session, MaxSessions+1)
	for i := range huge {
		huge[i] = Session{Name: "s" + strconv.Itoa(i), Command: "x", State: SessionRunning, Started: now}
	}
	bigList, _ := json.Marshal(huge)
	var chunks [][]byte
	for b := bigList; len(b) > 0; {
		n := min(len(b), dataChunk)
		chunks = append(chunks, frame(frameOutput, b[:n]))
		b = b[n:]
	}
	// 5 MiB of list: over the reply limit, refused before it is parsed.
	var flood [][]byte
	for range 40 {
		flood = append(flood, frame(frameOutput, make([]byte, dataChunk)))
	}
	cases := []struct {
		name   string
		frames [][]byte
	}{
		{"too many sessions", append(chunks, frame(frameResult, []byte("{}")))},
		{"reply over the limit", append(flood, frame(frameResult, []byte("{}")))},
		{"over-long name", [][]byte{frame(frameOutput, list(Session{Name: strings.Repeat("a", 64), State: SessionRunning})), frame(frameResult, []byte("{}"))}},
		{"path in the name", [][]byte{frame(frameOutput, list(Session{Name: "../../x", State: SessionRunning})), frame(frameResult, []byte("{}"))}},
		{"unknown state", [][]byte{frame(frameOutput, list(Session{Name: "a", State: "\x1b[2J"})), frame(frameResult, []byte("{}"))}},
		{"exit code out of range", [][]byte{frame(frameOutput, list(Session{Name: "a", State: SessionExited, ExitCode: &code})), frame(frameResult, []byte("{}"))}},
		{"over-long command", [][]byte{frame(frameOutput, list(Session{Name: "a", State: SessionRunning, Command: strings.Repeat("x", MaxSessionCommand+1)})), frame(frameResult, []byte("{}"))}},
		{"escape in the reason", [][]byte{frame(frameOutput, list(Session{Name: "a", State: SessionEnded, Reason: "\x1b]0;owned\x07"})), frame(frameResult, []byte("{}"))}},
		{"duplicate names", [][]byte{frame(frameOutput, list(Session{Name: "a", State: SessionRunning}, Session{Name: "a", State: SessionRunning})), frame(frameResult, []byte("{}"))}},
		{"not json", [][]byte{frame(frameOutput, []byte("[{")), frame(frameResult, []byte("{}"))}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := hostileClient(t, reply(tc.frames...))
			list, err := c.SessionList(testCtx(t, 10*time.Second))
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("list accepted (%d sessions): %v", len(list), err)
			}
		})
	}
	t.Run("start result with a bad name", func(t *testing.T) {
		b, _ := json.Marshal(Session{Name: "../x", State: SessionRunning})
		c := hostileClient(t, reply(frame(frameResult, b)))
		if _, err := c.SessionStart(testCtx(t, 10*time.Second), SessionSpec{Command: "x"}); !errors.Is(err, ErrProtocol) {
			t.Fatalf("start: %v", err)
		}
	})
	t.Run("attach result both detached and ended", func(t *testing.T) {
		c := hostileClient(t, reply(frame(frameResult, []byte(`{"detached":true,"ended":true,"exit_code":0}`))))
		if _, err := c.SessionAttach(testCtx(t, 10*time.Second), "a", AttachRequest{}); !errors.Is(err, ErrProtocol) {
			t.Fatalf("attach: %v", err)
		}
	})
}

func TestRing(t *testing.T) {
	r := ring{buf: make([]byte, 8)}
	var all []byte
	for i, p := range []string{"abc", "defgh", "ij", "", "klmnopqrstu", "v"} {
		r.Write([]byte(p))
		all = append(all, p...)
		want := all[max(len(all)-8, 0):]
		if got := r.Bytes(); string(got) != string(want) {
			t.Fatalf("step %d: %q, want %q", i, got, want)
		}
	}
}
