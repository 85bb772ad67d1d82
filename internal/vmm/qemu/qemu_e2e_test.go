//go:build e2e

package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// BANGER_TEST_KERNEL points at a bootable x86_64 kernel, e.g. the vmlinuz of
// Debian's linux-image-*-cloud-amd64 extracted with dpkg-deb -x.
func testKernel(t *testing.T) string {
	k := os.Getenv("BANGER_TEST_KERNEL")
	if k == "" {
		t.Skip("BANGER_TEST_KERNEL not set")
	}
	return k
}

func TestE2EProbeAccel(t *testing.T) {
	d := New(system.Exec{}, nil)
	start := time.Now()
	a, reason := d.ProbeAccel(context.Background())
	t.Logf("ProbeAccel: %s (%s) in %s", a, reason, time.Since(start))
	if a2, _ := d.ProbeAccel(context.Background()); a2 != a {
		t.Fatalf("cached answer changed: %s then %s", a, a2)
	}
}

func TestE2EBootKernelAndKill(t *testing.T) {
	kernel := testKernel(t)
	d := New(system.Exec{}, nil)
	dir := t.TempDir()
	s := vmm.Spec{
		ID: "e2e1", Dir: dir, VCPU: 1, MemoryMiB: 256, Kernel: kernel,
		Cmdline: "console=ttyS0 panic=-1",
	}
	t0 := time.Now()
	pid, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Start returned pid %d after %s", pid, time.Since(t0))
	t.Cleanup(func() { _ = d.Kill(pid) })

	if p, ok := d.Find(s); !ok || p != pid {
		t.Fatalf("Find = %d,%v want %d", p, ok, pid)
	}
	console := filepath.Join(dir, paths.VMConsoleLog)
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(console)
		if strings.Contains(string(b), "Linux version") && strings.Contains(string(b), "Command line:") {
			t.Logf("\"Linux version\" on the console after %s", time.Since(t0))
			if a, _ := d.ProbeAccel(context.Background()); a == AccelTCG && !strings.Contains(string(b), "tsc_early_khz=") {
				t.Errorf("tcg boot without tsc_early_khz:\n%s", vmm.TailFile(console, 2000))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Linux version on console; tail:\n%s", vmm.TailFile(console, 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := d.Kill(pid); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	for d.Alive(pid) {
		if time.Since(t1) > 5*time.Second {
			t.Fatal("qemu still alive 5s after SIGKILL")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("process gone %s after Kill", time.Since(t1))
	if p, ok := d.Find(s); ok {
		t.Fatalf("Find after kill = %d, true", p)
	}
	if err := d.Kill(pid); err != nil {
		t.Fatalf("second Kill: %v", err)
	}
}

func TestE2EStartFailureCarriesConsole(t *testing.T) {
	d := New(system.Exec{}, nil)
	dir := t.TempDir()
	bogus := filepath.Join(dir, "not-a-kernel")
	if err := os.WriteFile(bogus, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := d.Start(context.Background(), vmm.Spec{ID: "e2e2", Dir: dir, VCPU: 1, MemoryMiB: 64, Kernel: bogus})
	if err == nil {
		t.Fatal("Start of a garbage kernel succeeded")
	}
	t.Logf("error: %v", err)
	if !strings.Contains(err.Error(), "qemu") {
		t.Fatalf("error lacks qemu's message: %v", err)
	}
}
