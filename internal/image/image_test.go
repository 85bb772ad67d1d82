package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
)

func needTools(t testing.TB, tools ...string) {
	t.Helper()
	testenv.RequireTools(t, tools...)
}

func needRoot(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t) // real file owners
}

// fakeRunner keeps a log of commands; the ones in fail exit with that code,
// mmdebstrap builds a small tree at its target, the rest run for real.
type fakeRunner struct {
	fail map[string]int
	log  []string
}

func (f *fakeRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	line := name + " " + strings.Join(args, " ")
	f.log = append(f.log, line)
	if code, ok := f.fail[name]; ok {
		return nil, &system.ExitError{Cmd: line, Code: code, Output: "injected failure"}
	}
	if name == "mmdebstrap" {
		return nil, fakeMmdebstrap(args)
	}
	return system.Exec{}.Run(ctx, name, args...)
}

func (f *fakeRunner) Start(context.Context, system.ProcSpec) (int, error) {
	return 0, errors.New("fake runner: start not supported")
}

const dpkgStatus = `Package: base-files
Status: install ok installed
Version: 12.4

Package: removed-one
Status: deinstall ok config-files

Package: openssh-server
Status: install ok installed
Description: multi
 line
`

// fakeMmdebstrap makes what mmdebstrap would leave behind, in miniature: the
// target is the argument after the suite.
func fakeMmdebstrap(args []string) error {
	target := ""
	for i, a := range args {
		if a == DefaultSuite && i+1 < len(args) {
			target = args[i+1]
		}
	}
	if target == "" {
		return errors.New("fake mmdebstrap: no target")
	}
	if slices.Contains(args, "--format=tar") {
		return fakeMmdebstrapTar(target)
	}
	files := map[string]string{
		"var/lib/dpkg/status":          dpkgStatus,
		"etc/ssh/ssh_host_ed25519_key": "SHARED KEY",
		"etc/machine-id":               "",
		"usr/bin/true":                 "ELF",
	}
	for p, c := range files {
		full := filepath.Join(target, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := system.Exec{}.Run(context.Background(), "debugfs", "-R", req, img)
	if err != nil {
		t.Fatalf("debugfs %s: %v", req, err)
	}
	return string(out)
}

var statRE = regexp.MustCompile(`(?s)Type: (\S+)\s+Mode:\s+(\d+).*?User:\s+(\d+)\s+Group:\s+(\d+).*?Links: (\d+)`)

// inode renders debugfs' stat of a path as "type mode uid:gid links".
func inode(t *testing.T, img, p string) string {
	t.Helper()
	m := statRE.FindStringSubmatch(debugfs(t, img, "stat "+p))
	if m == nil {
		return "missing"
	}
	return fmt.Sprintf("%s %s %s:%s %s", m[1], m[2], m[3], m[4], m[5])
}

func emptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("%s is not empty: %v", dir, names)
	}
}

