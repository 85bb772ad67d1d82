//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// echoPL is the guest's service: an echo server on 127.0.0.1:7000 only (the
// guest network cannot reach it), one process per connection, which
// half-closes once the client has.
const echoPL = `use strict; use IO::Socket::INET;
$SIG{CHLD} = 'IGNORE';
my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 7000, Listen => 256, ReuseAddr => 1) or die "listen: $!";
while (1) {
  my $c = $s->accept or next;
  my $pid = fork;
  if (!defined $pid) { close $c; next }
  if ($pid == 0) {
    close $s;
    my $buf;
    while (1) {
      my $n = sysread($c, $buf, 65536);
      last if !$n;
      my $off = 0;
      while ($off < $n) { my $w = syswrite($c, $buf, $n - $off, $off); exit 1 if !defined $w; $off += $w }
    }
    shutdown($c, 1);
    exit 0;
  }
  close $c;
}
`

// TestForward: `vm forward` reaches a service bound to the guest's loopback
// through the agent: many connections at once, each echoed byte for byte
// across half-closes; Ctrl-C stops the foreground forward and leaves no
// listener; a detached forward, and a foreground one, end when the VM is
// deleted; a closed guest port resets the client's connection.
func TestForward(t *testing.T) {
	const name = "fwd"
	deleteOnCleanup(t, name)
	must(t, "vm", "create", "--name", name)

	put := E.cmd("vm", "exec", name, "--", "cat > /root/echo.pl")
	put.Stdin = strings.NewReader(echoPL)
	if out, err := put.CombinedOutput(); err != nil {
		t.Fatalf("writing the service: %v %s", err, out)
	}
	must(t, "vm", "exec", name, "--", "systemd-run --unit fwd-echo /usr/bin/perl /root/echo.pl")
	// vm ports shows it, with the forward command as its hint.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := must(t, "vm", "ports", name)
		if regexp.MustCompile(`(?m)^tcp\s+127\.0\.0\.1\s+7000\s+perl\s+banger vm forward fwd 7000\s*$`).MatchString(out) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest service does not show in vm ports:\n%s", out)
		}
		time.Sleep(300 * time.Millisecond)
	}

	// Foreground: many connections, then Ctrl-C.
	fg, addr := startForward(t, name, "7000")
	echoes(t, addr, 50)
	if err := fg.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := fg.wait(t); err != nil {
		t.Fatalf("vm forward after Ctrl-C: %v (stderr %s)", err, fg.stderr.String())
	}
	if want := fmt.Sprintf("stopped %s -> fwd:7000 (50 connections, 0 failed)\n", addr); fg.rest != want {
		t.Fatalf("vm forward said %q after Ctrl-C, want %q", fg.rest, want)
	}
	assertNoListener(t, addr)

	// A closed guest port: the client's connection is reset, the forward
	// stays and says why.
	out := must(t, "vm", "forward", name, "7001", "--local", "127.0.0.1:0", "--detach")
	closedAddr := parseForward(t, out)
	inNS(t, E.ns, func() {
		c, err := net.DialTimeout("tcp", closedAddr, 5*time.Second)
		if err != nil {
			if errors.Is(err, syscall.ECONNRESET) {
				return
			}
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if b, err := io.ReadAll(c); len(b) != 0 || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("a connection to a closed guest port read %q, %v; want a reset", b, err)
		}
	})
	var v struct {
		Forwards []struct {
			Local                string
			LastError            string `json:"last_error"`
			GuestPort            int    `json:"guest_port"`
			Detached             bool
			Served, Failed, Open int64
		}
	}
	if err := json.Unmarshal([]byte(must(t, "vm", "show", name, "--json")), &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Forwards) != 1 || v.Forwards[0].GuestPort != 7001 || v.Forwards[0].Failed != 1 || !v.Forwards[0].Detached ||
		!strings.Contains(v.Forwards[0].LastError, "guest port 7001") || !strings.Contains(v.Forwards[0].LastError, "refused") {
		t.Fatalf("vm show forwards: %+v", v.Forwards)
	}
	must(t, "vm", "forward", "--stop", name, "7001")
	assertNoListener(t, closedAddr)

	// Detached, and a foreground one beside it: both end with the VM.
	out = must(t, "vm", "forward", name, "7000", "--local", "127.0.0.1:0", "--detach")
	detAddr := parseForward(t, out)
	echoes(t, detAddr, 5)
	fg2, fgAddr := startForward(t, name, "7000")
	echoes(t, fgAddr, 5)
	if show := must(t, "vm", "show", name); !strings.Contains(show, detAddr+" -> 7000 (detached; 0 open, 5 served, 0 failed)") ||
		!strings.Contains(show, fgAddr+" -> 7000 (foreground;") {
		t.Fatalf("vm show does not list the forwards:\n%s", show)
	}
	must(t, "vm", "delete", "--force", name)
	assertNoListener(t, detAddr)
	assertNoListener(t, fgAddr)
	if err := fg2.wait(t); err == nil || !strings.Contains(fg2.stderr.String(), `vm "fwd" stopped`) {
		t.Fatalf("foreground forward at the VM's delete: %v, stderr %q", err, fg2.stderr.String())
	}
}

