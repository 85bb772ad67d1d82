package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/daemon"
	"github.com/banger-dev/banger/internal/forward"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
)

// directVMs stands in for the VM service: one running VM "web", whose
// "loopback" is the test's own.
type directVMs struct{}

func (directVMs) Running(ctx context.Context, name string) (string, string, error) {
	if name != "web" {
		return "", "", fmt.Errorf("vm %q: %w", name, api.ErrNotFound)
	}
	return "id-web", "web", nil
}

func (directVMs) Alive(id string) bool { return id == "id-web" }

func (directVMs) Dial(ctx context.Context, id string, port int) (forward.Conn, func(), error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, nil, err
	}
	return c.(*net.TCPConn), func() {}, nil
}

// forwardDaemon serves the daemon's real vm.forward handlers over a real
// forward manager.
func forwardDaemon(t *testing.T) (string, *forward.Manager) {
	t.Helper()
	dir := t.TempDir()
	m := forward.New(forward.Deps{VMs: directVMs{}})
	srv := rpc.NewServer(nil, os.Getuid())
	daemon.Register(srv, daemon.Deps{Forwards: m})
	ln, err := rpc.Listen(paths.Layout{Root: dir}.Socket())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		m.Close()
		cancel()
		<-errc
	})
	return dir, m
}

func echoService(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestVMForwardCtrlC: the foreground command prints the address, carries
// connections, and on Ctrl-C stops the forward in the daemon and says so
// (exit 0); nothing listens afterwards.
func TestVMForwardCtrlC(t *testing.T) {
	dir, m := forwardDaemon(t)
	port := echoService(t)
	pr, pw := io.Pipe()
	var errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main([]string{"--state-dir", dir, "--no-autostart", "vm", "forward", "web", fmt.Sprint(port), "--local", "127.0.0.1:0"},
			strings.NewReader(""), pw, &errb)
		pw.Close()
	}()
	br := bufio.NewReader(pr)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("no first line: %v (stderr %q)", err, errb.String())
	}
	mt := regexp.MustCompile(fmt.Sprintf(`^forwarding (127\.0\.0\.1:\d+) -> web:%d \(Ctrl-C to stop\)\n$`, port)).FindStringSubmatch(line)
	if mt == nil {
		t.Fatalf("first line %q", line)
	}
	addr := mt[1]
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "ping")
	if b := make([]byte, 4); func() bool { _, err := io.ReadFull(c, b); return err != nil || string(b) != "ping" }() {
		t.Fatal("no echo through the forward")
	}
	c.Close()
	if fs := m.List("id-web"); len(fs) != 1 || fs[0].Detached {
		t.Fatalf("daemon's forwards %+v", fs)
	}

	// Ctrl-C.
	restc := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(br); restc <- b }()
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	var code int
	select {
	case code = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the command did not end after Ctrl-C")
	}
	rest := <-restc
	if code != 0 || string(rest) != fmt.Sprintf("stopped %s -> web:%d (1 connections, 0 failed)\n", addr, port) {
		t.Fatalf("after Ctrl-C: exit %d, stdout %q, stderr %q", code, rest, errb.String())
	}
	// The daemon had stopped it before it answered.
	if _, err := net.DialTimeout("tcp", addr, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("after Ctrl-C a connection to %s: %v, want refused", addr, err)
	}
	if fs := m.List("id-web"); len(fs) != 0 {
		t.Fatalf("forwards left in the daemon: %+v", fs)
	}
}

// TestVMForwardDetachAndStop: --detach returns with the forward in the
// daemon; --stop ends it; a failed connection of a foreground forward is
// reported on stderr.
func TestVMForwardDetachAndStop(t *testing.T) {
	dir, m := forwardDaemon(t)
	port := echoService(t)
	code, out, errs := run(t, dir, "", "vm", "forward", "web", fmt.Sprint(port), "--local", "127.0.0.1:0", "--detach")
	mt := regexp.MustCompile(fmt.Sprintf(`^forwarding (127\.0\.0\.1:\d+) -> web:%d \(stop with: banger vm forward --stop web %d\)\n$`, port, port)).FindStringSubmatch(out)
	if code != 0 || mt == nil {
		t.Fatalf("--detach: exit %d stdout %q stderr %q", code, out, errs)
	}
	if fs := m.List("id-web"); len(fs) != 1 || !fs[0].Detached || fs[0].Local != mt[1] {
		t.Fatalf("daemon's forwards %+v", fs)
	}
	code, out, errs = run(t, dir, "", "vm", "forward", "--stop", "web", fmt.Sprint(port))
	if code != 0 || out != fmt.Sprintf("stopped %s -> web:%d\n", mt[1], port) {
		t.Fatalf("--stop: exit %d stdout %q stderr %q", code, out, errs)
	}
	if _, err := net.DialTimeout("tcp", mt[1], time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("after --stop: %v, want refused", err)
	}
	code, _, errs = run(t, dir, "", "vm", "forward", "--stop", "web", fmt.Sprint(port))
	if code != 1 || !strings.Contains(errs, "no forward of guest port") || !strings.Contains(errs, "not_found") {
		t.Fatalf("--stop of nothing: exit %d stderr %q", code, errs)
	}
	for _, args := range [][]string{
		{"vm", "forward", "web", "0"},
		{"vm", "forward", "web", "http"},
		{"vm", "forward", "web", "80", "--local", "0.0.0.0:8080"},
		{"vm", "forward", "--stop", "web", "80", "--detach"},
	} {
		if code, _, errs := run(t, dir, "", args...); code != 1 || !strings.Contains(errs, "invalid") {
			t.Errorf("%v: exit %d stderr %q, want refused as invalid", args, code, errs)
		}
	}
}

// syncBuffer collects a writer's output for a concurrent reader.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
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
