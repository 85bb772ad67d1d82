package vmm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	if err := KillProcess(1 << 30); err != nil {
		t.Errorf("kill missing pid: %v", err)
	}
	for _, pid := range []int{0, -1} {
		if KillProcess(pid) == nil || TerminateProcess(pid) == nil {
			t.Errorf("pid %d accepted", pid)
		}
	}
}
