package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// render prints args one option per line, the way the golden strings read.
func render(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			if strings.HasPrefix(a, "-") {
				b.WriteByte('\n')
			} else {
				b.WriteByte(' ')
			}
		}
		b.WriteString(a)
	}
	return b.String()
}

func baseSpec() vmm.Spec {
	return vmm.Spec{
		ID: "abc123", Dir: "/state/vms/abc123", VCPU: 2, MemoryMiB: 512,
		Kernel: "/state/kernels/k/vmlinuz", Initrd: "/state/kernels/k/initramfs.img",
		Cmdline: "console=ttyS0 root=/dev/vda rw",
		Disks: []vmm.Disk{
			{Path: "/state/vms/abc123/root.ext4"},
			{Path: "/state/vms/abc123/odd,name.qcow2", Format: "qcow2", ReadOnly: true},
		},
		Tap: "bgr-abc123", MAC: "02:BA:AC:1E:00:02",
	}
}

func TestBuildArgsTCG(t *testing.T) {
	got, err := buildArgs(baseSpec(), AccelTCG, 2445406)
	if err != nil {
		t.Fatal(err)
	}
	want := `-name guest=banger-abc123
-M microvm,pit=on,pic=on,rtc=on,memory-backend=mem
-accel tcg
-cpu max
-object memory-backend-file,id=mem,size=512M,mem-path=/state/vms/abc123/mem,share=on
-m 512
-smp 2
-nodefaults
-no-user-config
-display none
-no-reboot
-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny
-monitor none
-S
-chardev socket,id=console,path=/state/vms/abc123/console.sock,server=on,wait=off
-serial chardev:console
-chardev socket,id=qmp,path=/state/vms/abc123/qmp.sock,server=on,wait=off
-mon chardev=qmp,mode=control
-pidfile /state/vms/abc123/vmm.pid
-kernel /state/kernels/k/vmlinuz
-initrd /state/kernels/k/initramfs.img
-append console=ttyS0 root=/dev/vda rw tsc_early_khz=2445406
-drive id=d0,file=/state/vms/abc123/root.ext4,format=raw,if=none,cache=writeback,discard=unmap
-device virtio-blk-device,drive=d0
-drive id=d1,file=/state/vms/abc123/odd,,name.qcow2,format=qcow2,if=none,cache=writeback,readonly=on
-device virtio-blk-device,drive=d1
-netdev tap,id=n0,ifname=bgr-abc123,script=no,downscript=no
-device virtio-net-device,netdev=n0,mac=02:ba:ac:1e:00:02
-device virtio-serial-device
-chardev socket,id=agent,path=/state/vms/abc123/agent.sock,server=on,wait=off
-device virtserialport,chardev=agent,name=banger.agent`
	if r := render(got); r != want {
		t.Errorf("args:\n%s\nwant:\n%s", r, want)
	}
}

func TestBuildArgsKVMMinimal(t *testing.T) {
	s := vmm.Spec{ID: "x", Dir: "/d", VCPU: 1, MemoryMiB: 128, Kernel: "/k", Cmdline: " console=ttyS0 "}
	got, err := buildArgs(s, AccelKVM, 2445406)
	if err != nil {
		t.Fatal(err)
	}
	want := `-name guest=banger-x
-M microvm,memory-backend=mem
-accel kvm
-cpu host
-object memory-backend-file,id=mem,size=128M,mem-path=/d/mem,share=on
-m 128
-smp 1
-nodefaults
-no-user-config
-display none
-no-reboot
-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny
-monitor none
-S
-chardev socket,id=console,path=/d/console.sock,server=on,wait=off
-serial chardev:console
-chardev socket,id=qmp,path=/d/qmp.sock,server=on,wait=off
-mon chardev=qmp,mode=control
-pidfile /d/vmm.pid
-kernel /k
-append console=ttyS0
-device virtio-serial-device
-chardev socket,id=agent,path=/d/agent.sock,server=on,wait=off
-device virtserialport,chardev=agent,name=banger.agent`
	if r := render(got); r != want {
		t.Errorf("args:\n%s\nwant:\n%s", r, want)
	}
}

