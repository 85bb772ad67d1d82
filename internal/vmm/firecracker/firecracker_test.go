package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// testSpec returns a Spec whose files exist under dir; the kernel is a
// minimal ELF header unless notELF.
func testSpec(t *testing.T, dir string, notELF bool) vmm.Spec {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	kernel := []byte("\x7fELF\x02\x01\x01")
	if notELF {
		kernel = []byte("MZ bzImage, not a vmlinux")
	}
	must(os.WriteFile(filepath.Join(dir, "vmlinux"), kernel, 0o644))
	must(os.WriteFile(filepath.Join(dir, "initramfs.img"), []byte("cpio"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "root.ext4"), nil, 0o644))
	must(os.WriteFile(filepath.Join(dir, "ro.ext4"), nil, 0o644))
	vmDir := filepath.Join(dir, "vm")
	must(os.MkdirAll(vmDir, 0o755))
	return vmm.Spec{
		ID: "abc123", Dir: vmDir, VCPU: 2, MemoryMiB: 512,
		Kernel: filepath.Join(dir, "vmlinux"), Initrd: filepath.Join(dir, "initramfs.img"),
		Cmdline: "console=ttyS0 panic=5",
		Disks: []vmm.Disk{
			{Path: filepath.Join(dir, "root.ext4")},
			{Path: filepath.Join(dir, "ro.ext4"), ReadOnly: true},
		},
		Tap: "bgr-abc123", MAC: "02:BA:AC:1E:00:02",
	}
}

// expand replaces $D with dir and $V with the vm dir in want.
func expand(want, dir string) string {
	return strings.NewReplacer("$V", filepath.Join(dir, "vm"), "$D", dir).Replace(want)
}

const wantState = `machine-config {"mem_size_mib":512,"smt":false,"vcpu_count":2}
boot-source {"boot_args":"console=ttyS0 panic=5 reboot=k pci=off","initrd_path":"$D/initramfs.img","kernel_image_path":"$D/vmlinux"}
drive d0 {"cache_type":"Writeback","drive_id":"d0","is_read_only":false,"is_root_device":false,"path_on_host":"$D/root.ext4"}
drive d1 {"cache_type":"Writeback","drive_id":"d1","is_read_only":true,"is_root_device":false,"path_on_host":"$D/ro.ext4"}
network-interface n0 {"guest_mac":"02:ba:ac:1e:00:02","host_dev_name":"bgr-abc123","iface_id":"n0"}
vsock {"guest_cid":3,"uds_path":"$V/fc-vsock.sock"}
serial {"rate_limiter":{"refill_time":1000,"size":262144}}
state Running
`

// The configuration steps, run in-process against the fake API: every
// request validates against the spec and the resulting state is the one
// expected.
func TestConfigContract(t *testing.T) {
	spec := loadSpec(t)
	fake, sock := serveFake(t)
	dir := t.TempDir()
	s := testSpec(t, dir, false)
	d := &Driver{VsockCID: 3}
	c := NewClient(sock)
	defer c.Close()
	ctx := context.Background()
	if _, err := c.InstanceInfo(ctx); err != nil {
		t.Fatal(err)
	}
	for _, st := range d.config(s, vmFiles(s.Dir)) {
		if err := st(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	info, err := c.InstanceInfo(ctx)
	if err != nil || info.State != "Running" {
		t.Fatalf("instance info %+v, %v", info, err)
	}
	if err := c.Action(ctx, ActionSendCtrlAltDel); err != nil {
		t.Fatal(err)
	}
	fake.mu.Lock()
	reqs := append([]recorded(nil), fake.requests...)
	got := fake.stateText()
	fake.mu.Unlock()
	validateAll(t, spec, reqs)
	if want := expand(wantState, dir); got != want {
		t.Errorf("state:\n%s\nwant:\n%s", got, want)
	}
	// The fake's answers are spec-shaped too.
	b, _ := json.Marshal(info)
	var v any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	_ = dec.Decode(&v)
	if err := spec.validate(&schema{Ref: "#/definitions/InstanceInfo"}, v, "InstanceInfo"); err != nil {
		t.Error(err)
	}
}

func validateAll(t *testing.T, spec *swagger, reqs []recorded) {
	t.Helper()
	if len(reqs) == 0 {
		t.Fatal("no requests recorded")
	}
	for _, r := range reqs {
		if err := spec.validateRequest(r.Method, r.Path, r.Body); err != nil {
			t.Errorf("request violates the firecracker api spec: %v", err)
		}
	}
}

func TestClientSurfacesFault(t *testing.T) {
	_, sock := serveFake(t)
	c := NewClient(sock)
	defer c.Close()
	err := c.Action(context.Background(), ActionInstanceStart)
	if !errors.Is(err, ErrAPI) {
		t.Fatalf("err = %v, want ErrAPI", err)
	}
	want := "firecracker PUT /actions: firecracker api error: 400 Bad Request: Start microVM error: Cannot start microvm without kernel configuration."
	if err.Error() != want {
		t.Errorf("err:\n%s\nwant:\n%s", err, want)
	}
	err = c.PutBootSource(context.Background(), BootSource{KernelImagePath: "/nonexistent/vmlinux"})
	if !errors.Is(err, ErrAPI) || !strings.Contains(err.Error(), "Invalid kernel path") {
		t.Errorf("err = %v", err)
	}
}

func TestClientNoSocket(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "missing.sock"))
	defer c.Close()
	_, err := c.InstanceInfo(context.Background())
	if err == nil || errors.Is(err, ErrAPI) {
		t.Fatalf("err = %v, want a dial error", err)
	}
}

