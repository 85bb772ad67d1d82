package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

func TestDialManyConcurrentEchoes(t *testing.T) {
	c := pair(t, &Server{})
	port := service(t, echo)
	echoes(t, 50, func() (halfCloser, error) {
		conn, err := c.Dial(testCtx(t, 10*time.Second), port)
		if err != nil {
			return nil, err
		}
		return conn, nil
	})
}

func TestDialHalfClose(t *testing.T) {
	c := pair(t, &Server{})
	received := make(chan []byte, 1)
	// The service speaks first and closes its sending side at once, then
	// reads the host's bytes until the host's EOF.
	port := service(t, func(s *net.TCPConn) {
		_, _ = s.Write([]byte("hello"))
		_ = s.CloseWrite()
		b, _ := io.ReadAll(s)
		received <- b
	})
	conn, err := c.Dial(testCtx(t, 10*time.Second), port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if b, err := io.ReadAll(conn); err != nil || string(b) != "hello" {
		t.Fatalf("read %q %v, want the greeting then EOF", b, err)
	}
	// The guest's EOF left the other direction open.
	if _, err := conn.Write([]byte("after your eof")); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-received:
		if string(b) != "after your eof" {
			t.Fatalf("service got %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the service never saw the host's EOF")
	}
	if _, err := conn.Write([]byte("x")); !errors.Is(err, errWriteShut) {
		t.Fatalf("write after CloseWrite: %v", err)
	}

	// The other way round: the host's EOF reaches the service while the
	// service still answers.
	port = service(t, func(s *net.TCPConn) {
		b, _ := io.ReadAll(s)
		fmt.Fprintf(s, "got %d bytes", len(b))
	})
	conn2, err := c.Dial(testCtx(t, 10*time.Second), port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if got, err := roundTrip(conn2, bytes.Repeat([]byte("a"), 100000)); err != nil || string(got) != "got 100000 bytes" {
		t.Fatalf("answer after the host's EOF: %q %v", got, err)
	}
}

func TestDialRefused(t *testing.T) {
	c := pair(t, &Server{})
	port := closedPort(t)
	start := time.Now()
	_, err := c.Dial(testCtx(t, 10*time.Second), port)
	if !errors.Is(err, ErrDial) || !strings.Contains(err.Error(), fmt.Sprintf("guest port %d:", port)) ||
		!strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial of a closed port: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("refusal took %v", d)
	}
	// The session is fine afterwards.
	if _, err := c.Info(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{0, -1, 65536} {
		if _, err := c.Dial(testCtx(t, 5*time.Second), p); !errors.Is(err, ErrInvalidPort) {
			t.Errorf("port %d: %v", p, err)
		}
	}
	// The agent checks the port too.
	cl, err := c.open(testCtx(t, 5*time.Second), request{Op: opDial, Port: 70000})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.close()
	if err := cl.result(nil, nil, nil); err == nil || !strings.Contains(err.Error(), "port 70000: want 1-65535") {
		t.Fatalf("agent on port 70000: %v", err)
	}
}

func TestDialOldAgent(t *testing.T) {
	c, streams := fakeOldAgent(t, "1.1")
	_, err := c.Dial(testCtx(t, 10*time.Second), 80)
	if !errors.Is(err, ErrAgentTooOld) || err.Error() != "agent dial: guest agent too old for forward (protocol 1.1)" {
		t.Fatalf("err = %v", err)
	}
	if n := streams.Load(); n != 0 {
		t.Fatalf("%d streams opened to a 1.1 agent", n)
	}
	// One that claims 1.2 but lacks the operation says the same.
	c, _ = fakeOldAgent(t, "1.2")
	if _, err := c.Dial(testCtx(t, 10*time.Second), 80); !errors.Is(err, ErrAgentTooOld) ||
		err.Error() != "agent dial: guest agent too old for forward (protocol 1.2)" {
		t.Fatalf("err = %v", err)
	}
}

// TestDialAbort: the host closing the connection early closes the guest's
// socket; the guest service's reset is an error, not an EOF, on the host.
func TestDialAbort(t *testing.T) {
	c := pair(t, &Server{})
	closed := make(chan error, 1)
	port := service(t, func(s *net.TCPConn) {
		_, _ = s.Write([]byte("x"))
		_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, s)
		closed <- err
	})
	conn, err := c.Dial(testCtx(t, 10*time.Second), port)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("service read: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the guest socket stayed open after the host closed")
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("read after Close succeeded")
	}

	port = service(t, func(s *net.TCPConn) {
		_, _ = s.Read(make([]byte, 1)) // once the agent's connect is through
		_, _ = s.Write([]byte("partial"))
		_ = s.SetLinger(0) // RST
	})
	conn, err = c.Dial(testCtx(t, 10*time.Second), port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("go")); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(conn)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("guest port %d: connection failed in the guest", port)) {
		t.Fatalf("a reset service read as %q %v, want an error", b, err)
	}
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// stalls waits until n stops growing and returns its value.
func stalls(t *testing.T, n *atomic.Int64) int64 {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	last := int64(-1)
	for time.Now().Before(deadline) {
		time.Sleep(300 * time.Millisecond)
		cur := n.Load()
		if cur == last && cur > 0 {
			return cur
		}
		last = cur
	}
	t.Fatalf("still moving after 20 s: %d bytes", n.Load())
	return 0
}

