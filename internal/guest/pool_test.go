package guest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/banger-dev/banger/internal/api"
)

type fixture struct {
	dir    string
	signer ssh.Signer
	kh     *KnownHosts
	pool   *Pool
	logs   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	signer, err := EnsureClientKey(filepath.Join(dir, "ssh", "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	kh, err := OpenKnownHosts(filepath.Join(dir, "ssh", "known_hosts"))
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	pool := NewPool(log, signer, kh)
	t.Cleanup(pool.Close)
	return &fixture{dir: dir, signer: signer, kh: kh, pool: pool, logs: logs}
}

func target(s *testServer) Target { return Target{VMID: "vm1", Addr: s.addr, User: "root"} }

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// run executes req and returns code and stdout.
func run(t *testing.T, f *fixture, tg Target, req ExecRequest) (int, string) {
	t.Helper()
	var out bytes.Buffer
	if req.Stdout == nil {
		req.Stdout = &out
	}
	code, err := f.pool.Exec(ctxT(t, 10*time.Second), tg, req)
	if err != nil {
		t.Fatalf("exec %+v: %v", req, err)
	}
	return code, out.String()
}

func TestTOFUPinsOnFirstDial(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	code, out := run(t, f, target(s), ExecRequest{Argv: []string{"echo", "hi"}})
	if code != 0 || out != "hi\n" {
		t.Fatalf("got %d %q", code, out)
	}
	st, err := os.Stat(f.kh.Path())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("known_hosts mode %v, want 0600", st.Mode().Perm())
	}
	dst, _ := os.Stat(filepath.Dir(f.kh.Path()))
	if dst.Mode().Perm() != 0o700 {
		t.Fatalf("ssh dir mode %v, want 0700", dst.Mode().Perm())
	}
	// x/crypto's own parser accepts the file and the pin is the server's key.
	cb, err := knownhosts.New(f.kh.Path())
	if err != nil {
		t.Fatal(err)
	}
	tcp, _ := net.ResolveTCPAddr("tcp", s.addr)
	if err := cb(s.addr, tcp, s.hostKeys[0].PublicKey()); err != nil {
		t.Fatalf("knownhosts.New callback rejects pinned key: %v", err)
	}
	b, _ := os.ReadFile(f.kh.Path())
	want := knownhosts.Line([]string{s.addr}, s.hostKeys[0].PublicKey()) + "\n"
	if string(b) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", b, want)
	}
	if !strings.Contains(f.logs.String(), "pinned guest host key on first use") {
		t.Fatalf("no TOFU log line: %s", f.logs.String())
	}
}

func TestMismatchRefusedAsPossibleMITM(t *testing.T) {
	f := newFixture(t)
	s1 := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	tg := target(s1)
	if code, _ := run(t, f, tg, ExecRequest{Argv: []string{"true"}}); code != 0 {
		t.Fatal(code)
	}
	f.pool.Drop(tg.VMID)
	s1.stop()
	s2 := startServer(t, s1.addr, f.signer.PublicKey()) // same address, new host key
	_, err := f.pool.Exec(ctxT(t, 5*time.Second), tg, ExecRequest{Argv: []string{"true"}})
	if !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("err = %v, want ErrHostKeyMismatch", err)
	}
	msg := err.Error()
	for _, want := range []string{"possible MITM", knownhosts.Normalize(s1.addr),
		ssh.FingerprintSHA256(s1.hostKeys[0].PublicKey()), ssh.FingerprintSHA256(s2.hostKeys[0].PublicKey())} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if n := s2.connCount(); n != 0 {
		t.Fatalf("server saw %d authenticated connections after a mismatch", n)
	}
	// The pin is not replaced by the impostor.
	keys, _ := f.kh.Keys(s1.addr)
	if len(keys) != 1 || !keysEqual(keys[0], s1.hostKeys[0].PublicKey()) {
		t.Fatalf("pin changed: %v", keys)
	}
}

func TestPinBeforeFirstDialDisablesTOFU(t *testing.T) {
	f := newFixture(t)
	_, banger, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey()) // a key other than the one banger made
	if err := f.kh.Pin(s.addr, banger); err != nil {
		t.Fatal(err)
	}
	_, err = f.pool.Exec(ctxT(t, 5*time.Second), target(s), ExecRequest{Argv: []string{"true"}})
	if !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("err = %v, want ErrHostKeyMismatch", err)
	}
}

