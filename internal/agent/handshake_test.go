package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"
)

// readHello reads the host's HELLO as a fake agent and returns its nonce.
func readHello(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	line, err := br.ReadString('\n')
	if err != nil {
		t.Error(err)
		return ""
	}
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "BANGER-AGENT-HELLO" || f[1] != fmt.Sprintf("%d.%d", ProtoMajor, ProtoMinor) || len(f[2]) != 16 {
		t.Errorf("hello %q", line)
		return ""
	}
	return f[2]
}

// junk is random bytes without line ends plus partial lines that look like
// the protocol, as a serial line may hold from an earlier session.
func junk(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	for b.Len() < n {
		c := byte(r.UintN(256))
		if c == '\n' && r.UintN(8) != 0 {
			continue
		}
		b.WriteByte(c)
	}
	b.WriteString("BANGER-AGENT-OK 1.0 0000000000000000 stale\n") // another host's nonce
	b.WriteString("BANGER-AGENT-HEL")                             // cut short
	b.WriteString("BANGER-AGENT-OK 1.")                           // cut short
	return b.Bytes()
}

func TestClientHandshakeSkipsJunk(t *testing.T) {
	host, guest := socketPair(t)
	defer guest.Close()
	go func() {
		br := bufio.NewReader(guest)
		nonce := readHello(t, br)
		guest.Write(junk(100 << 10))
		fmt.Fprintf(guest, "BANGER-AGENT-OK 1.7 %s v9.9\n", nonce) // a newer minor is fine
	}()
	c, err := NewClient(testCtx(t, 10*time.Second), host, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Version() != "1.7 v9.9" {
		t.Fatalf("version %q", c.Version())
	}
}

func TestServerHandshakeSkipsJunk(t *testing.T) {
	host, guest := socketPair(t)
	errc := make(chan error, 1)
	go func() { errc <- (&Server{Version: "v1.2.3"}).ServeConn(context.Background(), guest) }()
	go host.Write(append(junk(200<<10), "BANGER-AGENT-HELLO 1.0 0123456789abcdef\n"...))
	br := bufio.NewReader(host)
	host.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := br.ReadString('\n')
	if want := fmt.Sprintf("BANGER-AGENT-OK %d.%d 0123456789abcdef v1.2.3\n", ProtoMajor, ProtoMinor); err != nil || line != want {
		t.Fatalf("reply %q %v", line, err)
	}
	host.Close()
	if err := <-errc; err != nil {
		t.Fatalf("ServeConn after the host left: %v", err)
	}
}

func TestHandshakeGivesUpOnJunk(t *testing.T) {
	endless := bytes.Repeat([]byte("no handshake here\n"), 1<<17) // 2.3 MiB
	t.Run("client", func(t *testing.T) {
		host, guest := socketPair(t)
		defer guest.Close()
		go func() {
			readHello(t, bufio.NewReader(guest))
			guest.Write(endless)
		}()
		_, err := NewClient(testCtx(t, 10*time.Second), host, nil)
		if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "stale input") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("server", func(t *testing.T) {
		host, guest := socketPair(t)
		defer host.Close()
		go host.Write(endless)
		err := (&Server{}).ServeConn(testCtx(t, 10*time.Second), guest)
		if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "stale input") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("long line", func(t *testing.T) {
		host, guest := socketPair(t)
		defer host.Close()
		go host.Write([]byte("BANGER-AGENT-HELLO 1.0 " + strings.Repeat("a", 8<<10) + "\n"))
		err := (&Server{}).ServeConn(testCtx(t, 10*time.Second), guest)
		if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "longer than") {
			t.Fatalf("error %v", err)
		}
	})
}

func TestVersionMismatch(t *testing.T) {
	t.Run("agent major 2", func(t *testing.T) {
		host, guest := socketPair(t)
		defer guest.Close()
		go func() {
			nonce := readHello(t, bufio.NewReader(guest))
			fmt.Fprintf(guest, "BANGER-AGENT-OK 2.0 %s v2\n", nonce)
		}()
		_, err := NewClient(testCtx(t, 10*time.Second), host, nil)
		if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "agent speaks 2.0, this daemon 1.x") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("agent refuses", func(t *testing.T) {
		host, guest := socketPair(t)
		defer guest.Close()
		go func() {
			nonce := readHello(t, bufio.NewReader(guest))
			fmt.Fprintf(guest, "BANGER-AGENT-ERR 3.1 %s host protocol 1.0 not supported\n", nonce)
		}()
		_, err := NewClient(testCtx(t, 10*time.Second), host, nil)
		if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "agent speaks 3.1") || !strings.Contains(err.Error(), "1.0") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("host major 2", func(t *testing.T) {
		host, guest := socketPair(t)
		defer host.Close()
		errc := make(chan error, 1)
		go func() { errc <- (&Server{}).ServeConn(testCtx(t, 10*time.Second), guest) }()
		fmt.Fprintf(host, "BANGER-AGENT-HELLO 2.0 00112233445566ff\n")
		host.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(host).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, fmt.Sprintf("BANGER-AGENT-ERR %d.%d 00112233445566ff ", ProtoMajor, ProtoMinor)) {
			t.Fatalf("reply %q %v", line, err)
		}
		if err := <-errc; !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "host speaks 2.0, this agent 1.x") {
			t.Fatalf("ServeConn error %v", err)
		}
	})
}

func TestHandshakeBoundedByContext(t *testing.T) {
	host, guest := net.Pipe()
	defer guest.Close()
	go func() { readHello(t, bufio.NewReader(guest)) }() // then silence
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := NewClient(ctx, host, nil)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("error %v after %v", err, time.Since(start))
	}
}

func FuzzScanLine(f *testing.F) {
	f.Add([]byte("junk\nBANGER-AGENT-HELLO 1.0 abcd\n"))
	f.Add([]byte("xxBANGER-AGENT-HELLO BANGER-AGENT-HELLO 1.0 ab\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		junk := 0
		line, err := scanLine(bufio.NewReader(bytes.NewReader(b)), helloPrefix, &junk)
		if err == nil && (!strings.HasPrefix(line, helloPrefix) || len(line) > maxLine) {
			t.Fatalf("line %q", line)
		}
	})
}