// TestDialBounded: a peer that never reads stalls the other side within a
// window; nothing buffers without bound, either way.
func TestDialBounded(t *testing.T) {
	c := pair(t, &Server{})
	before := heapInUse()

	// A guest service that never reads: the host's writes block.
	hold := make(chan struct{})
	defer close(hold)
	port := service(t, func(s *net.TCPConn) { <-hold })
	conn, err := c.Dial(testCtx(t, 10*time.Second), port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var sent atomic.Int64
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			n, err := conn.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	n := stalls(t, &sent)
	// The yamux window (1 MiB), a frame, and the kernel's socket buffers on
	// loopback (a few MiB) — not the 64 KiB writes forever.
	if n > 32<<20 {
		t.Fatalf("%d MiB accepted for a service that never reads", n>>20)
	}
	if grown := int64(heapInUse()) - int64(before); grown > 8<<20 {
		t.Fatalf("heap grew %d MiB holding a stalled connection", grown>>20)
	}
	t.Logf("host→guest stalled after %d KiB", n>>10)

	// A host that never reads: the guest service's writes block.
	var written atomic.Int64
	port = service(t, func(s *net.TCPConn) {
		chunk := make([]byte, 64<<10)
		for {
			n, err := s.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	conn2, err := c.Dial(testCtx(t, 10*time.Second), port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	n = stalls(t, &written)
	if n > 32<<20 {
		t.Fatalf("%d MiB written by the service to a host that never reads", n>>20)
	}
	if grown := int64(heapInUse()) - int64(before); grown > 8<<20 {
		t.Fatalf("heap grew %d MiB holding stalled connections", grown>>20)
	}
	t.Logf("guest→host stalled after %d KiB", n>>10)
}

// TestDialHostileAgent: after 'S' a guest's frames are checked like any
// other: over-size, unknown or out-of-place frames end the connection with
// ErrProtocol, before anything is allocated for them.
func TestDialHostileAgent(t *testing.T) {
	cases := []struct {
		name  string
		frame []byte
	}{
		{"huge output", header(frameOutput, 1<<31)},
		{"unknown type", header('Z', 1)},
		{"a second start", header(frameStarted, 0)},
		{"stderr", header(frameStderr, 1)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialAgent(t, func(st *yamux.Stream) {
				st.Write(header(frameStarted, 0))
				st.Write(tc.frame)
				st.Write(make([]byte, 64<<10))
			})
			conn, err := c.Dial(testCtx(t, 10*time.Second), 80)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			before := totalAlloc()
			_, err = io.ReadAll(conn)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v, want ErrProtocol", err)
			}
			if a := totalAlloc() - before; a > 4<<20 {
				t.Fatalf("allocated %d MiB on a hostile frame", a>>20)
			}
		})
	}
	t.Run("junk before the start", func(t *testing.T) {
		c := dialAgent(t, func(st *yamux.Stream) { st.Write(header(frameOutput, 3)); st.Write([]byte("abc")) })
		if _, err := c.Dial(testCtx(t, 10*time.Second), 80); !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v, want ErrProtocol", err)
		}
	})
	t.Run("error text", func(t *testing.T) {
		c := dialAgent(t, func(st *yamux.Stream) {
			(&frameWriter{w: st}).writeJSON(frameError, errorMsg{Message: "\x1b]0;owned\x07" + strings.Repeat("x", 5000)})
		})
		_, err := c.Dial(testCtx(t, 10*time.Second), 8080)
		if !errors.Is(err, ErrDial) || strings.ContainsAny(err.Error(), "\x1b\x07") || len(err.Error()) > 1200 ||
			!strings.HasPrefix(err.Error(), "agent dial: guest port 8080: ") {
			t.Fatalf("error %q", err)
		}
	})
}

// dialAgent is a fake 1.2 agent that reads each stream's request and then
// runs serve.
func dialAgent(t *testing.T, serve func(st *yamux.Stream)) *Client {
	return fakeAgent(t, "1.2", "evil", func(st *yamux.Stream) {
		if _, _, err := newFrameReader(st).next(); err != nil {
			return
		}
		serve(st)
		time.Sleep(time.Second) // leave the host to read what was sent
	})
}

// FuzzDialFrames: whatever a guest sends on a connected dial stream, the
// host gets only payloads of output frames (within the data limit) as
// bytes, and an end that is EOF, a protocol error, or the guest's failure
// as printable text of bounded length.
func FuzzDialFrames(f *testing.F) {
	f.Add([]byte{'O', 0, 0, 0, 1, 'x', 'R', 0, 0, 0, 2, '{', '}'})
	f.Add([]byte{'O', 0, 0, 0, 2, 'h', 'i', 'X', 0, 0, 0, 16, '{', '"', 'm', 'e', 's', 's', 'a', 'g', 'e', '"', ':', '"', 0x1b, 'x', '"', '}'})
	f.Add([]byte{'S', 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := newFrameReader(bytesReader(b))
		fr.alloc = forwardChunk
		for {
			typ, p, err := fr.next()
			if err != nil {
				return
			}
			data, end := dialFrame(8080, typ, p)
			switch {
			case end == nil:
				if typ != frameOutput || len(data) > MaxData {
					t.Fatalf("frame %q gave %d bytes of data", typ, len(data))
				}
			case end == io.EOF, errors.Is(end, ErrProtocol):
				if data != nil {
					t.Fatal("data with an end")
				}
				return
			default:
				msg := end.Error()
				if typ != frameError || !strings.HasPrefix(msg, "agent dial: guest port 8080: ") || len(msg) > 1200 {
					t.Fatalf("end %q from frame %q", msg, typ)
				}
				for i := 0; i < len(msg); i++ {
					if msg[i] < ' ' || msg[i] >= 0x7f {
						t.Fatalf("unprintable byte in %q", msg)
					}
				}
				return
			}
		}
	})
}