func TestBuildFromDir(t *testing.T) {
	needRoot(t)
	needTools(t, "mkfs.ext4", "debugfs", "cp")
	src := t.TempDir()
	writeTree(t, src, map[string]string{
		"usr/bin/su":                       "setuid binary",
		"usr/bin/sh":                       "-> dash",
		"usr/bin/dash":                     "shell",
		"home/user/notes":                  "private",
		"var/lib/dpkg/status":              dpkgStatus,
		"etc/ssh/ssh_host_ed25519_key":     "SHARED KEY",
		"etc/ssh/ssh_host_ed25519_key.pub": "SHARED KEY.pub",
		"tmp/":                             "",
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Lchown before chmod: chown clears setuid.
	must(os.Chmod(filepath.Join(src, "usr/bin/su"), os.ModeSetuid|0o755))
	must(os.Link(filepath.Join(src, "usr/bin/dash"), filepath.Join(src, "usr/bin/dash2")))
	must(os.Lchown(filepath.Join(src, "home/user"), 1000, 1000))
	must(os.Lchown(filepath.Join(src, "home/user/notes"), 1000, 1000))
	must(os.Chmod(filepath.Join(src, "home/user"), 0o700))
	must(os.Chmod(filepath.Join(src, "tmp"), os.ModeSticky|0o777))
	agent := filepath.Join(t.TempDir(), "banger-agent")
	must(os.WriteFile(agent, []byte("agent binary"), 0o600))

	layout := paths.Layout{Root: t.TempDir()}
	b := &Builder{Runner: &fakeRunner{}, Layout: layout, AgentPath: agent}
	var stages []string
	info, err := b.BuildFromDir(context.Background(), "small", src, func(s string) { stages = append(stages, s) })
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(stages, ","); got != "copy,customize,mkfs,commit" {
		t.Errorf("stages %s", got)
	}
	img := filepath.Join(layout.Image("small"), paths.RootfsFile)
	if info.Name != "small" || info.Source != "dir:"+src || info.Size != 1<<30 ||
		strings.Join(info.Packages, ",") != "base-files,openssh-server" {
		t.Errorf("info %+v", info)
	}

	got := []string{}
	for _, p := range []string{"/", "/usr/bin/su", "/usr/bin/sh", "/usr/bin/dash", "/usr/bin/dash2", "/home/user",
		"/home/user/notes", "/tmp", "/root", "/usr/local/bin/banger-agent", "/etc/ssh/ssh_host_ed25519_key",
		"/etc/ssh/ssh_host_ed25519_key.pub", "/etc/ssh/sshd_config.d/banger.conf"} {
		got = append(got, p+" "+inode(t, img, p))
	}
	want := []string{
		"/ directory 0755 0:0 9",
		"/usr/bin/su regular 04755 0:0 1",
		"/usr/bin/sh symlink 0777 0:0 1",
		"/usr/bin/dash regular 0644 0:0 2",
		"/usr/bin/dash2 regular 0644 0:0 2",
		"/home/user directory 0700 1000:1000 2",
		"/home/user/notes regular 0644 1000:1000 1",
		"/tmp directory 01777 0:0 2",
		"/root directory 0700 0:0 2",
		"/usr/local/bin/banger-agent regular 0755 0:0 1",
		"/etc/ssh/ssh_host_ed25519_key missing",
		"/etc/ssh/ssh_host_ed25519_key.pub missing",
		"/etc/ssh/sshd_config.d/banger.conf regular 0644 0:0 1",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("inodes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if out := debugfs(t, img, "cat /usr/local/bin/banger-agent"); !strings.Contains(out, "agent binary") {
		t.Errorf("agent content %q", out)
	}
	if _, err := (system.Exec{}).Run(context.Background(), "e2fsck", "-fn", img); err != nil {
		t.Errorf("image not clean: %v", err)
	}
	// The source tree is left alone.
	if _, err := os.Stat(filepath.Join(src, "etc/ssh/ssh_host_ed25519_key")); err != nil {
		t.Errorf("source tree changed: %v", err)
	}
	emptyDir(t, layout.Tmp())

	loaded, err := Load(layout, "small")
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.CreatedAt.Equal(info.CreatedAt) || loaded.Source != info.Source || len(loaded.Packages) != 2 {
		t.Errorf("loaded %+v, built %+v", loaded, info)
	}
	if list, err := List(layout); err != nil || len(list) != 1 || list[0].Name != "small" {
		t.Errorf("list: %v %v", list, err)
	}
	if _, err := b.BuildFromDir(context.Background(), "small", src, nil); !errors.Is(err, api.ErrExists) {
		t.Errorf("second build: %v, want ErrExists", err)
	}
	if err := Remove(layout, "small"); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(layout, "small"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("load after remove: %v", err)
	}
	if err := Remove(layout, "small"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
	emptyDir(t, layout.ImagesDir())
	emptyDir(t, layout.Tmp())
}

func TestBuildDefaultWithFakeBootstrap(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	layout := paths.Layout{Root: t.TempDir()}
	f := &fakeRunner{}
	b := &Builder{Runner: f, Layout: layout, Mirror: "http://deb.example.org/debian"}
	var stages []string
	info, err := b.BuildDefault(context.Background(), "debian", func(s string) { stages = append(stages, s) })
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(stages, ","); got != "bootstrap,customize,mkfs,commit" {
		t.Errorf("stages %s", got)
	}
	if info.Source != "debian:bookworm" || strings.Join(info.Packages, ",") != "base-files,openssh-server" {
		t.Errorf("info %+v", info)
	}
	tmp := regexp.MustCompile(regexp.QuoteMeta(layout.Tmp()) + `/image-debian-\d+`)
	log := tmp.ReplaceAllString(strings.Join(f.log, "\n"), "STAGING")
	want := "mmdebstrap --variant=apt --format=directory --include=systemd-sysv,openssh-server,iproute2,ca-certificates,git " +
		"--dpkgopt=path-exclude=/usr/share/doc/* --dpkgopt=path-exclude=/usr/share/man/* " +
		"--dpkgopt=path-exclude=/usr/share/locale/* --dpkgopt=path-exclude=/usr/share/info/* " +
		"-- bookworm STAGING/rootfs http://deb.example.org/debian\n" +
		"mkfs.ext4 -q -F -b 4096 -L rootfs -d STAGING/rootfs -E root_owner=0:0 STAGING/image/.rootfs.ext4.tmp-"
	if !strings.HasPrefix(log, want) || !strings.HasSuffix(log, " 1048576k") || strings.Count(log, "\n") != 1 {
		t.Errorf("commands:\n%s\nwant:\n%s...", log, want)
	}
	img := filepath.Join(layout.Image("debian"), paths.RootfsFile)
	if out := debugfs(t, img, "ls -l /etc/ssh"); strings.Contains(out, "ssh_host_") {
		t.Errorf("host key in image:\n%s", out)
	}
	emptyDir(t, layout.Tmp())
}

func TestBuildFailureLeavesNothing(t *testing.T) {
	needTools(t, "cp")
	for _, c := range []struct {
		name string
		fail string
	}{
		{"mkfs fails", "mkfs.ext4"},
		{"bootstrap fails", "mmdebstrap"},
		{"copy fails", "cp"},
	} {
		t.Run(c.name, func(t *testing.T) {
			layout := paths.Layout{Root: t.TempDir()}
			f := &fakeRunner{fail: map[string]int{c.fail: 1}}
			b := &Builder{Runner: f, Layout: layout}
			var err error
			if c.fail == "mmdebstrap" {
				_, err = b.BuildDefault(context.Background(), "img", nil)
			} else {
				src := t.TempDir()
				writeTree(t, src, map[string]string{"etc/hostname": "x"})
				_, err = b.BuildFromDir(context.Background(), "img", src, nil)
			}
			var ee *system.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("err %v, want the injected failure", err)
			}
			emptyDir(t, layout.ImagesDir())
			emptyDir(t, layout.Tmp())
			if _, err := Load(layout, "img"); !errors.Is(err, api.ErrNotFound) {
				t.Fatalf("load: %v", err)
			}
		})
	}
}

func TestBuildCancelled(t *testing.T) {
	layout := paths.Layout{Root: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeRunner{}
	b := &Builder{Runner: f, Layout: layout}
	_, err := b.BuildDefault(ctx, "img", func(s string) {
		if s == StageCustomize {
			t.Error("customize ran after cancel")
		}
		cancel()
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	emptyDir(t, layout.ImagesDir())
	emptyDir(t, layout.Tmp())
}

func TestInvalidInputs(t *testing.T) {
	layout := paths.Layout{Root: t.TempDir()}
	f := &fakeRunner{}
	b := &Builder{Runner: f, Layout: layout}
	src := t.TempDir()
	for _, name := range []string{"", "-x", ".x", "_x", "A", "a b", "a/b", "../x", "a\x00", "x\n", "é",
		strings.Repeat("a", 64), "a;rm -rf /", ".."} {
		if _, err := b.BuildFromDir(context.Background(), name, src, nil); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("BuildFromDir(%q): %v, want ErrInvalid", name, err)
		}
		if _, err := b.BuildDefault(context.Background(), name, nil); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("BuildDefault(%q): %v, want ErrInvalid", name, err)
		}
		if _, err := Load(layout, name); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("Load(%q): %v", name, err)
		}
		if err := Remove(layout, name); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("Remove(%q): %v", name, err)
		}
	}
	for _, ok := range []string{"a", "0", "debian-12", "my_img.v2", strings.Repeat("a", 63)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q): %v", ok, err)
		}
	}
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o644)
	if _, err := b.BuildFromDir(context.Background(), "x", file, nil); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("BuildFromDir of a file: %v", err)
	}
	for _, m := range []string{"ftp://x/debian", "deb http://x bookworm main", "http://", "-oAPT::x=y", "http://x/\ndebian", "/srv/mirror"} {
		b := &Builder{Runner: f, Layout: layout, Mirror: m}
		if _, err := b.BuildDefault(context.Background(), "x", nil); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("mirror %q: %v, want ErrInvalid", m, err)
		}
	}
	if len(f.log) != 0 {
		t.Errorf("commands ran: %v", f.log)
	}
}

