package cli

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
)

// `daemon stop` must not return while bangerd still holds its pid file: a
// command run right after it would reach a daemon that is going away.
func TestWaitDaemonExit(t *testing.T) {
	ctx := context.Background()
	pid := filepath.Join(t.TempDir(), "bangerd.pid")
	if err := waitDaemonExit(ctx, pid, time.Second); err != nil {
		t.Fatalf("no pid file: %v", err)
	}
	held, err := os.OpenFile(pid, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := unix.Flock(int(held.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	if err := waitDaemonExit(ctx, pid, 200*time.Millisecond); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("lock held: got %v, want busy", err)
	}
	fd := int(held.Fd())
	released := time.Now().Add(300 * time.Millisecond)
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(time.Until(released))
		unix.Flock(fd, unix.LOCK_UN)
	}()
	err = waitDaemonExit(ctx, pid, 5*time.Second)
	<-done
	if err != nil {
		t.Fatalf("lock released: %v", err)
	}
	if time.Now().Before(released) {
		t.Fatal("returned before the daemon let go of its pid file")
	}
}

// fakeBangerd is bangerd's shape where `daemon stop` is concerned: it holds
// the pid file lock for its whole life, daemon.stop ends Serve (which drains
// the calls in flight), and it lets go of the lock a while after Serve
// returned (closing the store and the rest). exited is closed then.
type fakeBangerd struct {
	exited chan struct{}
	slowOK chan error // result of the test.slow call in flight at the stop
}

func startFakeBangerd(t *testing.T, dir string) *fakeBangerd {
	t.Helper()
	layout := paths.Layout{Root: dir}
	lock := holdPIDLock(t, layout.PID(), 4242)
	f := &fakeBangerd{exited: make(chan struct{}), slowOK: make(chan error, 1)}
	srv := rpc.NewServer(nil, os.Getuid())
	srv.ShutdownGrace = 10 * time.Second
	ctx, shutdown := context.WithCancel(context.Background())
	srv.Handle(api.MethodDaemonStop, func(ctx context.Context, c *rpc.Call) (any, error) {
		shutdown()
		return api.DaemonStopResult{PID: 4242}, nil
	})
	started := make(chan struct{})
	srv.Handle("test.slow", func(ctx context.Context, c *rpc.Call) (any, error) {
		close(started)
		time.Sleep(500 * time.Millisecond)
		return "ok", nil
	})
	ln, err := rpc.Listen(layout.Socket())
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = srv.Serve(ctx, ln)
		time.Sleep(300 * time.Millisecond)
		lock.Close()
		close(f.exited)
	}()
	t.Cleanup(func() {
		shutdown()
		<-f.exited
	})
	go func() { f.slowOK <- rpc.NewClient(layout.Socket()).Call(context.Background(), "test.slow", nil, nil) }()
	<-started
	return f
}

// holdPIDLock takes bangerd's lock on pidFile and writes pid in it.
func holdPIDLock(t *testing.T, pidFile string, pid int) *os.File {
	t.Helper()
	f, err := os.OpenFile(pidFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(strconv.Itoa(pid) + "\n"); err != nil {
		t.Fatal(err)
	}
	return f
}

// `daemon stop` returns only once the daemon process let go of its lock,
// after the call in flight finished; --json says what it stopped; a second
// stop finds nothing running.
func TestDaemonStopWaitsForExit(t *testing.T) {
	dir := t.TempDir()
	f := startFakeBangerd(t, dir)
	code, out, errs := run(t, dir, "", "daemon", "stop", "--json")
	select {
	case <-f.exited:
	default:
		t.Fatal("daemon stop returned while the daemon still held its pid file")
	}
	var v map[string]any
	if code != 0 || errs != "" || json.Unmarshal([]byte(out), &v) != nil || v["stopped"] != true || v["pid"] != float64(4242) {
		t.Fatalf("daemon stop --json: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if err := <-f.slowOK; err != nil {
		t.Fatalf("call in flight at the stop: %v", err)
	}
	code, out, errs = run(t, dir, "", "daemon", "stop", "--json")
	if code != 0 || errs != "" || strings.TrimSpace(out) != `{
  "stopped": false
}` {
		t.Fatalf("second daemon stop --json: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	code, out, _ = run(t, dir, "", "daemon", "stop")
	if code != 0 || out != "bangerd is not running\n" {
		t.Fatalf("second daemon stop: exit %d, stdout %q", code, out)
	}
}

// A daemon already shutting down has removed its socket but still holds
// its lock: `daemon stop` waits for it instead of saying "not running".
func TestDaemonStopWaitsForOneShuttingDown(t *testing.T) {
	dir := t.TempDir()
	lock := holdPIDLock(t, paths.Layout{Root: dir}.PID(), 777)
	exited := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		lock.Close()
		close(exited)
	}()
	code, out, errs := run(t, dir, "", "daemon", "stop")
	select {
	case <-exited:
	default:
		t.Fatal("daemon stop returned while a daemon still held its pid file")
	}
	if code != 0 || out != "bangerd stopped (pid 777)\n" || errs != "" {
		t.Fatalf("daemon stop: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}
