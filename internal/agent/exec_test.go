package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func run(t *testing.T, c *Client, r ExecRequest) (int, string, string) {
	t.Helper()
	var out, errb syncBuffer
	if r.Stdout == nil {
		r.Stdout = &out
	}
	if r.Stderr == nil {
		r.Stderr = &errb
	}
	code, err := c.Exec(testCtx(t, 20*time.Second), r)
	if err != nil {
		t.Fatalf("exec %q: %v", r.Command, err)
	}
	return code, out.String(), errb.String()
}

func TestExecExitCodesAndStreams(t *testing.T) {
	c := pair(t, &Server{})
	cases := []struct {
		cmd, stdin     string
		useStdin       bool
		code           int
		stdout, stderr string
	}{
		{cmd: "exit 0"},
		{cmd: "exit 3", code: 3},
		{cmd: "echo out; echo err >&2; exit 7", code: 7, stdout: "out\n", stderr: "err\n"},
		{cmd: "kill -TERM $$", code: 128 + 15},
		{cmd: "cat", useStdin: true, stdin: "hello\nworld", stdout: "hello\nworld"},
		// EOF reaches the process: cat ends and the script goes on.
		{cmd: "cat; echo after-eof", useStdin: true, stdin: "x", stdout: "xafter-eof\n"},
		// No stdin: /dev/null.
		{cmd: "cat; echo done", stdout: "done\n"},
	}
	for _, tc := range cases {
		r := ExecRequest{Command: tc.cmd}
		if tc.useStdin {
			r.Stdin = strings.NewReader(tc.stdin)
		}
		code, out, errs := run(t, c, r)
		if code != tc.code || out != tc.stdout || errs != tc.stderr {
			t.Errorf("%q: code %d stdout %q stderr %q; want %d %q %q", tc.cmd, code, out, errs, tc.code, tc.stdout, tc.stderr)
		}
	}
}

func TestExecSignal(t *testing.T) {
	c := pair(t, &Server{})
	sigs := make(chan string, 1)
	out := &notifyWriter{match: "ready", ch: make(chan struct{})}
	go func() {
		<-out.ch
		sigs <- "BOGUS" // refused by the host, never sent
		sigs <- "TERM"
	}()
	code, err := c.Exec(testCtx(t, 20*time.Second), ExecRequest{Command: "echo ready; sleep 100", Stdout: out, Signals: sigs})
	if err != nil {
		t.Fatal(err)
	}
	if code != 128+15 {
		t.Fatalf("exit code %d, want %d", code, 128+15)
	}
}

// notifyWriter closes ch when the output holds match.
type notifyWriter struct {
	syncBuffer
	match string
	ch    chan struct{}
	fired atomic.Bool
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	n, _ := w.syncBuffer.Write(p)
	if strings.Contains(w.String(), w.match) && !w.fired.Swap(true) {
		close(w.ch)
	}
	return n, nil
}

func TestExecTTY(t *testing.T) {
	c := pair(t, &Server{})
	code, out, _ := run(t, c, ExecRequest{Command: "tty; test -t 2 && echo stderr-is-tty; echo TERM=$TERM", TTY: &TTY{Term: "vt220", Cols: 97, Rows: 31}})
	lines := strings.Split(strings.ReplaceAll(out, "\r", ""), "\n")
	if code != 0 || len(lines) < 3 || !strings.HasPrefix(lines[0], "/dev/pts/") || lines[1] != "stderr-is-tty" || lines[2] != "TERM=vt220" {
		t.Fatalf("code %d output %q", code, out)
	}

	resize := make(chan Winsize, 1)
	w := &notifyWriter{match: "31 97", ch: make(chan struct{})}
	go func() {
		<-w.ch
		resize <- Winsize{Cols: 120, Rows: 40}
	}()
	script := `stty size; while [ "$(stty size)" = "31 97" ]; do sleep 0.02; done; stty size`
	code, err := c.Exec(testCtx(t, 20*time.Second), ExecRequest{Command: script, TTY: &TTY{Cols: 97, Rows: 31}, Stdout: w, Resize: resize})
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if got := strings.ReplaceAll(w.String(), "\r", ""); got != "31 97\n40 120\n" {
		t.Fatalf("stty size output %q", got)
	}

	// Stdin reaches the terminal, and its end is an EOF for a reader.
	// Stdin is held back until echo is off, or the terminal would echo it.
	w = &notifyWriter{match: "ready", ch: make(chan struct{})}
	stdin := &gatedReader{gate: w.ch, r: strings.NewReader("typed\n")}
	code, err = c.Exec(testCtx(t, 20*time.Second), ExecRequest{Command: "stty -echo; echo ready; cat; echo end", TTY: &TTY{Cols: 80, Rows: 24}, Stdin: stdin, Stdout: w})
	if got := strings.ReplaceAll(w.String(), "\r", ""); err != nil || code != 0 || got != "ready\ntyped\nend\n" {
		t.Fatalf("code %d err %v output %q", code, err, got)
	}
}