func TestPinnedHostKeyIsUsed(t *testing.T) {
	f := newFixture(t)
	privPEM, pub, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	hostSigner, err := ssh.ParsePrivateKey(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	// The guest also has an ECDSA key, which x/crypto would prefer by
	// default: negotiation must pick the pinned ed25519 key, not fail.
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecSigner, err := ssh.NewSignerFromKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey(), ecSigner, hostSigner)
	if err := f.kh.Pin(s.addr, pub); err != nil {
		t.Fatal(err)
	}
	if code, _ := run(t, f, target(s), ExecRequest{Argv: []string{"true"}}); code != 0 {
		t.Fatal(code)
	}
	keys, _ := f.kh.Keys(s.addr)
	if len(keys) != 1 {
		t.Fatalf("pins after dial: %d, want 1 (no TOFU append)", len(keys))
	}
}

func TestRemoveDropsPin(t *testing.T) {
	f := newFixture(t)
	s1 := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	tg := target(s1)
	run(t, f, tg, ExecRequest{Argv: []string{"true"}})
	f.pool.Drop(tg.VMID)
	if err := f.kh.Remove(s1.addr); err != nil {
		t.Fatal(err)
	}
	if keys, _ := f.kh.Keys(s1.addr); len(keys) != 0 {
		t.Fatalf("pin survived Remove: %v", keys)
	}
	s1.stop()
	s2 := startServer(t, s1.addr, f.signer.PublicKey())
	if code, _ := run(t, f, tg, ExecRequest{Argv: []string{"true"}}); code != 0 {
		t.Fatal(code)
	}
	keys, _ := f.kh.Keys(s1.addr)
	if len(keys) != 1 || !keysEqual(keys[0], s2.hostKeys[0].PublicKey()) {
		t.Fatalf("re-pinned keys %v", keys)
	}
}

func TestPoolReusesConnection(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	tg := target(s)
	for i := range 5 {
		code, out := run(t, f, tg, ExecRequest{Argv: []string{"echo", fmt.Sprint(i)}})
		if code != 0 || out != fmt.Sprintf("%d\n", i) {
			t.Fatalf("exec %d: %d %q", i, code, out)
		}
	}
	if n := s.connCount(); n != 1 {
		t.Fatalf("5 sequential execs used %d connections, want 1", n)
	}
	// Concurrent callers share it too.
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			if _, err := f.pool.Exec(ctxT(t, 10*time.Second), tg, ExecRequest{Argv: []string{"true"}}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := s.connCount(); n != 1 {
		t.Fatalf("after concurrent execs: %d connections, want 1", n)
	}

	s.dropAll() // guest side goes away (reboot, sshd restart)
	if code, out := run(t, f, tg, ExecRequest{Argv: []string{"echo", "again"}}); code != 0 || out != "again\n" {
		t.Fatalf("after drop: %d %q", code, out)
	}
	if n := s.connCount(); n != 2 {
		t.Fatalf("after server drop: %d connections, want 2", n)
	}

	f.pool.Drop(tg.VMID)
	run(t, f, tg, ExecRequest{Argv: []string{"true"}})
	if n := s.connCount(); n != 3 {
		t.Fatalf("after Drop: %d connections, want 3", n)
	}
}

// freezingProxy forwards TCP to a server; freeze makes the connections open
// so far silently stop forwarding, like a paused or wedged guest.
type freezingProxy struct {
	ln     net.Listener
	mu     sync.Mutex
	frozen []chan struct{}
}

func newFreezingProxy(t *testing.T, backend string) *freezingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezingProxy{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			gate := make(chan struct{})
			close(gate)
			p.mu.Lock()
			idx := len(p.frozen)
			p.frozen = append(p.frozen, gate)
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32*1024)
				for {
					n, err := src.Read(buf)
					p.mu.Lock()
					g := p.frozen[idx]
					p.mu.Unlock()
					<-g
					if n > 0 {
						if _, werr := dst.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						dst.Close()
						return
					}
				}
			}
			go pipe(b, c)
			go pipe(c, b)
			t.Cleanup(func() { c.Close(); b.Close() })
		}
	}()
	return p
}

func (p *freezingProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.frozen {
		p.frozen[i] = make(chan struct{}) // never closed
	}
}

func TestKeepaliveTimeoutRedials(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	px := newFreezingProxy(t, s.addr)
	tg := Target{VMID: "vm1", Addr: px.ln.Addr().String()}
	run(t, f, tg, ExecRequest{Argv: []string{"true"}})
	f.pool.KeepaliveTimeout = 200 * time.Millisecond
	px.freeze()
	start := time.Now()
	if code, out := run(t, f, tg, ExecRequest{Argv: []string{"echo", "fresh"}}); code != 0 || out != "fresh\n" {
		t.Fatalf("%d %q", code, out)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("redial after a silent connection took %v", d)
	}
	if n := s.connCount(); n != 2 {
		t.Fatalf("connections %d, want 2", n)
	}
	if !strings.Contains(f.logs.String(), "keepalive timed out") {
		t.Fatalf("no keepalive log: %s", f.logs.String())
	}
}

