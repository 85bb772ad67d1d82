package privileged

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
)

// startRecorder is the command-runner seam: it records what would be
// started and hands out pids.
type startRecorder struct {
	mu    sync.Mutex
	specs []system.ProcSpec
}

func (r *startRecorder) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return nil, errors.New("unexpected Run " + name)
}

func (r *startRecorder) Start(ctx context.Context, s system.ProcSpec) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.specs = append(r.specs, s)
	return 4242 + len(r.specs), nil
}

const jailOwner = 65534

type jailFixture struct {
	owner, base string
	rec         *startRecorder
	local       *Local
	req         firecracker.JailRequest
}

func newJailFixture(t *testing.T) *jailFixture {
	t.Helper()
	testenv.RequireRoot(t) // real owners, linkat(AT_EMPTY_PATH)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	owner := filepath.Join(dir, "owner", "banger")
	vm := filepath.Join(owner, "vms", "0123456789ab")
	if err := os.MkdirAll(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(owner, "vmlinux"), filepath.Join(vm, "root.ext4")} {
		if err := os.WriteFile(p, []byte("bytes of "+filepath.Base(p)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, jailOwner, jailOwner); err != nil {
			t.Fatal(err)
		}
	}
	rec := &startRecorder{}
	f := &jailFixture{owner: owner, base: filepath.Join(dir, "jail"), rec: rec}
	f.local = &Local{Runner: rec, Jail: &JailerConfig{Jailer: "/usr/libexec/banger/jailer",
		Firecracker: "/usr/libexec/banger/firecracker", ChrootBase: f.base, OwnerDir: owner, GID: jailOwner}}
	f.req = firecracker.JailRequest{ID: "0123456789ab", UID: jailOwner, VCPU: 2, MemoryMiB: 512, Links: []firecracker.JailLink{
		{Src: filepath.Join(owner, "vmlinux"), Dst: firecracker.JailKernel, ReadOnly: true},
		{Src: filepath.Join(vm, "root.ext4"), Dst: firecracker.JailDiskName(0)},
	}}
	return f
}

// The jail a launch leaves: root-owned chroot, run/ owned by the VM's uid,
// the very inodes of the owner's files linked in, and the jailer started
// as root with the argv the firecracker package builds, output to the
// jail's console log.
func TestLaunchJailerLayout(t *testing.T) {
	f := newJailFixture(t)
	res, err := f.local.LaunchJailer(context.Background(), f.req)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.base, "firecracker", "0123456789ab")
	if res.PID != 4243 || res.Dir != dir {
		t.Errorf("result %+v", res)
	}
	root := filepath.Join(dir, "root")
	check := func(p string, uid uint32, mode uint32) {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != uid || st.Mode&0o7777 != mode {
			t.Errorf("%s: uid %d mode %o, want uid %d mode %o", p, st.Uid, st.Mode&0o7777, uid, mode)
		}
	}
	check(root, 0, 0o755)
	check(filepath.Join(root, "run"), jailOwner, 0o700)
	check(filepath.Join(dir, "console.log"), jailOwner, 0o640)
	for _, l := range f.req.Links {
		var a, b unix.Stat_t
		if unix.Stat(l.Src, &a) != nil || unix.Stat(filepath.Join(root, l.Dst), &b) != nil || a.Ino != b.Ino || a.Dev != b.Dev {
			t.Errorf("%s is not %s linked in", filepath.Join(root, l.Dst), l.Src)
		}
	}
	if len(f.rec.specs) != 1 {
		t.Fatalf("started %d processes", len(f.rec.specs))
	}
	s := f.rec.specs[0]
	want := "--id 0123456789ab --exec-file /usr/libexec/banger/firecracker --uid 65534 --gid 65534 --chroot-base-dir " +
		f.base + " -- --api-sock /run/fc.sock"
	if s.Path != "/usr/libexec/banger/jailer" || strings.Join(s.Args, " ") != want || s.UID != 0 ||
		s.Stdout != filepath.Join(dir, "console.log") {
		t.Errorf("started %+v\nwant args %s", s, want)
	}
	// A second launch of the same VM starts from a fresh jail.
	if _, err := f.local.LaunchJailer(context.Background(), f.req); err != nil {
		t.Fatal(err)
	}
}

