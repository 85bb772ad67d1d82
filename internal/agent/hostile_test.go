package agent

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// fakeAgent does the agent's handshake on guest and then runs serve on every
// stream the host opens.
func fakeAgent(t *testing.T, guest net.Conn, serve func(st *yamux.Stream)) {
	go func() {
		br := bufio.NewReader(guest)
		nonce := readHello(t, br)
		fmt.Fprintf(guest, "BANGER-AGENT-OK 1.0 %s evil\n", nonce)
		sess, err := yamux.Server(&bufConn{Conn: guest, r: br}, yamuxConfig(nil, 16))
		if err != nil {
			return
		}
		for {
			st, err := sess.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
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
			}()
		}
	}()
}

func hostileClient(t *testing.T, serve func(st *yamux.Stream)) *Client {
	host, guest := socketPair(t)
	t.Cleanup(func() { guest.Close() })
	fakeAgent(t, guest, serve)
	c, err := NewClient(testCtx(t, 10*time.Second), host, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
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
			case "stats", "stats2", "stats3", "stats4", "stats5", "stats6":
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
	host, guest := socketPair(t)
	defer guest.Close()
	go func() {
		br := bufio.NewReader(guest)
		nonce := readHello(t, br)
		fmt.Fprintf(guest, "BANGER-AGENT-OK 1.0 %s evil\n", nonce)
		sess, err := yamux.Server(&bufConn{Conn: guest, r: br}, yamuxConfig(nil, 16))
		if err != nil {
			return
		}
		st, err := sess.OpenStream()
		if err == nil {
			st.Write([]byte("hello"))
		}
	}()
	c, err := NewClient(testCtx(t, 10*time.Second), host, nil)
	if err != nil {
		t.Fatal(err)
	}
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
