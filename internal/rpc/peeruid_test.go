package rpc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/testenv"
)

// A client really running as another uid is refused by SO_PEERCRED, even
// with the socket's file mode opened up so the mode is not what stops it.
func TestOtherUIDClientRefused(t *testing.T) {
	testenv.RequireRoot(t)
	h := newHarness(t, os.Getuid())
	var called atomic.Int32
	h.srv.Handle("test.echo", func(ctx context.Context, c *Call) (any, error) {
		called.Add(1)
		return nil, nil
	})
	if err := os.Chmod(h.path, 0o777); err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(h.path); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const other = 65534
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The raw syscall changes only this thread (Go's Setresuid changes all),
		// so the connect below carries uid 65534 in its credentials.
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), other, ^uintptr(0)); e != 0 {
			errc <- fmt.Errorf("setresuid: %v", e)
			return // the locked thread exits with the goroutine
		}
		err := h.client.Call(context.Background(), "test.echo", nil, nil)
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			errc <- fmt.Errorf("restore uid: %v (thread discarded)", e)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; !errors.Is(err, api.ErrPermission) {
		t.Fatalf("call as uid %d: %v, want permission denied", other, err)
	}
	if n := called.Load(); n != 0 {
		t.Fatalf("handler ran %d times for another uid", n)
	}
	if err := h.client.Call(context.Background(), "test.echo", nil, nil); err != nil {
		t.Fatalf("the owner is refused too: %v", err)
	}
	if n := called.Load(); n != 1 {
		t.Fatalf("owner's call ran the handler %d times", n)
	}
}
