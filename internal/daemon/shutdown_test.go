package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/vm"
)

// stopEnv serves the real dispatch with daemon.stop wired to end Serve, as
// bangerd does, plus test.work: detached work that runs until released or
// interrupted, then takes a while to roll back.
type stopEnv struct {
	sock       string
	serveDone  chan struct{} // closed when Serve returned
	started    chan struct{}
	release    chan struct{}
	rolledBack atomic.Bool
}

func newStopEnv(t *testing.T, grace time.Duration) *stopEnv {
	t.Helper()
	layout := paths.Layout{Root: t.TempDir()}
	if err := layout.Ensure(); err != nil {
		t.Fatal(err)
	}
	e := &stopEnv{sock: layout.Socket(), serveDone: make(chan struct{}),
		started: make(chan struct{}, 1), release: make(chan struct{})}
	srv := rpc.NewServer(nil, os.Getuid())
	srv.ShutdownGrace = grace
	ctx, shutdown := context.WithCancel(context.Background())
	Register(srv, Deps{Layout: layout, Shutdown: shutdown})
	srv.Handle("test.work", func(ctx context.Context, c *rpc.Call) (any, error) {
		return detached(ctx, c, func(ctx context.Context, _ vm.Progress) (string, error) {
			e.started <- struct{}{}
			select {
			case <-e.release:
				return "created", nil
			case <-ctx.Done():
				time.Sleep(200 * time.Millisecond) // the undo steps
				e.rolledBack.Store(true)
				return "", fmt.Errorf("rolled back: %w", ctx.Err())
			case <-time.After(20 * time.Second): // a failure, not a hung test
				return "", errors.New("test.work: neither released nor interrupted within 20s")
			}
		})
	})
	ln, err := rpc.Listen(e.sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("Serve: %v", err)
		}
		close(e.serveDone)
	}()
	t.Cleanup(func() {
		shutdown()
		select {
		case <-e.serveDone:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return e
}

func (e *stopEnv) startWork(t *testing.T) <-chan error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		var got string
		err := rpc.NewClient(e.sock).Call(context.Background(), "test.work", nil, &got)
		if err == nil && got != "created" {
			err = fmt.Errorf("result %q", got)
		}
		errc <- err
	}()
	select {
	case <-e.started:
	case <-time.After(10 * time.Second):
		t.Fatal("work did not start")
	}
	return errc
}

// daemon.stop answers with the daemon's pid and the socket goes at once (a
// new CLI starts a fresh daemon); a create-like call in flight still
// finishes within the grace period; only then does Serve return.
func TestDaemonStopLetsInFlightFinish(t *testing.T) {
	e := newStopEnv(t, 20*time.Second)
	work := e.startWork(t)
	var res api.DaemonStopResult
	if err := rpc.NewClient(e.sock).Call(context.Background(), api.MethodDaemonStop, nil, &res); err != nil {
		t.Fatal(err)
	}
	if res.PID != os.Getpid() {
		t.Fatalf("daemon.stop pid = %d, want %d", res.PID, os.Getpid())
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := rpc.NewClient(e.sock).Call(context.Background(), api.MethodDaemonStatus, nil, nil)
		if errors.Is(err, rpc.ErrNoDaemon) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still accepting requests 5s after daemon.stop: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-e.serveDone:
		t.Fatal("Serve returned with a call in flight")
	case <-time.After(200 * time.Millisecond):
	}
	close(e.release)
	if err := <-work; err != nil {
		t.Fatalf("call in flight at daemon.stop: %v", err)
	}
	select {
	case <-e.serveDone:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the call finished")
	}
}

// Past the grace period, detached work is interrupted; the client gets the
// shutting-down code and message only once the rollback is done, never
// "client went away; the operation continues".
func TestDaemonStopInterruptsAndReportsRollback(t *testing.T) {
	e := newStopEnv(t, 100*time.Millisecond)
	work := e.startWork(t)
	if err := rpc.NewClient(e.sock).Call(context.Background(), api.MethodDaemonStop, nil, nil); err != nil {
		t.Fatal(err)
	}
	err := <-work
	if !e.rolledBack.Load() {
		t.Fatalf("client answered (%v) before the rollback finished", err)
	}
	var we *api.Error
	if !errors.As(err, &we) || we.Code != api.CodeShutdown ||
		we.Message != "the daemon is shutting down; test.work was interrupted: rolled back: context canceled" {
		t.Fatalf("interrupted call: %v", err)
	}
}