func TestCmdline(t *testing.T) {
	cases := []struct {
		base  string
		accel Accel
		khz   int
		want  string
	}{
		{"console=ttyS0", AccelTCG, 1000, "console=ttyS0 tsc_early_khz=1000"},
		{"console=ttyS0", AccelTCG, 0, "console=ttyS0"},
		{"console=ttyS0", AccelKVM, 1000, "console=ttyS0"},
		{"", AccelTCG, 1000, "tsc_early_khz=1000"},
		// The caller's own value wins.
		{"tsc_early_khz=5 quiet", AccelTCG, 1000, "tsc_early_khz=5 quiet"},
	}
	for _, c := range cases {
		if got := cmdline(c.base, c.accel, c.khz); got != c.want {
			t.Errorf("cmdline(%q,%s,%d) = %q, want %q", c.base, c.accel, c.khz, got, c.want)
		}
	}
}

func TestValidateRejectsHostileSpecs(t *testing.T) {
	long := "/" + strings.Repeat("d", 120)
	cases := map[string]func(*vmm.Spec){
		"empty id":            func(s *vmm.Spec) { s.ID = "" },
		"id with comma":       func(s *vmm.Spec) { s.ID = "a,b=c" },
		"id with slash":       func(s *vmm.Spec) { s.ID = "../x" },
		"id with space":       func(s *vmm.Spec) { s.ID = "a b" },
		"relative dir":        func(s *vmm.Spec) { s.Dir = "vms/x" },
		"dir with newline":    func(s *vmm.Spec) { s.Dir = "/a\nb" },
		"dir too long":        func(s *vmm.Spec) { s.Dir = long },
		"zero vcpu":           func(s *vmm.Spec) { s.VCPU = 0 },
		"huge vcpu":           func(s *vmm.Spec) { s.VCPU = 1000 },
		"tiny memory":         func(s *vmm.Spec) { s.MemoryMiB = 1 },
		"negative memory":     func(s *vmm.Spec) { s.MemoryMiB = -5 },
		"no kernel":           func(s *vmm.Spec) { s.Kernel = "" },
		"relative kernel":     func(s *vmm.Spec) { s.Kernel = "vmlinuz" },
		"relative initrd":     func(s *vmm.Spec) { s.Initrd = "./initrd" },
		"nul in cmdline":      func(s *vmm.Spec) { s.Cmdline = "a\x00b" },
		"newline in cmdline":  func(s *vmm.Spec) { s.Cmdline = "a\nb" },
		"relative disk":       func(s *vmm.Spec) { s.Disks[0].Path = "root.ext4" },
		"empty disk":          func(s *vmm.Spec) { s.Disks[0].Path = "" },
		"bad format":          func(s *vmm.Spec) { s.Disks[0].Format = "raw,file=/etc/shadow" },
		"vmdk format":         func(s *vmm.Spec) { s.Disks[0].Format = "vmdk" },
		"too many disks":      func(s *vmm.Spec) { s.Disks = make([]vmm.Disk, 17) },
		"tap without mac":     func(s *vmm.Spec) { s.MAC = "" },
		"mac without tap":     func(s *vmm.Spec) { s.Tap = "" },
		"tap with comma":      func(s *vmm.Spec) { s.Tap = "t,script=/x" },
		"tap too long":        func(s *vmm.Spec) { s.Tap = "bgr-0123456789ab" },
		"tap with slash":      func(s *vmm.Spec) { s.Tap = "a/b" },
		"mac with option":     func(s *vmm.Spec) { s.MAC = "02:00:00:00:00:01,x=y" },
		"multicast mac":       func(s *vmm.Spec) { s.MAC = "03:00:00:00:00:01" },
		"eui64 mac":           func(s *vmm.Spec) { s.MAC = "02:00:00:00:00:00:00:01" },
		"negative uid":        func(s *vmm.Spec) { s.UID = -1 },
		"nul in disk path":    func(s *vmm.Spec) { s.Disks[1].Path = "/a\x00" },
		"newline in initrd":   func(s *vmm.Spec) { s.Initrd = "/a\n-drive" },
		"carriage in cmdline": func(s *vmm.Spec) { s.Cmdline = "a\rb" },
	}
	if err := validate(baseSpec()); err != nil {
		t.Fatalf("base spec: %v", err)
	}
	for name, mut := range cases {
		s := baseSpec()
		s.Disks = append([]vmm.Disk(nil), s.Disks...)
		mut(&s)
		if err := validate(s); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: validate = %v, want ErrInvalid", name, err)
		}
	}
}

