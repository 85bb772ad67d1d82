package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
	"github.com/banger-dev/banger/internal/vmm"
)

func testJail() Jail {
	return Jail{Jailer: "/usr/local/libexec/banger/jailer", Firecracker: "/usr/local/libexec/banger/firecracker",
		ChrootBase: "/var/lib/banger/jail", ID: "0123456789ab", UID: 1000, GID: 1000, MemoryMiB: 512, VCPU: 2}
}

// The exact jailer command line for a spec: jailer options, "--", then
// Firecracker's. Never --no-seccomp or --seccomp-filter.
func TestJailArgsGolden(t *testing.T) {
	j := testJail()
	const want = "--id 0123456789ab --exec-file /usr/local/libexec/banger/firecracker --uid 1000 --gid 1000 " +
		"--chroot-base-dir /var/lib/banger/jail -- --api-sock /run/fc.sock"
	if got := strings.Join(j.Args(), " "); got != want {
		t.Errorf("args:\n%s\nwant:\n%s", got, want)
	}
	j.NetNS, j.CgroupV2 = "/run/netns/banger", true
	const wantFull = "--id 0123456789ab --exec-file /usr/local/libexec/banger/firecracker --uid 1000 --gid 1000 " +
		"--chroot-base-dir /var/lib/banger/jail --netns /run/netns/banger --cgroup-version 2 " +
		"--cgroup memory.max=805306368 --cgroup cpu.max=200000 100000 -- --api-sock /run/fc.sock"
	if got := strings.Join(j.Args(), " "); got != wantFull {
		t.Errorf("args:\n%s\nwant:\n%s", got, wantFull)
	}
	for _, a := range j.Args() {
		if strings.Contains(a, "seccomp") {
			t.Errorf("jailer args touch seccomp: %q", a)
		}
	}
	if got, want := j.Root(), "/var/lib/banger/jail/firecracker/0123456789ab/root"; got != want {
		t.Errorf("root = %s, want %s", got, want)
	}
	if err := j.Check(); err != nil {
		t.Errorf("check: %v", err)
	}
}

