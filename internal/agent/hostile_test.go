package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// fakeHandshake answers the host's hello on guest as an agent of protocol
// proto and build version; the reader holds what the host sends after it.
func fakeHandshake(t *testing.T, guest net.Conn, proto, version string) *bufio.Reader {
	br := bufio.NewReader(guest)
	nonce := readHello(t, br)
	fmt.Fprintf(guest, "BANGER-AGENT-OK %s %s %s\n", proto, nonce, version)
	return br
}

// fakeSession is fakeHandshake and then the agent's end of the session; nil
// if that failed.
func fakeSession(t *testing.T, guest net.Conn, proto, version string) *yamux.Session {
	br := fakeHandshake(t, guest, proto, version)
	sess, err := yamux.Server(&bufConn{Conn: guest, r: br}, yamuxConfig(nil, 16))
	if err != nil {
		return nil
	}
	return sess
}

// fakeClient runs fake on the guest end of a socket pair and returns the
// host's client on the other; both ends are closed when the test ends.
func fakeClient(t *testing.T, fake func(guest net.Conn)) *Client {
	host, guest := socketPair(t)
	t.Cleanup(func() { guest.Close() })
	go fake(guest)
	c, err := NewClient(testCtx(t, 10*time.Second), host, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fakeAgent is a client of a fake agent of protocol proto and build version
// that runs serve on every stream the host opens, each in its own goroutine
// and closed after.
func fakeAgent(t *testing.T, proto, version string, serve func(st *yamux.Stream)) *Client {
	return fakeClient(t, func(guest net.Conn) {
		sess := fakeSession(t, guest, proto, version)
		if sess == nil {
			return
		}
		for {
			st, err := sess.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				serve(st)
			}()
		}
	})
}

// hostileClient is a client of a fake 1.0 agent that reads each stream's
// request (and reports an exec started) and then runs serve.
func hostileClient(t *testing.T, serve func(st *yamux.Stream)) *Client {
	return fakeAgent(t, "1.0", "evil", func(st *yamux.Stream) {
		_, p, err := newFrameReader(st).next() // the request
		if err != nil {
			return
		}
		// An exec is started: what follows is the hostile part.
		var req request
		if json.Unmarshal(p, &req) == nil && req.Op == opExec {
			_ = (&frameWriter{w: st}).write(frameStarted, nil)
		}
		serve(st)
	})
}

func header(t byte, n uint32) []byte {
	h := []byte{t, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(h[1:], n)
	return h
}

func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

func TestHostileAgent(t *testing.T) {
	cases := []struct {
		name  string
		frame []byte
	}{
		{"huge output frame", header(frameOutput, 1<<31)},
		{"max length", header(frameStderr, 1<<32-1)},
		{"10 MiB result", header(frameResult, 10<<20)},
		{"unknown type", header('Z', 1)},
		{"input from the agent", header(frameRequest, 2)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := hostileClient(t, func(st *yamux.Stream) {
				st.Write(tc.frame)
				st.Write(make([]byte, 64<<10)) // some of the claimed payload
			})
			before := totalAlloc()
			start := time.Now()
			_, err := c.Exec(testCtx(t, 10*time.Second), ExecRequest{Command: "true"})
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v, want ErrProtocol", err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("took %v", d)
			}
			if a := totalAlloc() - before; a > 4<<20 {
				t.Fatalf("allocated %d MiB on a hostile frame", a>>20)
			}
		})
	}

	t.Run("endless output into a failing writer", func(t *testing.T) {
		c := hostileClient(t, func(st *yamux.Stream) {
			fw := &frameWriter{w: st}
			chunk := make([]byte, MaxData)
			for fw.write(frameOutput, chunk) == nil {
			}
		})
		start := time.Now()
		_, err := c.Exec(testCtx(t, 10*time.Second), ExecRequest{Command: "yes", Stdout: &failWriter{n: 4 << 20}})
		if !errors.Is(err, errFull) || time.Since(start) > 3*time.Second {
			t.Fatalf("error %v after %v", err, time.Since(start))
		}
		// And a Get into a limited writer likewise.
		err = c.Get(testCtx(t, 10*time.Second), "/x", &failWriter{n: 4 << 20})
		if !errors.Is(err, errFull) {
			t.Fatalf("get error %v", err)
		}
	})

	t.Run("ports over the limit", func(t *testing.T) {
		c := hostileClient(t, func(st *yamux.Stream) {
			fw := &frameWriter{w: st}
			fw.write(frameOutput, []byte("["))
			entry := []byte(`{"proto":"tcp","addr":"1.2.3.4","port":1},`)
			for i := 0; i < 1<<20/len(entry)+1; i++ {
				if fw.write(frameOutput, entry) != nil {
					return
				}
			}
		})
		_, err := c.Ports(testCtx(t, 10*time.Second))
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v", err)
		}
	})

	t.Run("bad values", func(t *testing.T) {
		replies := map[string]string{
			"stats":  `{"mem_total":1,"mem_available":2}`,
			"stats2": `{"load1":-1}`,
			"stats3": `{"ssh":{"count":-1}}`,
			"stats4": `{"ssh":{"count":1,"peers":["10.0.0.1:1","10.0.0.2:2"]}}`,
			"stats5": `{"ssh":{"count":1,"peers":["10.0.0.1:1\u001b[2J"]}}`,
			"stats6": `{"ssh":{"count":2000000}}`,
			"stats7": `{"session_output_age":-2}`,
			"stats8": `{"session_output_age":99999999999}`,
			"info":   `{"hostname":"a\u001b[31m"}`,
			"exec":   `{"exit_code":-1}`,
			"ports":  `[{"proto":"tcp","addr":"not an ip","port":1}]`,
			"ports2": `[{"proto":"sctp","addr":"::","port":1}]`,
		}
		for name, reply := range replies {
			c := hostileClient(t, func(st *yamux.Stream) {
				fw := &frameWriter{w: st}
				if name[:4] == "port" {
					fw.write(frameOutput, []byte(reply))
					fw.write(frameResult, []byte("{}"))
					return
				}
				fw.write(frameResult, []byte(reply))
			})
			ctx := testCtx(t, 10*time.Second)
			var err error
			switch name {
			case "stats", "stats2", "stats3", "stats4", "stats5", "stats6", "stats7", "stats8":
				_, err = c.Stats(ctx)
			case "info":
				_, err = c.Info(ctx)
			case "exec":
				_, err = c.Exec(ctx, ExecRequest{Command: "true"})
			default:
				_, err = c.Ports(ctx)
			}
			if !errors.Is(err, ErrProtocol) {
				t.Errorf("%s: error %v, want ErrProtocol", name, err)
			}
		}
	})

	t.Run("stream without result", func(t *testing.T) {
		c := hostileClient(t, func(st *yamux.Stream) {})
		if _, err := c.Info(testCtx(t, 10*time.Second)); !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v", err)
		}
	})
}