func TestExitCodes(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	tg := target(s)
	for _, tc := range []struct {
		req  ExecRequest
		code int
		out  string
	}{
		{ExecRequest{Argv: []string{"true"}}, 0, ""},
		{ExecRequest{Argv: []string{"exit", "3"}}, 3, ""},
		{ExecRequest{Argv: []string{"exit", "130"}}, 130, ""},
		{ExecRequest{Command: "echo hi; exit 3"}, 3, "hi\n"},
		{ExecRequest{Command: "false || echo fallback"}, 0, "fallback\n"},
		{ExecRequest{Argv: []string{"die-by-signal", "TERM"}}, 143, ""},
		{ExecRequest{Argv: []string{"die-by-signal", "KILL"}}, 137, ""},
		{ExecRequest{Argv: []string{"no-such-command"}}, 127, ""},
	} {
		code, out := run(t, f, tg, tc.req)
		if code != tc.code || out != tc.out {
			t.Errorf("%+v: got %d %q, want %d %q", tc.req, code, out, tc.code, tc.out)
		}
	}
}

func TestStdinAndStderr(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	tg := target(s)
	payload := strings.Repeat("line of stdin\n", 5000)
	code, out := run(t, f, tg, ExecRequest{Argv: []string{"cat"}, Stdin: strings.NewReader(payload)})
	if code != 0 || out != payload {
		t.Fatalf("cat: code %d, %d bytes back of %d", code, len(out), len(payload))
	}
	// No stdin: the remote sees EOF at once instead of hanging.
	if code, out := run(t, f, tg, ExecRequest{Argv: []string{"cat"}}); code != 0 || out != "" {
		t.Fatalf("cat without stdin: %d %q", code, out)
	}
	var errb bytes.Buffer
	code, _ = run(t, f, tg, ExecRequest{Argv: []string{"stderr", "oops"}, Stderr: &errb})
	if code != 0 || errb.String() != "oops\n" {
		t.Fatalf("stderr: %d %q", code, errb.String())
	}
	// No command and no TTY: the login shell reads the script from stdin.
	code, out = run(t, f, tg, ExecRequest{Stdin: strings.NewReader("echo from-shell\nexit 4\n")})
	if code != 4 || out != "from-shell\n" {
		t.Fatalf("shell: %d %q", code, out)
	}
}

// readyWriter signals once "ready" has been written.
type readyWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	ready chan struct{}
	once  sync.Once
}

func newReadyWriter() *readyWriter { return &readyWriter{ready: make(chan struct{})} }

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), "ready") {
		w.once.Do(func() { close(w.ready) })
	}
	return len(p), nil
}

func TestSignalsForwarded(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	tg := target(s)
	for _, sig := range []string{"INT", "TERM", "SIGHUP"} {
		sigs := make(chan string, 1)
		w := newReadyWriter()
		go func() {
			<-w.ready
			sigs <- sig
		}()
		code, err := f.pool.Exec(ctxT(t, 5*time.Second), tg, ExecRequest{Argv: []string{"sleep-until-signal"}, Stdout: w, Signals: sigs})
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(sig, "SIG")
		if want := 128 + sigNums[name]; code != want {
			t.Errorf("%s: code %d, want %d", sig, code, want)
		}
		if !slices.Contains(s.eventList(), "signal "+name) {
			t.Errorf("%s: server never got it: %v", sig, s.eventList())
		}
	}
}

func TestInterruptFallsBackToCtrlCWithTTY(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	s.refuseSignals = true
	sigs := make(chan string, 1)
	w := newReadyWriter()
	go func() {
		<-w.ready
		sigs <- "INT"
	}()
	code, err := f.pool.Exec(ctxT(t, 5*time.Second), target(s), ExecRequest{
		Argv: []string{"sleep-until-signal"}, Stdout: w, Signals: sigs, TTY: &TTY{Term: "xterm", Cols: 80, Rows: 24},
	})
	if err != nil {
		t.Fatal(err)
	}
	if code != 130 || !slices.Contains(s.eventList(), "ctrl-c") {
		t.Fatalf("code %d events %v, want 130 via ^C", code, s.eventList())
	}
}

func TestTTYAndResize(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	tg := target(s)
	code, out := run(t, f, tg, ExecRequest{Argv: []string{"winsize"}, TTY: &TTY{Term: "vt100", Cols: 100, Rows: 30}})
	if code != 0 || out != "vt100 100x30\n" {
		t.Fatalf("winsize: %d %q", code, out)
	}
	resize := make(chan Winsize, 1)
	resize <- Winsize{Cols: 120, Rows: 40}
	code, out = run(t, f, tg, ExecRequest{Argv: []string{"wait-winsize", "120x40"}, TTY: &TTY{}, Resize: resize})
	if code != 0 || out != "120x40\n" {
		t.Fatalf("resize: %d %q", code, out)
	}
}