func TestBuildArgsCmdlineTooLong(t *testing.T) {
	s := baseSpec()
	s.Cmdline = strings.Repeat("x", 2040)
	if _, err := buildArgs(s, AccelTCG, 2445406); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	if _, err := buildArgs(s, AccelKVM, 0); err != nil {
		t.Fatalf("2040 bytes under kvm: %v", err)
	}
	if _, err := buildArgs(s, Accel("hvf"), 0); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("unknown accel: %v", err)
	}
}

func TestParseCPUkHz(t *testing.T) {
	good := "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu MHz\t\t: 2445.406\ncache size\t: 1 KB\n\nprocessor\t: 1\ncpu MHz\t\t: 1200.000\n"
	if k, err := parseCPUkHz(good); err != nil || k != 2445406 {
		t.Fatalf("parse = %d, %v", k, err)
	}
	for _, bad := range []string{"", "processor: 0\n", "cpu MHz : fast\n", "cpu MHz : -1\n", "cpu MHz : NaN\n",
		"cpu MHz : 1e300\n", "cpu MHz : 0\n", "cpu MHz\n"} {
		if k, err := parseCPUkHz(bad); err == nil {
			t.Errorf("parse(%q) = %d, want error", bad, k)
		}
	}
}

// fakeRunner stands in for the host: Start plays a QEMU that writes its pid
// file and serves QMP (or dies at once), Run plays the KVM probe.
type fakeRunner struct {
	mu       sync.Mutex
	started  []system.ProcSpec
	ran      [][]string
	die      string // when set, Start writes this to the log and returns a dead pid
	deadPID  int
	status   string
	probeOut string // when set, Run fails with it; else Run blocks until ctx ends
	lns      []net.Listener
	pids     []int
}

func (f *fakeRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	f.ran = append(f.ran, append([]string{name}, args...))
	f.mu.Unlock()
	if f.probeOut != "" {
		return []byte(f.probeOut), &system.ExitError{Cmd: name, Code: 134, Output: f.probeOut}
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

func argAfter(args []string, flag, prefix string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && strings.HasPrefix(args[i+1], prefix) {
			v := args[i+1]
			if prefix != "" {
				v = strings.TrimPrefix(v, prefix)
				v, _, _ = strings.Cut(v, ",")
			}
			return v
		}
	}
	return ""
}

func (f *fakeRunner) Start(ctx context.Context, spec system.ProcSpec) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.started = append(f.started, spec)
	if f.die != "" {
		if err := os.WriteFile(spec.Stdout, []byte(f.die+"\n"), 0o600); err != nil {
			return 0, err
		}
		return f.deadPID, nil
	}
	pidFile := argAfter(spec.Args, "-pidfile", "")
	sock := argAfter(spec.Args, "-chardev", "socket,id=qmp,path=")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return 0, err
	}
	f.lns = append(f.lns, ln)
	go serveQMP(ln, f.status)
	// The serial console socket: accepted and left silent.
	cons, err := net.Listen("unix", argAfter(spec.Args, "-chardev", "socket,id=console,path="))
	if err != nil {
		return 0, err
	}
	f.lns = append(f.lns, cons)
	go func() {
		for {
			c, err := cons.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	// A harmless real process stands in for QEMU, so Alive and Kill act on it.
	pid, err := system.Exec{}.Start(ctx, system.ProcSpec{Path: "sh", Args: []string{"-c", "sleep 30; true", "sh", "-pidfile", pidFile}})
	if err != nil {
		return 0, err
	}
	f.pids = append(f.pids, pid)
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return 0, err
	}
	return pid, nil
}

func (f *fakeRunner) close() {
	for _, ln := range f.lns {
		ln.Close()
	}
	for _, pid := range f.pids {
		_ = vmm.KillProcess(pid, anyProcess)
	}
}

