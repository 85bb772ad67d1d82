package firecracker

import (
	"bufio"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeHybridVsock speaks the host side of Firecracker's hybrid vsock: it
// reads "CONNECT <port>\n" and answers with reply, then, when the port is
// the agent's, echoes the stream. The reply and the first echoed bytes go
// out in one write, as a real VMM may coalesce them.
func fakeHybridVsock(t *testing.T, reply func(port string) string) string {
	t.Helper()
	uds := filepath.Join(t.TempDir(), VsockSocket)
	ln, err := net.Listen("unix", uds)
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
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				port, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "CONNECT ")
				if !ok {
					return
				}
				r := reply(port)
				if r == "" {
					return // no listener on that port: Firecracker closes
				}
				if _, err := io.WriteString(c, r+"early"); err != nil {
					return
				}
				_, _ = io.Copy(c, br)
			}()
		}
	}()
	return uds
}

func TestDialVsockHandshake(t *testing.T) {
	uds := fakeHybridVsock(t, func(port string) string {
		if port != "1024" {
			return ""
		}
		return "OK 1073741824\n"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialVsock(ctx, uds, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The bytes after the OK line belong to the guest: none swallowed.
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "early" {
		t.Fatalf("first guest bytes = %q, %v; want \"early\"", buf, err)
	}
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	buf = make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v", buf, err)
	}

	if _, err := DialVsock(ctx, uds, 2000); err == nil || !strings.Contains(err.Error(), "no listener") {
		t.Fatalf("port without listener: err = %v, want 'no listener'", err)
	}
}

func TestDialVsockRefusesBadReplies(t *testing.T) {
	for name, reply := range map[string]string{
		"endless": strings.Repeat("A", 1<<20),
		"not ok":  "NO 5\n",
		"no port": "OK\n",
		"bad":     "OK x\n",
	} {
		t.Run(name, func(t *testing.T) {
			uds := fakeHybridVsock(t, func(string) string { return reply })
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := DialVsock(ctx, uds, 1024)
			if err == nil {
				c.Close()
				t.Fatalf("reply %.20q accepted", reply)
			}
		})
	}
}

func TestDialAgentUsesTheVMsVsock(t *testing.T) {
	uds := fakeHybridVsock(t, func(port string) string { return "OK 1\n" })
	d := New(nil, nil)
	if d.VsockCID != DefaultVsockCID {
		t.Fatalf("New: VsockCID = %d, want %d (the agent needs a vsock device)", d.VsockCID, DefaultVsockCID)
	}
	c, err := d.DialAgent(context.Background(), filepath.Dir(uds))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