func TestEnvAndDir(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	tg := target(s)
	hostile := "x y $(touch /tmp/pwned) `id` 'q' \"d\"\nnext"
	code, out := run(t, f, tg, ExecRequest{Command: "printenv A; pwd", Env: map[string]string{"A": hostile}, Dir: "/work/it's here"})
	if code != 0 || out != hostile+"\n/work/it's here\n" {
		t.Fatalf("got %d %q", code, out)
	}
	code, _ = run(t, f, tg, ExecRequest{Argv: []string{"pwd"}, Dir: "/nonexistent"})
	if code != 1 {
		t.Fatalf("cd into a missing dir: code %d, want 1", code)
	}
	for _, req := range []ExecRequest{
		{Argv: []string{"true"}, Command: "true"},
		{Argv: []string{"a\x00b"}},
		{Command: "true", Env: map[string]string{"A=B": "x"}},
		{Command: "true", Env: map[string]string{"1A": "x"}},
		{Command: "true", Env: map[string]string{"A B": "x"}},
		{Command: "true", Env: map[string]string{"A;rm": "x"}},
		{Command: "true", Env: map[string]string{"A": "x\x00"}},
		{Command: "true", Dir: "/a\x00b"},
	} {
		if _, err := f.pool.Exec(ctxT(t, 5*time.Second), tg, req); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%+v: err %v, want ErrInvalid", req, err)
		}
	}
}

func TestArgvRoundTripsThroughRemoteShell(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	args := hostileArgs()
	code, out := run(t, f, target(s), ExecRequest{Argv: append([]string{"argv"}, args...)})
	if code != 0 {
		t.Fatalf("code %d", code)
	}
	var want strings.Builder
	for _, a := range args {
		fmt.Fprintf(&want, "%q\n", a)
	}
	if out != want.String() {
		t.Fatalf("remote saw:\n%s\nwant:\n%s", out, want.String())
	}
}

func TestExecCancelledByContext(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newReadyWriter()
	go func() {
		<-w.ready
		cancel()
	}()
	start := time.Now()
	_, err := f.pool.Exec(ctx, target(s), ExecRequest{Argv: []string{"sleep-until-signal"}, Stdout: w})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("cancel took %v", d)
	}
	deadline := time.Now().Add(2 * time.Second)
	for !slices.Contains(s.eventList(), "signal TERM") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !slices.Contains(s.eventList(), "signal TERM") {
		t.Fatalf("remote not told: %v", s.eventList())
	}
}

func TestClientRespectsContextDuringHandshake(t *testing.T) {
	f := newFixture(t)
	// Accepts TCP and never speaks SSH: a guest whose sshd is wedged.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start := time.Now()
	_, err = f.pool.Client(ctxT(t, 300*time.Millisecond), Target{VMID: "vm1", Addr: ln.Addr().String()})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestWaitReadyRetriesUntilUp(t *testing.T) {
	f := newFixture(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens yet: connection refused
	time.AfterFunc(400*time.Millisecond, func() { startServer(t, addr, f.signer.PublicKey()) })
	start := time.Now()
	if err := f.pool.WaitReady(ctxT(t, 10*time.Second), Target{VMID: "vm1", Addr: addr}, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 350*time.Millisecond {
		t.Fatalf("ready after %v, before the server started", d)
	}
	// Timing out reports the context error and the last dial error.
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln2.Addr().String()
	ln2.Close()
	err = f.pool.WaitReady(ctxT(t, 300*time.Millisecond), Target{VMID: "vm2", Addr: dead}, 50*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("timeout err: %v", err)
	}
}

func TestWaitReadyFailsFastOnMismatch(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	_, other, _ := NewHostKey()
	if err := f.kh.Pin(s.addr, other); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := f.pool.WaitReady(ctxT(t, 10*time.Second), target(s), 50*time.Millisecond)
	if !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("err %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("mismatch took %v: it was retried", d)
	}
}

func TestShutdown(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	if err := f.pool.Shutdown(ctxT(t, 5*time.Second), target(s)); err != nil {
		t.Fatal(err)
	}
	want := []string{"sync", "systemctl --no-block poweroff"}
	deadline := time.Now().Add(2 * time.Second)
	for !slices.Equal(s.eventList(), want) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := s.eventList(); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

func TestPoolClosed(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	run(t, f, target(s), ExecRequest{Argv: []string{"true"}})
	f.pool.Close()
	if _, err := f.pool.Exec(ctxT(t, time.Second), target(s), ExecRequest{Argv: []string{"true"}}); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("err %v", err)
	}
	if err := f.pool.WaitReady(ctxT(t, time.Second), target(s), 10*time.Millisecond); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("WaitReady err %v", err)
	}
}
