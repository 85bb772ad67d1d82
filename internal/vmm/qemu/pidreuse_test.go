package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// TestReusedPidIsNeverSignalled: the pid a VM recorded now belongs to an
// unrelated process (here a `sleep` whose argv names no VM dir, the VM's pid
// file even pointing at it). Kill and Shutdown must leave it alone.
func TestReusedPidIsNeverSignalled(t *testing.T) {
	pid, err := system.Exec{}.Start(context.Background(), system.ProcSpec{Path: "/bin/sleep", Args: []string{"300"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, paths.VMPIDFile), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := New(system.Exec{}, nil)
	if _, ok := d.Find(vmm.Spec{ID: "x", Dir: dir}); ok {
		t.Fatal("Find matched a process that is not the VM's")
	}
	err = d.Shutdown(context.Background(), pid)
	t.Logf("Shutdown(%d): %v", pid, err)
	err = d.Kill(pid)
	t.Logf("Kill(%d): %v", pid, err)
	if err == nil {
		t.Error("Kill of a foreign process reported success")
	}
	time.Sleep(100 * time.Millisecond)
	if !vmm.ProcessAlive(pid) {
		t.Fatal("a process that is not a VMM was signalled")
	}
}