func TestAgentOpenedStreamEndsSession(t *testing.T) {
	c := fakeClient(t, func(guest net.Conn) {
		sess := fakeSession(t, guest, "1.0", "evil")
		if sess == nil {
			return
		}
		st, err := sess.OpenStream()
		if err == nil {
			st.Write([]byte("hello"))
		}
	})
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session survived a stream opened by the agent")
	}
}

func TestDoneWhenGuestGoes(t *testing.T) {
	host, guest := socketPair(t)
	errc := make(chan error, 1)
	go func() { errc <- (&Server{}).ServeConn(testCtx(t, 10*time.Second), guest) }()
	c, err := NewClient(testCtx(t, 10*time.Second), host, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Info(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	guest.Close()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the guest end closed")
	}
	if _, err := c.Info(testCtx(t, 10*time.Second)); err == nil {
		t.Fatal("Info on a dead session succeeded")
	}
	<-errc
}

func FuzzFrameReader(f *testing.F) {
	f.Add([]byte{'O', 0, 0, 0, 1, 'x', 'R', 0, 0, 0, 2, '{', '}'})
	f.Add([]byte{'R', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := newFrameReader(bytesReader(b))
		for {
			typ, p, err := fr.next()
			if err != nil {
				return
			}
			if l := frameLimit(typ); l < 0 || len(p) > l {
				t.Fatalf("frame %q of %d bytes accepted", typ, len(p))
			}
		}
	})
}

// TestPingFloodEndsSession: an agent writing ping SYNs without reading the
// replies must not grow the host (yamux answers each from a goroutine).
func TestPingFloodEndsSession(t *testing.T) {
	base := runtime.NumGoroutine()
	c := fakeClient(t, func(guest net.Conn) {
		fakeHandshake(t, guest, "1.0", "evil")
		chunk := make([]byte, 0, 1024*yamuxHeaderSize)
		for i := 0; i < 1024; i++ {
			h := make([]byte, yamuxHeaderSize)
			h[1] = yamuxTypePing
			binary.BigEndian.PutUint16(h[2:], yamuxFlagSYN)
			binary.BigEndian.PutUint32(h[8:], uint32(i))
			chunk = append(chunk, h...)
		}
		for {
			if _, err := guest.Write(chunk); err != nil {
				return
			}
		}
	})
	deadline := time.After(time.Second)
	peak := 0
	for done := false; !done; {
		select {
		case <-c.Done():
			done = true
		case <-deadline:
			t.Fatalf("session survived a ping flood for 1 s (peak %d goroutines over %d)", peak, base)
		case <-time.After(time.Millisecond):
		}
		if n := runtime.NumGoroutine() - base; n > peak {
			peak = n
		}
		if peak > 1000 {
			t.Fatalf("%d goroutines over the baseline during a ping flood", peak)
		}
	}
}

func TestPingGuard(t *testing.T) {
	frame := func(typ byte, flags uint16, length uint32, payload int) []byte {
		h := make([]byte, yamuxHeaderSize+payload)
		h[1] = typ
		binary.BigEndian.PutUint16(h[2:], flags)
		binary.BigEndian.PutUint32(h[8:], length)
		return h
	}
	var in []byte
	for i := 0; i < maxPingsPerSecond; i++ {
		in = append(in, frame(yamuxTypePing, yamuxFlagSYN, uint32(i), 0)...)
		in = append(in, frame(yamuxTypePing, 2, uint32(i), 0)...) // ACKs do not count
		// A data frame whose payload looks like ping SYNs.
		in = append(in, frame(yamuxTypeData, 0, 2*yamuxHeaderSize, 0)...)
		in = append(in, frame(yamuxTypePing, yamuxFlagSYN, 1, 0)...)
		in = append(in, frame(yamuxTypePing, yamuxFlagSYN, 2, 0)...)
	}
	now := time.Unix(1000, 0)
	g := newPingGuard(bytesReader(in), nil)
	g.now = func() time.Time { return now }
	buf := make([]byte, 5) // headers split across reads
	for {
		_, err := g.Read(buf)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("%d pings in a second refused: %v", maxPingsPerSecond, err)
			}
			break
		}
	}
	one := frame(yamuxTypePing, yamuxFlagSYN, 99, 0)
	g.r = bytesReader(one)
	if _, err := io.ReadAll(g); !errors.Is(err, ErrProtocol) {
		t.Fatalf("ping %d in a second: error %v, want ErrProtocol", maxPingsPerSecond+1, err)
	}
	g = newPingGuard(bytesReader(append(in, one...)), nil)
	g.now = func() time.Time { now = now.Add(20 * time.Millisecond); return now }
	if _, err := io.ReadAll(g); err != nil {
		t.Fatalf("pings every 20 ms: %v", err)
	}
}

// TestOpenStreamHonoursContext: an agent that stops accepting streams must
// not hold callers past their deadline.
func TestOpenStreamHonoursContext(t *testing.T) {
	c := fakeClient(t, func(guest net.Conn) {
		sess := fakeSession(t, guest, "1.0", "evil")
		if sess == nil {
			return
		}
		<-sess.CloseChan() // never accepts
	})
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		start := time.Now()
		_, err := c.Info(ctx)
		cancel()
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Fatalf("call %d took %v (error %v)", i, d, err)
		}
		if err == nil || (i < 2 && !errors.Is(err, context.DeadlineExceeded)) {
			t.Fatalf("call %d: error %v", i, err)
		}
	}
	select {
	case <-c.Done():
	case <-time.After(time.Second):
		t.Fatal("session not closed after an open timed out")
	}
}
