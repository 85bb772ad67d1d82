//go:build e2e

package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
	"github.com/banger-dev/banger/internal/vmm"
)

// BANGER_TEST_KERNEL points at a bootable x86_64 kernel, e.g. the vmlinuz of
// Debian's linux-image-*-cloud-amd64 extracted with dpkg-deb -x.
func testKernel(t *testing.T) string {
	k := os.Getenv("BANGER_TEST_KERNEL")
	if k == "" {
		testenv.Missing(t, "BANGER_TEST_KERNEL not set (scripts/test.sh sets it from the e2e kernel cache)")
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
	// What the host offers decides the right answer: no usable /dev/kvm or a
	// PVM-nested one (which aborts ordinary guests on MSR 0x10a) must give
	// TCG with the reason; a plain KVM host must give KVM.
	_, pvm := os.Stat("/sys/module/kvm_pvm")
	kvm, kvmErr := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if kvmErr == nil {
		kvm.Close()
	}
	switch {
	case kvmErr != nil:
		if a != AccelTCG || !strings.Contains(reason, "kvm unavailable") {
			t.Fatalf("no usable /dev/kvm (%v): got %s (%s), want tcg naming why", kvmErr, a, reason)
		}
	case pvm == nil:
		if a != AccelTCG || !strings.Contains(reason, "0x10a") {
			t.Fatalf("PVM-nested /dev/kvm: got %s (%s), want tcg naming MSR 0x10a", a, reason)
		}
	default:
		if a != AccelKVM {
			t.Fatalf("usable /dev/kvm: got %s (%s), want kvm", a, reason)
		}
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
			// The machine ran only once the console was attached: the log
			// holds the boot from its first line (only the boot stub's
			// "Probing EDD" may come before the kernel's).
			if !strings.HasPrefix(string(b), "[    0.000000] Linux version") &&
				!strings.HasPrefix(string(b), "Probing EDD (edd=off to disable)... ok\r\n[    0.000000] Linux version") {
				t.Errorf("console does not start with the first kernel line: %q", b[:min(len(b), 120)])
			}
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

// The serial console survives the daemon: while nobody reads the socket the
// guest is not blocked (it boots on and panics without a root disk), and a
// new driver (a restarted daemon adopting the VM) attaches again and keeps
// appending to the same capped log.
func TestE2EConsoleReattach(t *testing.T) {
	kernel := testKernel(t)
	d := New(system.Exec{}, nil)
	dir := t.TempDir()
	s := vmm.Spec{ID: "e2e3", Dir: dir, VCPU: 1, MemoryMiB: 256, Kernel: kernel,
		Cmdline: "console=ttyS0 panic=-1 loglevel=8"}
	pid, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Kill(pid) })
	console := filepath.Join(dir, paths.VMConsoleLog)
	d.detachConsole(vmFiles(dir), 0) // the daemon dies
	time.Sleep(100 * time.Millisecond)
	before, _ := os.ReadFile(console)
	d2 := New(system.Exec{}, nil) // the restarted daemon adopts the VM
	if err := d2.AttachConsole(s); err != nil {
		t.Fatal(err)
	}
	waitConsole(t, console, "Kernel Offset:")
	after, _ := os.ReadFile(console)
	if !strings.HasPrefix(string(after), string(before)) || len(after) <= len(before) {
		t.Fatalf("reattach did not append: %d -> %d bytes", len(before), len(after))
	}
	t.Logf("console %d bytes before the gap, %d after reattaching", len(before), len(after))
	for t0 := time.Now(); d.Alive(pid); time.Sleep(50 * time.Millisecond) {
		if time.Since(t0) > 60*time.Second {
			t.Fatal("guest did not finish its boot (blocked console?)")
		}
	}
}

func waitConsole(t *testing.T, path, want string) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q not on the console; tail:\n%s", want, vmm.TailFile(path, 2000))
		}
	}
}

// A QEMU running as an unprivileged uid serves its console socket and the
// daemon's side (root here) copies it into a log the VMM user does not own.
func TestE2EConsoleAsUnprivilegedUser(t *testing.T) {
	kernel := testKernel(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const nobody = 65534
	dir, err := os.MkdirTemp("", "bq")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	// The kernel must be readable by nobody.
	k := filepath.Join(dir, "vmlinuz")
	b, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k, b, 0o644); err != nil {
		t.Fatal(err)
	}
	d := New(system.Exec{}, nil)
	s := vmm.Spec{ID: "e2e4", Dir: dir, VCPU: 1, MemoryMiB: 256, Kernel: k, Cmdline: "console=ttyS0 panic=-1",
		UID: nobody, GID: nobody}
	pid, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Kill(pid) })
	console := filepath.Join(dir, paths.VMConsoleLog)
	waitConsole(t, console, "Linux version")
	for name, uid := range map[string]uint32{paths.VMConsoleLog: 0, paths.VMMLog: 0, paths.VMConsoleSock: nobody} {
		st, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Sys().(*syscall.Stat_t).Uid; got != uid {
			t.Errorf("%s owned by %d, want %d", name, got, uid)
		}
	}
}
