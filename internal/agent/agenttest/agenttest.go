// Package agenttest runs a real in-process guest agent for tests of the host
// side, as net/http/httptest runs a real HTTP server: the agent.Server is the
// guest's own code, served on one end of an in-kernel socket pair (the closest
// stand-in for a virtio-serial port or a vsock connection), and the "guest's"
// loopback is the test process's own. Service puts something on that loopback
// for the agent to dial.
//
// Package agent's internal tests use it too, through a hook set by its
// external test package (agent cannot import agenttest, which imports agent).
package agenttest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
)

// SocketPair returns the two ends of a connected AF_UNIX stream socket pair.
func SocketPair(t testing.TB) (host, guest net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

// Start serves srv (its fields are the guest's configuration: session and
// identity roots, test seams) on the guest end of a socket pair and returns
// the host's client on the other. When the test ends the client is closed,
// and ServeConn must return within 10 s.
func Start(t testing.TB, srv *agent.Server) *agent.Client {
	t.Helper()
	host, guest := SocketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeConn(ctx, guest) }()
	hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
	defer hcancel()
	c, err := agent.NewClient(hctx, host, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("ServeConn did not return after the client closed")
		}
	})
	return c
}

// Service listens on 127.0.0.1 (the in-process agent's loopback) and runs
// handle for every connection, closing it after; it returns the port. When
// the test ends the listener and any connection left open are closed and
// every handler has returned.
func Service(t testing.TB, handle func(c *net.TCPConn)) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range open { // a failed test may leave them
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(open, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c.(*net.TCPConn))
			})
		}
	})
	return ln.Addr().(*net.TCPAddr).Port
}

// Echo is a Service handler: it copies input back and half-closes at its end.
func Echo(c *net.TCPConn) {
	if _, err := io.Copy(c, c); err == nil {
		_ = c.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, c)
}

// ClosedPort is a port on 127.0.0.1 nothing listens on.
func ClosedPort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// HalfCloser is a connection whose sending side closes on its own, as
// *agent.Conn and *net.TCPConn do. It is an alias so that package agent's
// internal tests can spell the same type without importing agenttest.
type HalfCloser = interface {
	io.ReadWriteCloser
	CloseWrite() error
}

// RoundTrip sends payload, half-closes, and returns all that comes back;
// after 30 s it gives up (closes c).
func RoundTrip(c HalfCloser, payload []byte) ([]byte, error) {
	watchdog := time.AfterFunc(30*time.Second, func() { c.Close() })
	defer watchdog.Stop()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := <-werr; err != nil {
		return got, err
	}
	return got, rerr
}

// Echoes opens conns connections with dial at once, each to an Echo, and
// round-trips a random payload of up to 1 MiB on each (the first one empty
// at times); a failure or a reply that is not the payload is a t.Error.
func Echoes(t testing.TB, conns int, dial func() (HalfCloser, error)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		wg.Go(func() {
			payload := make([]byte, mrand.IntN(1<<20)+i)
			_, _ = rand.Read(payload)
			conn, err := dial()
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			got, err := RoundTrip(conn, payload)
			if err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
				return
			}
			if sha256.Sum256(got) != sha256.Sum256(payload) {
				errs <- fmt.Errorf("conn %d: %d bytes back for %d sent, or different ones", i, len(got), len(payload))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
