package agent

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Harness is agenttest's harness (socket pairs, a real agent with its
// client, loopback services), the one the host side's tests run. Package
// agent cannot import agenttest (it imports agent), so harness_ext_test.go,
// in package agent_test, sets these before any test runs.
var Harness struct {
	SocketPair func(testing.TB) (net.Conn, net.Conn)
	Start      func(testing.TB, *Server) *Client
	Service    func(testing.TB, func(c *net.TCPConn)) int
	Echo       func(c *net.TCPConn)
	ClosedPort func(testing.TB) int
	RoundTrip  func(c halfCloser, payload []byte) ([]byte, error)
	Echoes     func(t testing.TB, conns int, dial func() (halfCloser, error))
}

// halfCloser is agenttest.HalfCloser.
type halfCloser = interface {
	io.ReadWriteCloser
	CloseWrite() error
}

// socketPair is an in-kernel byte stream, the closest stand-in for a
// virtio-serial port or a vsock connection.
func socketPair(t *testing.T) (net.Conn, net.Conn) { t.Helper(); return Harness.SocketPair(t) }

// pair starts srv on one end of a socket pair and returns a client on the
// other; both are torn down when the test ends.
func pair(t *testing.T, srv *Server) *Client { t.Helper(); return Harness.Start(t, srv) }

// service listens on 127.0.0.1 (the "guest's" loopback: the agent under
// test runs in this process) and runs handle for every connection.
func service(t *testing.T, handle func(c *net.TCPConn)) int {
	t.Helper()
	return Harness.Service(t, handle)
}

// echo copies input back and half-closes at its end.
func echo(c *net.TCPConn) { Harness.Echo(c) }

// closedPort is a port nothing listens on.
func closedPort(t *testing.T) int { t.Helper(); return Harness.ClosedPort(t) }

// roundTrip sends payload, half-closes, and returns all that comes back;
// after 30 s it gives up (closes c).
func roundTrip(c *Conn, payload []byte) ([]byte, error) { return Harness.RoundTrip(c, payload) }

// echoes round-trips a random payload on each of conns connections from dial
// at once, to an echo; each failure is a t.Error.
func echoes(t *testing.T, conns int, dial func() (halfCloser, error)) {
	t.Helper()
	Harness.Echoes(t, conns, dial)
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// syncBuffer is a bytes.Buffer safe for a writer and a polling reader.
type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
