package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
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