// fwdCmd is a foreground `vm forward`.
type fwdCmd struct {
	cmd    *exec.Cmd
	stdout *bufio.Reader
	stderr *bytes.Buffer
	rest   string // stdout after the first line, once it exited
}

var forwardLine = regexp.MustCompile(`^forwarding (127\.0\.0\.1:\d+) -> `)

func parseForward(t *testing.T, line string) string {
	t.Helper()
	m := forwardLine.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("vm forward printed %q", line)
	}
	return m[1]
}

// startForward starts a foreground forward to the guest port on a free
// local port and returns once it listens.
func startForward(t *testing.T, name, port string) (*fwdCmd, string) {
	t.Helper()
	f := &fwdCmd{cmd: E.cmd("vm", "forward", name, port, "--local", "127.0.0.1:0"), stderr: &bytes.Buffer{}}
	f.cmd.Stderr = f.stderr
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.cmd.Process.Kill(); _ = f.cmd.Wait() })
	f.stdout = bufio.NewReader(out)
	lc := make(chan string, 1)
	go func() { l, _ := f.stdout.ReadString('\n'); lc <- l }()
	select {
	case l := <-lc:
		return f, parseForward(t, l)
	case <-time.After(30 * time.Second):
		t.Fatalf("vm forward printed nothing in 30 s (stderr %s)", f.stderr.String())
	}
	return nil, ""
}

// wait waits (at most 30 s) for the command to exit and keeps the rest of
// its stdout.
func (f *fwdCmd) wait(t *testing.T) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		b, _ := io.ReadAll(f.stdout)
		f.rest = string(b)
		done <- f.cmd.Wait()
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("vm forward did not exit (stderr %s)", f.stderr.String())
	}
	return nil
}

// echoes opens n connections to addr (in the test's namespace, where the
// daemon listens) at once, sends each its own random payload, half-closes
// and checks what comes back, sha by sha.
func echoes(t *testing.T, addr string, n int) {
	t.Helper()
	conns := make([]net.Conn, n)
	inNS(t, E.ns, func() {
		for i := range conns {
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				t.Fatalf("connection %d to %s: %v", i, addr, err)
			}
			conns[i] = c
		}
	})
	t0 := time.Now()
	var wg sync.WaitGroup
	var total int64
	var mu sync.Mutex
	for i, c := range conns {
		wg.Go(func() {
			defer c.Close()
			payload := make([]byte, mrand.IntN(256<<10)+1)
			_, _ = rand.Read(payload)
			mu.Lock()
			total += int64(len(payload))
			mu.Unlock()
			_ = c.SetDeadline(time.Now().Add(120 * time.Second))
			go func() {
				if _, err := c.Write(payload); err == nil {
					_ = c.(*net.TCPConn).CloseWrite()
				}
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("connection %d: %v after %d bytes", i, err, len(got))
				return
			}
			if sha256.Sum256(got) != sha256.Sum256(payload) {
				t.Errorf("connection %d: %d bytes back for %d sent, or different ones", i, len(got), len(payload))
			}
		})
	}
	wg.Wait()
	t.Logf("%d connections, %d KiB each way, in %.1fs", n, total>>10, time.Since(t0).Seconds())
	if t.Failed() {
		t.FailNow()
	}
}

// assertNoListener checks that nothing listens on addr in the namespace.
func assertNoListener(t *testing.T, addr string) {
	t.Helper()
	out, err := run("ip", "netns", "exec", E.ns, "ss", "-H", "-l", "-n", "-t")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[3] == addr {
			t.Fatalf("%s still listens:\n%s", addr, out)
		}
	}
	inNS(t, E.ns, func() {
		if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			c.Close()
			t.Fatalf("a connection to %s was accepted", addr)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("connection to %s: %v, want refused", addr, err)
		}
	})
}