func TestLoadBroken(t *testing.T) {
	layout := paths.Layout{Root: t.TempDir()}
	dir := layout.Image("broken")
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, paths.ImageMeta), []byte("{not json"), 0o644)
	if _, err := Load(layout, "broken"); err == nil || errors.Is(err, api.ErrNotFound) {
		t.Errorf("bad json: %v", err)
	}
	os.WriteFile(filepath.Join(dir, paths.ImageMeta), []byte(`{"name":"other"}`), 0o644)
	if _, err := Load(layout, "broken"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("missing rootfs: %v", err)
	}
	os.WriteFile(filepath.Join(dir, paths.RootfsFile), nil, 0o644)
	if info, err := Load(layout, "broken"); err != nil || info.Name != "broken" {
		t.Errorf("load: %+v %v", info, err)
	}
}

func TestImageSize(t *testing.T) {
	for used, want := range map[int64]int64{
		0:         1 << 30,
		100 << 20: 1 << 30,
		200 << 20: 1 << 30, // 260+256 MiB
		1 << 30:   (1331 + 256 + 1) << 20,
		1000:      1 << 30,
	} {
		if got := imageSize(used); got != want {
			t.Errorf("imageSize(%d) = %d MiB, want %d MiB", used, got>>20, want>>20)
		}
	}
}