func serveQMP(ln net.Listener, status string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			fmt.Fprintln(c, `{"QMP": {"version": {}, "capabilities": []}}`)
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				var req struct{ Execute string }
				_ = json.Unmarshal(sc.Bytes(), &req)
				switch req.Execute {
				case "qmp_capabilities":
					fmt.Fprintln(c, `{"return": {}}`)
				case "cont":
					fmt.Fprintln(c, `{"return": {}}`)
				case "query-status":
					fmt.Fprintln(c, `{"timestamp": {"seconds": 1}, "event": "RESUME"}`)
					fmt.Fprintf(c, `{"return": {"status": %q, "running": true}}`+"\n", status)
				default:
					fmt.Fprintln(c, `{"error": {"class": "CommandNotFound", "desc": "nope"}}`)
				}
			}
		}()
	}
}

func testDriver(t *testing.T, r *fakeRunner) *Driver {
	t.Helper()
	d := New(r, nil)
	d.lookPath = func(name string) (string, error) { return "/usr/bin/" + name, nil }
	d.Accel = AccelTCG
	d.TSCkHz = 1000
	return d
}

func specIn(t *testing.T) vmm.Spec {
	dir, err := os.MkdirTemp("", "bq") // short: the socket path must fit sun_path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	k := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(k, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	return vmm.Spec{ID: "t1", Dir: dir, VCPU: 1, MemoryMiB: 64, Kernel: k, UID: 1234, GID: 1234}
}