func TestJailCheckRejects(t *testing.T) {
	cases := map[string]func(*Jail){
		"root uid":         func(j *Jail) { j.UID = 0 },
		"root gid":         func(j *Jail) { j.GID = 0 },
		"relative jailer":  func(j *Jail) { j.Jailer = "jailer" },
		"unclean base":     func(j *Jail) { j.ChrootBase = "/var/lib/../tmp" },
		"not firecracker":  func(j *Jail) { j.Firecracker = "/bin/sh" },
		"id with slash":    func(j *Jail) { j.ID = "../x" },
		"id too long":      func(j *Jail) { j.ID = strings.Repeat("a", 65) },
		"socket too long":  func(j *Jail) { j.ChrootBase = "/" + strings.Repeat("b", 80) },
		"empty id":         func(j *Jail) { j.ID = "" },
		"id with newline":  func(j *Jail) { j.ID = "a\nb" },
		"relative fc path": func(j *Jail) { j.Firecracker = "bin/firecracker" },
	}
	for name, mut := range cases {
		j := testJail()
		mut(&j)
		if err := j.Check(); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func TestJailLayout(t *testing.T) {
	s := vmm.Spec{ID: "abc123", Dir: "/d/vm", VCPU: 2, MemoryMiB: 512, Kernel: "/d/vmlinux", Initrd: "/d/initramfs.img",
		Disks: []vmm.Disk{{Path: "/d/root.ext4"}, {Path: "/d/ro.ext4", ReadOnly: true}}}
	links, in := JailLayout(s)
	want := []JailLink{
		{Src: "/d/vmlinux", Dst: "/vmlinux", ReadOnly: true},
		{Src: "/d/initramfs.img", Dst: "/initrd.img", ReadOnly: true},
		{Src: "/d/root.ext4", Dst: "/disk0.img"},
		{Src: "/d/ro.ext4", Dst: "/disk1.img", ReadOnly: true},
	}
	if !slices.Equal(links, want) {
		t.Errorf("links:\n%v\nwant:\n%v", links, want)
	}
	if in.Kernel != "/vmlinux" || in.Initrd != "/initrd.img" || in.Dir != "/run" ||
		in.Disks[0].Path != "/disk0.img" || !in.Disks[1].ReadOnly || s.Disks[0].Path != "/d/root.ext4" {
		t.Errorf("in-jail spec %+v (host spec %+v)", in, s)
	}
}

const fakeJailEnv = "BANGER_FAKE_FC_JAIL" // "<root>:<uid>"

// enterFakeJail does the jailer's last steps for the fake: chroot, then
// drop to the jail's uid/gid.
func enterFakeJail(v string) error {
	root, uidS, ok := strings.Cut(v, ":")
	uid, err := strconv.Atoi(uidS)
	if !ok || err != nil {
		return fmt.Errorf("bad %s=%q", fakeJailEnv, v)
	}
	if err := unix.Chroot(root); err != nil {
		return err
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Setgroups(nil); err != nil {
		return err
	}
	if err := unix.Setgid(uid); err != nil {
		return err
	}
	return unix.Setuid(uid)
}

// fakeJailer stands in for the privileged side: it lays the jail out as
// privileged.Local does (run/ owned by the uid, files hard-linked) and
// starts the fake firecracker the way the jailer execs the real one, with
// the Firecracker arguments after "--" of Jail.Args.
type fakeJailer struct {
	t    *testing.T
	base string
	fc   string // the test binary, linked as "firecracker"
	reqs []JailRequest
}

func (f *fakeJailer) LaunchJailer(ctx context.Context, q JailRequest) (JailResult, error) {
	f.reqs = append(f.reqs, q)
	j := Jail{Jailer: "/nonexistent/jailer", Firecracker: f.fc, ChrootBase: f.base, ID: q.ID, UID: q.UID, GID: q.UID,
		MemoryMiB: q.MemoryMiB, VCPU: q.VCPU}
	if err := j.Check(); err != nil {
		return JailResult{}, err
	}
	run := j.HostPath(JailRunDir)
	if err := os.MkdirAll(run, 0o755); err != nil {
		return JailResult{}, err
	}
	if err := os.Chown(run, q.UID, q.UID); err != nil {
		return JailResult{}, err
	}
	for _, l := range q.Links {
		if err := os.Link(l.Src, j.HostPath(l.Dst)); err != nil {
			return JailResult{}, err
		}
	}
	args := j.Args()
	fcArgs := args[slices.Index(args, "--")+1:]
	pid, err := system.Exec{}.Start(ctx, system.ProcSpec{
		Path:   f.fc,
		Args:   append([]string{"--id", q.ID, "--start-time-us", "1"}, fcArgs...),
		Dir:    "/",
		Stdout: filepath.Join(j.Dir(), JailConsoleLog),
		Env:    []string{fakeJailEnv + "=" + j.Root() + ":" + strconv.Itoa(q.UID)},
	})
	return JailResult{PID: pid, Dir: j.Dir()}, err
}

// wantJailedState is wantState as a jailed Firecracker sees it: every path
// inside the chroot.
const wantJailedState = `machine-config {"mem_size_mib":512,"smt":false,"vcpu_count":2}
boot-source {"boot_args":"console=ttyS0 panic=5 reboot=k pci=off","initrd_path":"/initrd.img","kernel_image_path":"/vmlinux"}
drive d0 {"cache_type":"Writeback","drive_id":"d0","is_read_only":false,"is_root_device":false,"path_on_host":"/disk0.img"}
drive d1 {"cache_type":"Writeback","drive_id":"d1","is_read_only":true,"is_root_device":false,"path_on_host":"/disk1.img"}
network-interface n0 {"guest_mac":"02:ba:ac:1e:00:02","host_dev_name":"bgr-abc123","iface_id":"n0"}
vsock {"guest_cid":3,"uds_path":"/run/fc-vsock.sock"}
serial {"rate_limiter":{"refill_time":1000,"size":262144}}
state Running
`

// A jailed Start against the fake firecracker, really chrooted and running
// as an unprivileged uid: the API socket is inside the chroot, every request
// validates against the spec, every path Firecracker is given resolves
// inside its chroot, Find recognises it by its jail id, Shutdown ends it.
func TestStartJailedFake(t *testing.T) {
	testenv.RequireRoot(t) // chroot and setuid, as the jailer does
	spec := loadSpec(t)
	fc := fakeDriver(t)
	link, _ := fc.binary()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	jl := &fakeJailer{t: t, base: filepath.Join(dir, "jail"), fc: link}
	d := New(system.Exec{}, nil)
	d.Jailer, d.VsockCID = jl, 3
	d.lookPath = func(string) (string, error) { return "", errors.New("the jailed driver must not look up firecracker") }
	s := testSpec(t, dir, false)
	s.UID, s.GID = 65534, 65534
	killOnCleanup(t, d, s)
	ctx := context.Background()
	pid, err := d.Start(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if len(jl.reqs) != 1 || jl.reqs[0].UID != 65534 || jl.reqs[0].ID != s.ID {
		t.Fatalf("jailer requests %+v", jl.reqs)
	}
	root := filepath.Join(jl.base, "firecracker", s.ID, "root")
	sock := filepath.Join(root, "run", APISocket)
	state, err := os.ReadFile(sock + ".state")
	if err != nil {
		t.Fatal(err)
	}
	if string(state) != wantJailedState {
		t.Errorf("state:\n%s\nwant:\n%s", state, wantJailedState)
	}
	validateAll(t, spec, readRequests(t, sock+".requests"))
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil || !strings.Contains(string(st), "\nUid:\t65534\t65534\t65534\t65534\n") {
		t.Errorf("jailed firecracker status (err %v):\n%s", err, st)
	}
	if got, ok := d.Find(s); !ok || got != pid {
		t.Errorf("Find = %d, %v; want %d", got, ok, pid)
	}
	if _, err := d.Start(ctx, s); !errors.Is(err, api.ErrBusy) {
		t.Errorf("second Start: %v, want ErrBusy", err)
	}
	if log := vmm.TailFile(filepath.Join(root, "..", JailConsoleLog), 512); !strings.Contains(log, "fake firecracker: api on /run/fc.sock") {
		t.Errorf("console log = %q", log)
	}
	if err := d.Shutdown(ctx, pid); err != nil {
		t.Fatal(err)
	}
	waitGone(t, d, s)
}