// Sources the owner could not hand over are refused and leave no jail:
// outside the owner's dir, through a symlink, or owned by someone else.
func TestLaunchJailerRefusesSources(t *testing.T) {
	f := newJailFixture(t)
	vm := filepath.Dir(f.req.Links[1].Src)
	if err := os.Symlink("/etc/shadow", filepath.Join(vm, "shadow.img")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(vm, filepath.Join(f.owner, "vmlink")); err != nil {
		t.Fatal(err)
	}
	// A FIFO owned by the owner: opening it blocking would hang the helper.
	fifo := filepath.Join(vm, "fifo.img")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(fifo, f.req.UID, f.req.UID); err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(vm, "root-owned.img")
	if err := os.WriteFile(rootFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct{ src, why string }{
		"outside owner dir": {"/etc/shadow", "outside the owner's banger directory"},
		"symlink file":      {filepath.Join(vm, "shadow.img"), "symlink"},
		"symlinked dir":     {filepath.Join(f.owner, "vmlink", "root.ext4"), "symlink"},
		"root's file":       {rootFile, "owned by uid 0"},
		"fifo":              {fifo, "not a regular file"},
		"the dir itself":    {f.owner, "outside the owner's banger directory"},
	}
	for name, tc := range cases {
		q := f.req
		q.Links = append([]firecracker.JailLink(nil), f.req.Links...)
		q.Links[1].Src = tc.src
		_, err := f.local.LaunchJailer(context.Background(), q)
		if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s: %v, want ErrInvalid saying %q", name, err, tc.why)
		}
	}
	// The kernel is opened read-only: without O_NONBLOCK that open of a FIFO
	// would block until a writer came.
	q := f.req
	q.Links = append([]firecracker.JailLink(nil), f.req.Links...)
	q.Links[0].Src = fifo
	done := make(chan error, 1)
	go func() { _, err := f.local.LaunchJailer(context.Background(), q); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("read-only fifo: %v, want ErrInvalid saying not a regular file", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a FIFO source blocked the helper")
	}
	if len(f.rec.specs) != 0 {
		t.Errorf("refused launches started %d processes", len(f.rec.specs))
	}
	if _, err := os.Stat(filepath.Join(f.base, "firecracker", "0123456789ab")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused launch left a jail: %v", err)
	}
}

type fakeJailPriv struct {
	*fakePriv
	got []firecracker.JailRequest
}

func (f *fakeJailPriv) LaunchJailer(ctx context.Context, q firecracker.JailRequest) (firecracker.JailResult, error) {
	f.got = append(f.got, q)
	return firecracker.JailResult{PID: 77, Dir: "/jail/" + q.ID}, nil
}

// Through the helper: a valid launch_jailer reaches the implementation
// unchanged and its result comes back; one completion line is logged.
func TestHelperLaunchJailer(t *testing.T) {
	impl := &fakeJailPriv{fakePriv: newFake()}
	c, logs, _ := startHelper(t, os.Getuid(), impl)
	q := firecracker.JailRequest{ID: "0123456789ab", UID: os.Getuid(), VCPU: 1, MemoryMiB: 64, Links: []firecracker.JailLink{
		{Src: "/o/vmlinux", Dst: firecracker.JailKernel, ReadOnly: true}, {Src: "/o/initrd", Dst: firecracker.JailInitrd, ReadOnly: true},
	}}
	res, err := c.LaunchJailer(context.Background(), q)
	if err != nil || res.PID != 77 || res.Dir != "/jail/0123456789ab" {
		t.Fatalf("launch: %+v, %v", res, err)
	}
	if len(impl.got) != 1 || impl.got[0].ID != q.ID || len(impl.got[0].Links) != 2 || impl.got[0].Links[1] != q.Links[1] {
		t.Errorf("implementation got %+v", impl.got)
	}
	if !strings.Contains(logs.String(), `"msg":"helper rpc completed","op":"launch_jailer"`) {
		t.Errorf("logs:\n%s", logs)
	}
}

// A helper owned by root (all-in-one misuse) still never jails as root:
// the jail refuses uid 0 before anything is made.
func TestLaunchJailerNeverRoot(t *testing.T) {
	f := newJailFixture(t)
	q := f.req
	q.UID = 0
	if _, err := f.local.LaunchJailer(context.Background(), q); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "never root") {
		t.Fatalf("err = %v", err)
	}
	if len(f.rec.specs) != 0 {
		t.Error("started a jailer for root")
	}
}
