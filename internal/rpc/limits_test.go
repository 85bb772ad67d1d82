package rpc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// TestRequestFrameSizedForRequests: requests carry names and flags; a 2 MiB
// request (valid JSON padded with spaces) is refused with an error naming
// the limit, and the connection is closed.
func TestRequestFrameSizedForRequests(t *testing.T) {
	h := newHarness(t, ownUID())
	h.srv.Handle("test.echo", echoHandler)
	req := []byte(`{"version":1,"method":"test.echo","params":{"n":2}` + strings.Repeat(" ", 2<<20) + "}\n")
	frames := rawExchange(t, h.path, req)
	if len(frames) != 1 || frames[0].Error == nil || frames[0].Error.Code != api.CodeInvalid ||
		!strings.Contains(frames[0].Error.Message, "1048576") {
		t.Fatalf("frames = %+v, want one invalid error naming the 1048576-byte limit", frames)
	}
	t.Logf("error: %s", frames[0].Error.Message)
}

// TestIdleConnectionsDoNotExhaustServer: far more idle connections than the
// cap neither pile up goroutines in the server nor lock a real client out.
func TestIdleConnectionsDoNotExhaustServer(t *testing.T) {
	h := newHarness(t, ownUID())
	h.srv.Handle("test.echo", echoHandler)
	before := runtime.NumGoroutine()
	const n = 300
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("unix", h.path)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Let the server accept them all.
	deadline := time.Now().Add(5 * time.Second)
	for h.srv.active() < min(n, MaxConns) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if got := h.srv.active(); got > MaxConns {
		t.Errorf("server holds %d connections, cap %d", got, MaxConns)
	}
	if g := runtime.NumGoroutine() - before; g > MaxConns+16 {
		t.Errorf("%d goroutines for %d idle connections (cap %d)", g, n, MaxConns)
	}
	// Connections beyond the cap were closed promptly (an idle one gets a
	// busy error frame or EOF, never a 30 s wait).
	closed := 0
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		b, err := bufio.NewReader(c).ReadBytes('\n')
		if err == nil || len(b) > 0 {
			var r api.Response
			if json.Unmarshal(bytes.TrimSpace(b), &r) == nil && r.Error != nil && r.Error.Code != api.CodeBusy {
				t.Errorf("closed connection got %+v", r.Error)
			}
			closed++
			continue
		}
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			closed++
		}
	}
	if closed < n-MaxConns {
		t.Errorf("%d of %d connections closed, want at least %d", closed, n, n-MaxConns)
	}
	// A real call still gets through while the idle ones sit there.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var res echoResult
	if err := h.client.Call(ctx, "test.echo", map[string]int{"n": 3}, &res); err != nil {
		t.Fatalf("call with %d idle connections open: %v", n, err)
	}
}

// TestBusyWhenEverySlotRunsACall: with MaxConns calls in progress, one more
// connection gets a busy error at once; when they end, calls work again.
func TestBusyWhenEverySlotRunsACall(t *testing.T) {
	h := newHarness(t, ownUID())
	release := make(chan struct{})
	started := make(chan struct{}, MaxConns)
	h.srv.Handle("test.block", func(ctx context.Context, c *Call) (any, error) {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, nil
	})
	h.srv.Handle("test.echo", echoHandler)
	errc := make(chan error, MaxConns)
	for range MaxConns {
		go func() { errc <- h.client.Call(context.Background(), "test.block", nil, nil) }()
	}
	for range MaxConns {
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("calls did not start")
		}
	}
	t0 := time.Now()
	err := h.client.Call(context.Background(), "test.echo", map[string]int{"n": 1}, nil)
	if !errors.Is(err, api.ErrBusy) || !strings.Contains(err.Error(), "64") {
		t.Fatalf("call over the cap: %v, want busy naming the limit", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("refusal took %v", d)
	}
	close(release)
	for range MaxConns {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	var res echoResult
	if err := h.client.Call(context.Background(), "test.echo", map[string]int{"n": 1}, &res); err != nil || res.N != 2 {
		t.Fatalf("after the calls ended: %+v, %v", res, err)
	}
}