func TestBootArgs(t *testing.T) {
	cases := map[string]string{
		"":                            "reboot=k panic=1 pci=off",
		" console=ttyS0 ":             "console=ttyS0 reboot=k panic=1 pci=off",
		"panic=5 reboot=t":            "panic=5 reboot=t pci=off",
		"console=ttyS0 pci=off quiet": "console=ttyS0 pci=off quiet reboot=k panic=1",
	}
	for in, want := range cases {
		if got := bootArgs(in); got != want {
			t.Errorf("bootArgs(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidateRejects(t *testing.T) {
	base := vmm.Spec{ID: "x", Dir: "/d", VCPU: 1, MemoryMiB: 128, Kernel: "/k"}
	cases := map[string]func(*vmm.Spec, *Driver){
		"bad id":        func(s *vmm.Spec, _ *Driver) { s.ID = "a/b" },
		"relative dir":  func(s *vmm.Spec, _ *Driver) { s.Dir = "d" },
		"long dir":      func(s *vmm.Spec, _ *Driver) { s.Dir = "/" + strings.Repeat("d", 110) },
		"vcpu 33":       func(s *vmm.Spec, _ *Driver) { s.VCPU = 33 },
		"tiny memory":   func(s *vmm.Spec, _ *Driver) { s.MemoryMiB = 1 },
		"no kernel":     func(s *vmm.Spec, _ *Driver) { s.Kernel = "" },
		"qcow2":         func(s *vmm.Spec, _ *Driver) { s.Disks = []vmm.Disk{{Path: "/a", Format: "qcow2"}} },
		"tap no mac":    func(s *vmm.Spec, _ *Driver) { s.Tap = "t0" },
		"multicast mac": func(s *vmm.Spec, _ *Driver) { s.Tap, s.MAC = "t0", "01:00:00:00:00:01" },
		"cmdline nl":    func(s *vmm.Spec, _ *Driver) { s.Cmdline = "a\nb" },
		"cid 2":         func(_ *vmm.Spec, d *Driver) { d.VsockCID = 2 },
	}
	if err := (&Driver{}).validate(base); err != nil {
		t.Fatalf("base spec: %v", err)
	}
	for name, mut := range cases {
		s, d := base, &Driver{}
		mut(&s, d)
		if err := d.validate(s); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func TestMissingBinary(t *testing.T) {
	d := New(system.Exec{}, nil)
	d.Binary = "banger-no-such-firecracker"
	s := testSpec(t, t.TempDir(), false)
	if _, err := d.Start(context.Background(), s); !errors.Is(err, vmm.ErrNoVMM) {
		t.Fatalf("err = %v, want ErrNoVMM", err)
	}
	if _, err := d.Available(); !errors.Is(err, vmm.ErrNoVMM) {
		t.Fatalf("Available err = %v", err)
	}
}

// fakeDriver returns a driver that launches this test binary as
// "firecracker" (see TestMain).
func fakeDriver(t *testing.T) *Driver {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), DefaultBinary)
	if err := os.Symlink(self, link); err != nil {
		t.Fatal(err)
	}
	d := New(system.Exec{}, nil)
	d.lookPath = func(string) (string, error) { return link, nil }
	return d
}

func killOnCleanup(t *testing.T, d *Driver, s vmm.Spec) {
	t.Cleanup(func() {
		if pid, ok := d.Find(s); ok {
			_ = d.Kill(pid)
		}
	})
}

func waitGone(t *testing.T, d *Driver, s vmm.Spec) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := d.Find(s); !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("fake firecracker still running")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A full Start against the fake firecracker process: configuration as
// expected, every request valid per the spec, pid file and Find agree, and
// Shutdown ends the process.
func TestStartFake(t *testing.T) {
	spec := loadSpec(t)
	d := fakeDriver(t)
	d.VsockCID = 3
	dir := t.TempDir()
	s := testSpec(t, dir, false)
	killOnCleanup(t, d, s)
	ctx := context.Background()
	pid, err := d.Start(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(s.Dir, APISocket)
	state, err := os.ReadFile(sock + ".state")
	if err != nil {
		t.Fatal(err)
	}
	if want := expand(wantState, dir); string(state) != want {
		t.Errorf("state:\n%s\nwant:\n%s", state, want)
	}
	validateAll(t, spec, readRequests(t, sock+".requests"))

	if got, err := vmm.ReadPIDFile(filepath.Join(s.Dir, "vmm.pid")); err != nil || got != pid {
		t.Errorf("pid file = %d, %v; want %d", got, err, pid)
	}
	if got, ok := d.Find(s); !ok || got != pid {
		t.Errorf("Find = %d, %v; want %d", got, ok, pid)
	}
	if !d.Alive(pid) {
		t.Error("not alive")
	}
	if _, err := d.Start(ctx, s); !errors.Is(err, api.ErrBusy) {
		t.Errorf("second Start: %v, want ErrBusy", err)
	}
	if log := vmm.TailFile(filepath.Join(s.Dir, "console.log"), 512); !strings.Contains(log, "fake firecracker: api on") {
		t.Errorf("console log = %q", log)
	}
	if err := d.Shutdown(ctx, pid); err != nil {
		t.Fatal(err)
	}
	waitGone(t, d, s)
}

func readRequests(t *testing.T, path string) []recorded {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []recorded
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r recorded
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// An API error during bring-up (here: a bzImage where Firecracker wants an
// ELF vmlinux) comes back as a clear error and the process is killed.
func TestStartAPIErrorKills(t *testing.T) {
	d := fakeDriver(t)
	s := testSpec(t, t.TempDir(), true)
	killOnCleanup(t, d, s)
	_, err := d.Start(context.Background(), s)
	if !errors.Is(err, ErrAPI) {
		t.Fatalf("err = %v, want ErrAPI", err)
	}
	for _, want := range []string{"vm abc123", "PUT /actions", "400", "failed to load ELF kernel image"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	waitGone(t, d, s)
	if _, err := os.Stat(filepath.Join(s.Dir, "vmm.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file left behind: %v", err)
	}
}

// A VMM that exits at once yields an error carrying the console tail.
func TestStartDiesEarly(t *testing.T) {
	d := fakeDriver(t)
	s := testSpec(t, t.TempDir(), false)
	s.Dir = filepath.Join(s.Dir, "die")
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	killOnCleanup(t, d, s)
	_, err := d.Start(context.Background(), s)
	if err == nil || !strings.Contains(err.Error(), "exited during start") ||
		!strings.Contains(err.Error(), "refusing to run (die)") {
		t.Fatalf("err = %v", err)
	}
}

// A guest flooding its serial console cannot grow the console log past
// ConsoleMaxBytes for longer than one check: the driver trims it and keeps
// the latest output (the fake writes far faster than the rate limit the
// driver configures, so only the trimming bounds it here).
func TestConsoleFloodIsTrimmed(t *testing.T) {
	d := fakeDriver(t)
	dir := filepath.Join(t.TempDir(), "flood") // the fake floods under such a path
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := testSpec(t, dir, false)
	killOnCleanup(t, d, s)
	if _, err := d.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	console := filepath.Join(s.Dir, paths.VMConsoleLog)
	deadline := time.Now().Add(5 * consoleCheck)
	for {
		st, err := os.Stat(console)
		if err != nil {
			t.Fatal(err)
		}
		tail := vmm.TailFile(console, 64)
		if st.Size() <= ConsoleMaxBytes && strings.Contains(tail, "flood-end") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("console log %d bytes (cap %d), tail %q", st.Size(), ConsoleMaxBytes, tail)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, err := os.ReadFile(console)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "[banger: console.log truncated at ") {
		t.Fatalf("no trim marker in the console log (%d bytes)", len(b))
	}
}
