package vmm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

func TestReadPIDFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pid")
	good := map[string]int{"42": 42, "42\n": 42, " 7 \n": 7}
	for content, want := range good {
		os.WriteFile(p, []byte(content), 0o600)
		if got, err := ReadPIDFile(p); err != nil || got != want {
			t.Errorf("%q: %d, %v", content, got, err)
		}
	}
	for _, bad := range []string{"", "\n", "0", "-1", "abc", "12 34", "1e3", "99999999999999999999", "0x10"} {
		os.WriteFile(p, []byte(bad), 0o600)
		if got, err := ReadPIDFile(p); err == nil {
			t.Errorf("%q: got %d, want error", bad, got)
		}
	}
	if _, err := ReadPIDFile(filepath.Join(dir, "missing")); !os.IsNotExist(err) {
		t.Errorf("missing: %v", err)
	}
}

func TestHasArgPair(t *testing.T) {
	args := []string{"qemu", "-pidfile", "/vms/a/vmm.pid", "-name", "x"}
	if !HasArgPair(args, "-pidfile", "/vms/a/vmm.pid") {
		t.Fatal("exact pair not found")
	}
	for _, v := range []string{"/vms/a", "/vms/a/vmm.pid2", "/vms/ab/vmm.pid", ""} {
		if HasArgPair(args, "-pidfile", v) {
			t.Errorf("matched %q", v)
		}
	}
	if HasArgPair([]string{"/vms/a/vmm.pid", "-pidfile"}, "-pidfile", "/vms/a/vmm.pid") {
		t.Error("matched pair in the wrong order")
	}
}

func TestTailFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	os.WriteFile(p, []byte("first line\nsecond line\nthird line\n"), 0o600)
	if got := TailFile(p, 1000); got != "first line\nsecond line\nthird line" {
		t.Errorf("whole: %q", got)
	}
	// A cut in the middle of a line starts at the next one.
	if got := TailFile(p, 15); got != "third line" {
		t.Errorf("tail 15: %q", got)
	}
	if got := TailFile(filepath.Join(t.TempDir(), "none"), 10); got != "" {
		t.Errorf("missing: %q", got)
	}
	big := strings.Repeat("x", 10000)
	os.WriteFile(p, []byte(big), 0o600)
	if got := TailFile(p, 100); len(got) != 100 {
		t.Errorf("no newline: %d bytes", len(got))
	}
}

func TestProcessAlive(t *testing.T) {
	if !ProcessAlive(os.Getpid()) {
		t.Fatal("self not alive")
	}
	for _, pid := range []int{0, -1, 1 << 30} {
		if ProcessAlive(pid) {
			t.Errorf("pid %d alive", pid)
		}
	}
	all := func([]string) bool { return true }
	if err := KillProcess(1<<30, all); err != nil {
		t.Errorf("kill missing pid: %v", err)
	}
	for _, pid := range []int{0, -1} {
		if KillProcess(pid, all) == nil || TerminateProcess(pid, all) == nil {
			t.Errorf("pid %d accepted", pid)
		}
	}
}

// TestSignalProcessChecksIdentity: a process whose argv does not match is
// never signalled; one that matches is; a pid no driver recorded is refused.
func TestSignalProcessChecksIdentity(t *testing.T) {
	pid, err := system.Exec{}.Start(context.Background(), system.ProcSpec{Path: "/bin/sleep", Args: []string{"300"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	notSleep := func(args []string) bool { return HasArgPair(args, "-pidfile", "/vms/a/vmm.pid") }
	if err := KillProcess(pid, notSleep); !errors.Is(err, ErrNotVMM) {
		t.Fatalf("KillProcess of a foreign process: %v, want ErrNotVMM", err)
	}
	if err := KillProcess(pid, nil); !errors.Is(err, ErrNotVMM) {
		t.Fatalf("KillProcess without identity: %v, want ErrNotVMM", err)
	}
	var r Registry
	if err := r.Signal(pid, syscall.SIGKILL); !errors.Is(err, ErrNotVMM) {
		t.Fatalf("Registry.Signal of an unknown pid: %v, want ErrNotVMM", err)
	}
	r.Remember(pid, notSleep)
	if err := r.Signal(pid, syscall.SIGKILL); !errors.Is(err, ErrNotVMM) {
		t.Fatalf("Registry.Signal of a reused pid: %v, want ErrNotVMM", err)
	}
	time.Sleep(50 * time.Millisecond)
	if !ProcessAlive(pid) {
		t.Fatal("a process that did not match was signalled")
	}
	r.Remember(pid, func(args []string) bool { return len(args) == 2 && args[0] == "/bin/sleep" && args[1] == "300" })
	if err := r.Signal(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; ProcessAlive(pid); i++ {
		if i > 200 {
			t.Fatal("matching process not killed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := r.Signal(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("signal of a gone process: %v", err)
	}
}
