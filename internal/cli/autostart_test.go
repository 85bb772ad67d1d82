package cli

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
)

// fakeBangerdMain is a stand-in bangerd, run as a separate process: it
// takes the pid file lock as bangerd does (writing "locked" or "busy" to
// <state>/starts), then serves vm.list and daemon.stop.
func fakeBangerdMain(args []string) int {
	fs := flag.NewFlagSet("bangerd", flag.ContinueOnError)
	state := fs.String("state-dir", "", "")
	fs.String("log-file", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	layout := paths.Layout{Root: *state}
	rec, err := os.OpenFile(filepath.Join(*state, "starts"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 1
	}
	pidf, err := os.OpenFile(layout.PID(), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return 1
	}
	if err := unix.Flock(int(pidf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		fmt.Fprintln(rec, "busy")
		return 1
	}
	fmt.Fprintln(rec, "locked")
	ctx, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	srv := rpc.NewServer(nil, os.Getuid())
	srv.Handle(api.MethodVMList, func(ctx context.Context, c *rpc.Call) (any, error) { return []api.VM{}, nil })
	srv.Handle(api.MethodDaemonStatus, func(ctx context.Context, c *rpc.Call) (any, error) { return api.DaemonStatus{}, nil })
	srv.Handle(api.MethodDaemonStop, func(ctx context.Context, c *rpc.Call) (any, error) {
		stop()
		return api.DaemonStopResult{PID: os.Getpid()}, nil
	})
	ln, err := rpc.Listen(layout.Socket())
	if err != nil {
		return 1
	}
	if err := srv.Serve(ctx, ln); err != nil {
		return 1
	}
	return 0
}

// A command run while the previous daemon is still shutting down (its
// socket gone, its pid file still locked) waits for it to exit and then
// starts a fresh one, instead of starting one that cannot take the lock
// and then failing after 30s.
func TestAutostartWaitsForPreviousDaemon(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(self, filepath.Join(bin, "bangerd")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	dir := t.TempDir()
	layout := paths.Layout{Root: dir}
	if err := layout.Ensure(); err != nil {
		t.Fatal(err)
	}
	old := holdPIDLock(t, layout.PID(), 777)
	released := make(chan struct{})
	go func() {
		time.Sleep(time.Second)
		old.Close()
		close(released)
	}()
	var out, errb strings.Builder
	code := Main([]string{"--state-dir", dir, "vm", "list", "--json"}, strings.NewReader(""), &out, &errb)
	t.Cleanup(func() {
		var o, e strings.Builder
		Main([]string{"--state-dir", dir, "--no-autostart", "daemon", "stop"}, strings.NewReader(""), &o, &e)
	})
	<-released
	if code != 0 || strings.TrimSpace(out.String()) != "[]" {
		t.Fatalf("vm list: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	if !strings.Contains(errb.String(), "banger: waiting for the previous bangerd to exit\n") ||
		!strings.Contains(errb.String(), "banger: starting bangerd") {
		t.Errorf("stderr %q", errb.String())
	}
	starts, _ := os.ReadFile(filepath.Join(dir, "starts"))
	if string(starts) != "locked\n" {
		t.Fatalf("bangerd starts: %q, want one, after the previous one let go", starts)
	}
}