func TestParseDpkgStatus(t *testing.T) {
	got := strings.Join(parseDpkgStatus([]byte(dpkgStatus+"\nPackage: zz\nStatus: install ok half-installed\n\nPackage: aa\nStatus: install ok installed")), ",")
	if got != "aa,base-files,openssh-server" {
		t.Errorf("packages %s", got)
	}
}

func TestParseMountsUnder(t *testing.T) {
	info := `22 1 8:1 / / rw - ext4 /dev/vda rw
30 22 0:5 / /st/rootfs/proc rw - proc proc rw
31 30 0:6 / /st/rootfs/proc/sys/fs/binfmt_misc rw - binfmt_misc x rw
32 22 0:7 / /st/rootfs/dev\040x rw - tmpfs t rw
33 22 0:8 / /stx/other rw - tmpfs t rw
`
	got := strings.Join(parseMountsUnder([]byte(info), "/st/"), "|")
	if got != "/st/rootfs/proc/sys/fs/binfmt_misc|/st/rootfs/dev x|/st/rootfs/proc" {
		t.Errorf("mounts %q", got)
	}
}

// TestRemoveStagingUnmounts checks a staging tree with something mounted in it
// (as a killed mmdebstrap leaves it) is unmounted, not walked into.
func TestRemoveStagingUnmounts(t *testing.T) {
	needRoot(t)
	staging := t.TempDir()
	mnt := filepath.Join(staging, "rootfs", "proc")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		testenv.Missing(t, "mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(mnt, "live"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := removeStaging(staging); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(staging); !os.IsNotExist(err) {
		t.Fatalf("staging still there: %v", err)
	}
}