func TestStartWaitsForQMPRunning(t *testing.T) {
	r := &fakeRunner{status: "running"}
	defer r.close()
	d := testDriver(t, r)
	s := specIn(t)
	// Leftovers of a previous run must not confuse the launch.
	if err := os.WriteFile(filepath.Join(s.Dir, "console.log"), []byte("old boot\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pid, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if pid != r.pids[0] || !d.Alive(pid) {
		t.Fatalf("pid = %d, fake started %v", pid, r.pids)
	}
	sp := r.started[0]
	if sp.Path != "/usr/bin/qemu-system-x86_64" || sp.UID != 1234 || sp.GID != 1234 ||
		sp.Stdout != filepath.Join(s.Dir, "vmm.log") || sp.Dir != s.Dir {
		t.Fatalf("proc spec = %+v", sp)
	}
	if got := argAfter(sp.Args, "-append", ""); got != "tsc_early_khz=1000" {
		t.Fatalf("append = %q", got)
	}
	waitArgs(t, pid, filepath.Join(s.Dir, "vmm.pid"))
	if _, err := d.Start(context.Background(), s); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("second Start = %v, want ErrBusy", err)
	}
	console := filepath.Join(s.Dir, "console.log")
	if b, _ := os.ReadFile(console); len(b) != 0 {
		t.Fatalf("console log not truncated: %q", b)
	}
	// The daemon writes the console log (from the socket), never the VMM user.
	st, err := os.Stat(console)
	if err != nil {
		t.Fatal(err)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; int(uid) != os.Geteuid() {
		t.Fatalf("console log owner %d, want %d", uid, os.Geteuid())
	}
}

func TestStartReportsEarlyDeathWithConsole(t *testing.T) {
	r := &fakeRunner{die: "qemu-system-x86_64: -drive id=d0: Could not open 'x': Permission denied", deadPID: deadPID(t)}
	d := testDriver(t, r)
	_, err := d.Start(context.Background(), specIn(t))
	if err == nil || !strings.Contains(err.Error(), "Permission denied") || !strings.Contains(err.Error(), "exited during start") {
		t.Fatalf("err = %v", err)
	}
}

func TestStartRejectsBadStatus(t *testing.T) {
	r := &fakeRunner{status: "internal-error"}
	defer r.close()
	d := testDriver(t, r)
	_, err := d.Start(context.Background(), specIn(t))
	if err == nil || !strings.Contains(err.Error(), "internal-error") {
		t.Fatalf("err = %v", err)
	}
	// The failed launch must not leave its VMM behind.
	waitDead(t, r.pids[0])
}

func TestStartMissingBinaryAndFiles(t *testing.T) {
	d := testDriver(t, &fakeRunner{})
	d.lookPath = func(string) (string, error) { return "", errors.New("not on PATH") }
	if _, err := d.Start(context.Background(), specIn(t)); !errors.Is(err, vmm.ErrNoVMM) {
		t.Fatalf("err = %v, want ErrNoVMM", err)
	}
	d = testDriver(t, &fakeRunner{})
	s := specIn(t)
	s.Disks = []vmm.Disk{{Path: filepath.Join(s.Dir, "missing.ext4")}}
	if _, err := d.Start(context.Background(), s); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	s = specIn(t)
	s.ID = "bad,id"
	if _, err := d.Start(context.Background(), s); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
}

func TestProbeAccel(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	newD := func(r *fakeRunner, dev string) *Driver {
		d := New(r, nil)
		d.lookPath = func(name string) (string, error) { return "/usr/bin/" + name, nil }
		d.kvmDevice = dev
		d.probeLimit = 50 * time.Millisecond
		return d
	}

	// Nested PVM host: QEMU aborts at once.
	r := &fakeRunner{probeOut: "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\nqemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion failed.\n"}
	d := newD(r, dev)
	a, why := d.ProbeAccel(context.Background())
	if a != AccelTCG || !strings.Contains(why, "failed to set MSR 0x10a") {
		t.Fatalf("PVM host: %s (%s)", a, why)
	}
	if a, _ := d.ProbeAccel(context.Background()); a != AccelTCG || len(r.ran) != 1 {
		t.Fatalf("second probe ran qemu again (%d runs) or changed (%s)", len(r.ran), a)
	}
	if !strings.Contains(strings.Join(r.ran[0], " "), "-accel kvm -cpu host") {
		t.Fatalf("probe args: %v", r.ran[0])
	}
	// Firecracker's question reuses the answer.
	if ok, why := d.ProbeKVM(context.Background()); ok || !strings.HasPrefix(why, "kvm unusable (qemu-system-x86_64: error: failed to set MSR 0x10a") ||
		strings.Contains(why, "using tcg") || len(r.ran) != 1 {
		t.Fatalf("ProbeKVM on a PVM host: %v %q (%d runs)", ok, why, len(r.ran))
	}
	// QEMU told to use TCG still probes KVM for it, once.
	r = &fakeRunner{}
	d = newD(r, dev)
	d.Accel = AccelTCG
	for range 2 {
		if ok, why := d.ProbeKVM(context.Background()); !ok || !strings.Contains(why, "probe guest ran") || len(r.ran) != 1 {
			t.Fatalf("ProbeKVM with --accel tcg: %v %q (%d runs)", ok, why, len(r.ran))
		}
	}
	// No QEMU to probe with: not probed, not refused.
	d = newD(&fakeRunner{}, dev)
	d.lookPath = func(name string) (string, error) { return "", errors.New("not found") }
	if ok, why := d.ProbeKVM(context.Background()); !ok || !strings.HasPrefix(why, "not probed: ") {
		t.Fatalf("ProbeKVM without qemu: %v %q", ok, why)
	}

	// Working KVM: the probe guest is still running at the deadline.
	d = newD(&fakeRunner{}, dev)
	if a, why := d.ProbeAccel(context.Background()); a != AccelKVM {
		t.Fatalf("working kvm: %s (%s)", a, why)
	}

	// No /dev/kvm.
	r = &fakeRunner{}
	d = newD(r, filepath.Join(t.TempDir(), "nokvm"))
	if a, why := d.ProbeAccel(context.Background()); a != AccelTCG || !strings.Contains(why, "kvm unavailable") || len(r.ran) != 0 {
		t.Fatalf("no kvm: %s (%s), runs %d", a, why, len(r.ran))
	}

	// A cancelled probe is not cached.
	d = newD(&fakeRunner{}, dev)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if a, _ := d.ProbeAccel(ctx); a != AccelTCG {
		t.Fatalf("cancelled probe: %s", a)
	}
	if a, _ := d.ProbeAccel(context.Background()); a != AccelKVM {
		t.Fatalf("probe after cancel: %s", a)
	}
}

func TestFindMatchesOnlyThisVM(t *testing.T) {
	d := New(system.Exec{}, nil)
	s := vmm.Spec{Dir: t.TempDir()}
	other := vmm.Spec{Dir: t.TempDir()}
	pidFile := filepath.Join(s.Dir, "vmm.pid")

	if _, ok := d.Find(s); ok {
		t.Fatal("Find with no pid file and no process")
	}
	// A live process that is not ours (this test binary) behind the pid file.
	writePID(t, pidFile, os.Getpid())
	if _, ok := d.Find(s); ok {
		t.Fatal("Find matched a reused pid")
	}

	// A real process carrying "-pidfile <dir>/vmm.pid" like QEMU does; the
	// trailing "; true" keeps sh from exec'ing sleep and dropping the args.
	pid, err := system.Exec{}.Start(context.Background(), system.ProcSpec{
		Path: "sh", Args: []string{"-c", "sleep 30; true", "sh", "-pidfile", pidFile},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vmm.KillProcess(pid, anyProcess) })
	waitArgs(t, pid, pidFile)
	writePID(t, pidFile, pid)
	if got, ok := d.Find(s); !ok || got != pid {
		t.Fatalf("Find = %d,%v want %d", got, ok, pid)
	}
	if _, ok := d.Find(other); ok {
		t.Fatal("Find matched another VM's dir")
	}
	// Garbage or lost pid file: the /proc scan still finds it.
	for _, content := range []string{"", "garbage", "-1", "99999999999999", fmt.Sprint(os.Getpid())} {
		if err := os.WriteFile(pidFile, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, ok := d.Find(s); !ok || got != pid {
			t.Fatalf("pid file %q: Find = %d,%v want %d", content, got, ok, pid)
		}
	}
	if !d.Alive(pid) {
		t.Fatal("Alive = false for a running process")
	}
	if err := d.Kill(pid); err != nil {
		t.Fatal(err)
	}
	waitDead(t, pid)
	if got, ok := d.Find(s); ok {
		t.Fatalf("Find after Kill = %d, true", got)
	}
	if err := d.Kill(pid); err != nil {
		t.Fatalf("Kill of a gone process: %v", err)
	}
	if _, ok := d.Find(vmm.Spec{Dir: "relative"}); ok {
		t.Fatal("Find accepted a relative dir")
	}
}

// anyProcess is the identity check of test cleanups that kill their own child.
func anyProcess([]string) bool { return true }

func TestShutdownSendsTerm(t *testing.T) {
	d := New(system.Exec{}, nil)
	s := vmm.Spec{ID: "t", Dir: t.TempDir()}
	pidFile := filepath.Join(s.Dir, "vmm.pid")
	pid, err := system.Exec{}.Start(context.Background(), system.ProcSpec{
		Path: "sh", Args: []string{"-c", "sleep 30; true", "sh", "-pidfile", pidFile},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vmm.KillProcess(pid, anyProcess) })
	waitArgs(t, pid, pidFile)
	writePID(t, pidFile, pid)
	if got, ok := d.Find(s); !ok || got != pid {
		t.Fatalf("Find = %d, %v", got, ok)
	}
	if err := d.Shutdown(context.Background(), pid); err != nil {
		t.Fatal(err)
	}
	waitDead(t, pid)
	if err := d.Shutdown(context.Background(), pid); err != nil {
		t.Fatalf("Shutdown of a gone process: %v", err)
	}
	if err := d.Kill(0); err == nil {
		t.Fatal("Kill(0) must not signal the process group")
	}
	if err := d.Shutdown(context.Background(), -1); err == nil {
		t.Fatal("Shutdown(-1) must not signal every process")
	}
}

func writePID(t *testing.T, path string, pid int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func waitArgs(t *testing.T, pid int, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if args, _ := vmm.ProcessArgs(pid); vmm.HasArgPair(args, "-pidfile", want) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("pid %d never showed -pidfile %s", pid, want)
}

func waitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for vmm.ProcessAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still alive", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// deadPID returns the pid of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	pid, err := system.Exec{}.Start(context.Background(), system.ProcSpec{Path: "true"})
	if err != nil {
		t.Fatal(err)
	}
	waitDead(t, pid)
	return pid
}
