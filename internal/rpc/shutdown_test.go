package rpc

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

func withGrace(d time.Duration) func(*Server) {
	return func(s *Server) { s.ShutdownGrace = d }
}

// waitGone waits for the socket path to disappear.
func waitGone(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("socket still there 5s after shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Shutdown closes the socket first (a new client finds no daemon, so it can
// start a fresh one), lets the call in flight finish within the grace
// period with its real result, and only then does Serve return.
func TestShutdownDrainsWithinGrace(t *testing.T) {
	h := newHarness(t, ownUID(), withGrace(20*time.Second))
	started, release := make(chan struct{}), make(chan struct{})
	h.srv.Handle("test.slow", func(ctx context.Context, c *Call) (any, error) {
		close(started)
		select {
		case <-release:
			return "done", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	errc := make(chan error, 1)
	var got string
	go func() { errc <- h.client.Call(context.Background(), "test.slow", nil, &got) }()
	<-started
	h.cancel() // shutdown begins; h.stop (cleanup) waits for Serve
	waitGone(t, h.path)
	if err := NewClient(h.path).Call(context.Background(), "test.slow", nil, nil); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("new call while draining: %v, want no daemon", err)
	}
	select {
	case err := <-h.errc:
		t.Fatalf("Serve returned (%v) with a call in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-errc; err != nil || got != "done" {
		t.Fatalf("call in flight at shutdown: %q, %v; want it to finish", got, err)
	}
	select {
	case err := <-h.errc:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return once the call finished")
	}
	h.cancel = nil
}

// Past the grace period the call is interrupted: its ctx ends with cause
// api.ErrShuttingDown and the client gets that code and message.
func TestShutdownInterruptsAfterGrace(t *testing.T) {
	h := newHarness(t, ownUID(), withGrace(300*time.Millisecond))
	started := make(chan struct{})
	cause := make(chan error, 1)
	h.srv.Handle("test.block", func(ctx context.Context, c *Call) (any, error) {
		close(started)
		<-ctx.Done()
		cause <- context.Cause(ctx)
		return nil, errors.New("rolled back")
	})
	errc := make(chan error, 1)
	go func() { errc <- h.client.Call(context.Background(), "test.block", nil, nil) }()
	<-started
	t0 := time.Now()
	h.stop(t)
	if d := time.Since(t0); d < 300*time.Millisecond {
		t.Fatalf("interrupted after %s, before the grace period", d)
	}
	if c := <-cause; !errors.Is(c, api.ErrShuttingDown) {
		t.Fatalf("handler cancel cause = %v", c)
	}
	err := <-errc
	var we *api.Error
	if !errors.As(err, &we) || we.Code != api.CodeShutdown ||
		we.Message != "the daemon is shutting down; test.block was interrupted: rolled back" {
		t.Fatalf("client got %v", err)
	}
}

// Work a handler detached outlives its client hanging up, is interrupted at
// shutdown like a call, and Serve waits for it: the process never exits
// with it half done.
func TestDetachedWorkAwaitedAtShutdown(t *testing.T) {
	h := newHarness(t, ownUID(), withGrace(200*time.Millisecond))
	workCtx := make(chan context.Context, 1)
	finish := make(chan struct{})
	finished := make(chan struct{})
	h.srv.Handle("test.detach", func(ctx context.Context, c *Call) (any, error) {
		wctx, done := c.Detach()
		workCtx <- wctx
		go func() {
			defer done()
			<-finish
			close(finished)
		}()
		<-ctx.Done() // returns when the client hangs up, the work goes on
		return nil, ctx.Err()
	})
	cctx, hangUp := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- h.client.Call(cctx, "test.detach", nil, nil) }()
	wctx := <-workCtx
	hangUp()
	<-errc
	time.Sleep(3 * hangupPoll)
	if wctx.Err() != nil {
		t.Fatalf("detached work cancelled when its client left: %v", context.Cause(wctx))
	}
	h.cancel()
	select {
	case <-wctx.Done():
		if !errors.Is(context.Cause(wctx), api.ErrShuttingDown) {
			t.Fatalf("detached work cause = %v", context.Cause(wctx))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("detached work not interrupted after the grace period")
	}
	select {
	case err := <-h.errc:
		t.Fatalf("Serve returned (%v) before the detached work ended", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(finish)
	<-finished
	select {
	case <-h.errc:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return once the detached work ended")
	}
	h.cancel = nil
}

// A connection accepted before shutdown whose request arrives after it
// began is answered "not started" rather than run; one that never sends
// anything does not hold the shutdown past the grace period.
func TestShutdownRefusesLateRequests(t *testing.T) {
	h := newHarness(t, ownUID(), withGrace(time.Second))
	var ran atomic.Bool
	h.srv.Handle("test.echo", func(ctx context.Context, c *Call) (any, error) { ran.Store(true); return nil, nil })
	late, err := net.Dial("unix", h.path)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	idle, err := net.Dial("unix", h.path)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	for deadline := time.Now().Add(5 * time.Second); h.srv.active() < 2; {
		if time.Now().After(deadline) {
			t.Fatal("connections not accepted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.cancel()
	waitGone(t, h.path)
	resps := exchangeOn(t, late, []byte(`{"version":1,"method":"test.echo"}`+"\n"))
	if len(resps) != 1 || resps[0].Error == nil || resps[0].Error.Code != api.CodeShutdown ||
		!strings.Contains(resps[0].Error.Message, "test.echo was not started") {
		t.Fatalf("late request: %+v", resps)
	}
	if ran.Load() {
		t.Fatal("a request read after shutdown began was run")
	}
	select {
	case <-h.errc:
	case <-time.After(5 * time.Second):
		t.Fatal("an idle connection held Serve past the grace period")
	}
	h.cancel = nil
}