func TestExecEnvironment(t *testing.T) {
	t.Setenv("BANGER_LEAK", "leaked")
	c := pair(t, &Server{})
	acct := lookupAccount()
	_, out, _ := run(t, c, ExecRequest{Command: "printenv HOME USER LOGNAME SHELL PATH; printenv TERM || echo no-TERM; printenv BANGER_LEAK || echo no-leak; pwd"})
	dir := acct.home
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		dir = "/"
	}
	want := strings.Join([]string{acct.home, acct.name, acct.name, acct.shell, execPath, "no-TERM", "no-leak", dir}, "\n") + "\n"
	if out != want {
		t.Fatalf("environment %q, want %q", out, want)
	}
	if os.Getuid() == 0 && (acct.home != "/root" || acct.name != "root") {
		t.Fatalf("root account %+v", acct)
	}
}

func processGone(pid int) bool {
	return syscall.Kill(pid, 0) == syscall.ESRCH
}

func readPID(t *testing.T, file string) int {
	t.Helper()
	var pid int
	waitFor(t, 10*time.Second, "pid file", func() bool {
		b, err := os.ReadFile(file)
		if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	return pid
}

func TestExecCancelKillsProcess(t *testing.T) {
	c := pair(t, &Server{})
	for _, tc := range []struct {
		name  string
		stdin io.Reader
	}{
		{"idle", nil},
		// The process never reads stdin: the agent is stuck writing it, so
		// only the kill on its own stream reaches it.
		{"stdin-blocked", zeroReader{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "pid")
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() {
				_, err := c.Exec(ctx, ExecRequest{Command: "echo $$ > " + pidFile + "; exec sleep 100", Stdin: tc.stdin})
				errc <- err
			}()
			pid := readPID(t, pidFile)
			if processGone(pid) {
				t.Fatal("process not running before the cancel")
			}
			time.Sleep(100 * time.Millisecond) // let stdin fill every buffer
			cancel()
			select {
			case err := <-errc:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Exec error %v, want context.Canceled", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Exec did not return after cancel")
			}
			waitFor(t, 5*time.Second, "the process to be killed", func() bool { return processGone(pid) })
		})
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

var errFull = errors.New("writer full")

// failWriter accepts n bytes, then fails.
type failWriter struct{ n int64 }

func (w *failWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > w.n {
		return 0, errFull
	}
	w.n -= int64(len(p))
	return len(p), nil
}

func TestExecWriterErrorAborts(t *testing.T) {
	c := pair(t, &Server{})
	pidFile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	_, err := c.Exec(testCtx(t, 20*time.Second), ExecRequest{Command: "echo $$ > " + pidFile + "; exec yes", Stdout: &failWriter{n: 1 << 20}})
	if !errors.Is(err, errFull) {
		t.Fatalf("Exec error %v, want the writer's error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Exec took %v to fail", d)
	}
	pid := readPID(t, pidFile)
	waitFor(t, 5*time.Second, "yes to be killed", func() bool { return processGone(pid) })
}

// deterministicFile writes size bytes of pseudo-random data to a new file.
func deterministicFile(t *testing.T, size int64) (string, [32]byte) {
	path := filepath.Join(t.TempDir(), "data")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(newBlockReader(), size)); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return path, sum
}

// heapPeak samples the heap in use until stop is closed.
func heapPeak(stop <-chan struct{}) <-chan uint64 {
	res := make(chan uint64, 1)
	go func() {
		var peak uint64
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-stop:
				res <- peak
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return res
}

func TestExecLargeOutput(t *testing.T) {
	const size = 64 << 20
	path, want := deterministicFile(t, size)
	c := pair(t, &Server{})
	runtime.GC()
	stop := make(chan struct{})
	peak := heapPeak(stop)
	h := sha256.New()
	cw := &countWriter{w: h}
	code, err := c.Exec(testCtx(t, 60*time.Second), ExecRequest{Command: "head -c " + strconv.Itoa(size) + " " + path, Stdout: cw})
	close(stop)
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if cw.n != size || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("got %d bytes, checksum mismatch or short", cw.n)
	}
	// Whole-buffering 64 MiB on either side would show up here.
	if p := <-peak; p > 32<<20 {
		t.Fatalf("heap peaked at %d MiB while streaming 64 MiB", p>>20)
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// gatedReader reads r once gate is closed.
type gatedReader struct {
	gate <-chan struct{}
	r    io.Reader
}

func (g *gatedReader) Read(p []byte) (int, error) {
	<-g.gate
	return g.r.Read(p)
}

// A background child that inherited stdout does not hold the exec open, and
// output still flowing after the shell exited is not cut.
func TestExecOutputAfterExit(t *testing.T) {
	c := pair(t, &Server{})
	start := time.Now()
	code, out, _ := run(t, c, ExecRequest{Command: "sleep 5 & echo started"})
	if code != 0 || out != "started\n" || time.Since(start) > 5*time.Second {
		t.Fatalf("code %d output %q after %v", code, out, time.Since(start))
	}
	code, out, _ = run(t, c, ExecRequest{Command: "(sleep 0.1; echo late) & echo early"})
	if code != 0 || out != "early\nlate\n" {
		t.Fatalf("code %d output %q", code, out)
	}
}

// TestOpenPTYCloseOnExec: the master never reaches a started command.
func TestOpenPTYCloseOnExec(t *testing.T) {
	m, tty, err := openPTY()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	defer tty.Close()
	raw, err := m.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	var ferr error
	if err := raw.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFD, 0) }); err != nil || ferr != nil {
		t.Fatal(err, ferr)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Fatal("pty master without close-on-exec")
	}
}
