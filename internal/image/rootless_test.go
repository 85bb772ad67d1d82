package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
)

// rootlessUID is the unprivileged uid the rootless tests run as when the
// suite runs as root; it needs no passwd entry.
const rootlessUID = 4242

// asOwner runs the calling test's body as an unprivileged uid, as an owner
// without sudo would. Not root already: it returns true and the body runs
// here. As root it re-runs this one test in a copy of the test binary
// under setpriv --reuid (through the command runner), checks it passed and
// returns false: the caller then returns.
func asOwner(t *testing.T) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		return true
	}
	testenv.RequireTools(t, "setpriv")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: its parent is 0700 root, the uid must reach the binary.
	dir, err := os.MkdirTemp("", "banger-owner-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "image.test")
	copyFile(t, self, bin, 0o755)
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, rootlessUID, rootlessUID); err != nil {
		t.Fatal(err)
	}
	id := strconv.Itoa(rootlessUID)
	out, err := system.Exec{}.Run(context.Background(), "setpriv", "--reuid="+id, "--regid="+id, "--clear-groups", "--",
		"env", "HOME="+home, "TMPDIR=/tmp", "CI="+os.Getenv("CI"),
		bin, "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	if err != nil {
		t.Fatalf("as uid %d: %v", rootlessUID, err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("as uid %d: no PASS:\n%s", rootlessUID, out)
	}
	t.Logf("ran as uid %d:\n%s", rootlessUID, out)
	return false
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// capV2 is a security.capability value (VFS_CAP_REVISION_2, cap_net_raw
// permitted+effective): binary, with NUL bytes.
const capV2 = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// rootlessLayers is a crafted image whose owners and modes an unprivileged
// owner cannot apply on the host.
func rootlessLayers(t *testing.T) (string, *testRegistry) {
	reg := newRegistry(t)
	l1 := layer(t,
		dir("etc/", 0o755),
		tent{name: "etc/shadow", body: "root:*:1::::::\n", typ: tar.TypeReg, mode: 0o640, gid: 42},
		tent{name: "etc/secret", body: "nobody reads me", typ: tar.TypeReg, mode: 0o000},
		tent{name: "bin/su", body: "ELF", typ: tar.TypeReg, mode: 0o4755},
		tent{name: "usr/bin/wall", body: "ELF", typ: tar.TypeReg, mode: 0o2755, gid: 5},
		tent{name: "usr/bin/ping", body: "ELF", typ: tar.TypeReg, mode: 0o755,
			xattrs: map[string]string{"security.capability": capV2, "user.banger": "yes"}},
		tent{name: "home/u/", typ: tar.TypeDir, mode: 0o700, uid: 1000, gid: 1000},
		tent{name: "home/u/.profile", body: "x", typ: tar.TypeReg, mode: 0o600, uid: 1000, gid: 1000},
		tent{name: "home/u/link", link: ".profile", typ: tar.TypeSymlink, mode: 0o777, uid: 1000, gid: 1000},
		dir("tmp", 0o1777),
		tent{name: "srv/", typ: tar.TypeDir, mode: 0o2775, gid: 50},
		tent{name: "ro/", typ: tar.TypeDir, mode: 0o555},
		file("ro/inside", "written into a read-only directory", 0o444),
		file("usr/lib/a", "shared", 0o644),
		hardlink("usr/lib/b", "usr/lib/a"),
		symlink("lib", "usr/lib"),
		tent{name: `opt/a b/q"uote`, body: "odd name", typ: tar.TypeReg, mode: 0o4711, uid: 7, gid: 8},
		file("gone/file", "bye", 0o644),
		tent{name: "etc/ssh/ssh_host_ed25519_key", body: "SHARED", typ: tar.TypeReg, mode: 0o600, uid: 3},
	)
	l2 := layer(t,
		file("gone/.wh.file", "", 0o644),
		tent{name: "ro/later", body: "a later layer writes here too", typ: tar.TypeReg, mode: 0o640, uid: 0, gid: 42},
	)
	return reg.push(t, "owner/img", l1, l2), reg
}

// rootlessWant is what the ext4 must hold after the pull.
var rootlessWant = map[string]string{
	"/":                                  "directory 0755 0:0",
	"/etc":                               "directory 0755 0:0",
	"/etc/shadow":                        "regular 0640 0:42 1",
	"/etc/secret":                        "regular 0000 0:0 1",
	"/bin/su":                            "regular 04755 0:0 1",
	"/usr/bin/wall":                      "regular 02755 0:5 1",
	"/home/u":                            "directory 0700 1000:1000 2",
	"/home/u/.profile":                   "regular 0600 1000:1000 1",
	"/home/u/link":                       "symlink 0777 1000:1000 1",
	"/tmp":                               "directory 01777 0:0 2",
	"/srv":                               "directory 02775 0:50 2",
	"/ro":                                "directory 0555 0:0 2",
	"/ro/inside":                         "regular 0444 0:0 1",
	"/ro/later":                          "regular 0640 0:42 1",
	"/usr/lib/a":                         "regular 0644 0:0 2",
	"/usr/lib/b":                         "regular 0644 0:0 2",
	"/lib":                               "symlink 0777 0:0 1",
	`/opt/a b/q"uote`:                    "regular 04711 7:8 1",
	"/gone/file":                         "missing",
	"/root":                              "directory 0700 0:0 2",
	"/usr/local/bin/banger-agent":        "regular 0755 0:0 1",
	"/etc/ssh/ssh_host_ed25519_key":      "missing",
	"/etc/ssh/sshd_config.d/banger.conf": "regular 0644 0:0 1",
}

// TestPullAsOwner: an unprivileged owner pulls an image whose files belong
// to root and others, with setuid/setgid/sticky bits, unreadable and
// read-only entries, symlinks, hard links, odd names and xattrs (one a
// security.capability); the ext4 holds exactly the image's metadata.
// The old flatten (Lchown as it goes) fails here with EPERM.
func TestPullAsOwner(t *testing.T) {
	if !asOwner(t) {
		return
	}
	testenv.RequireTools(t, "mkfs.ext4", "debugfs", "e2fsck")
	ref, _ := rootlessLayers(t)
	agent := filepath.Join(t.TempDir(), "banger-agent")
	if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	b := &Builder{Runner: system.Exec{}, Layout: paths.Layout{Root: t.TempDir()}, AgentPath: agent}
	res, err := b.Pull(context.Background(), PullOptions{Ref: ref, Name: "owned", Insecure: true, Keychain: authn.NewMultiKeychain()}, nil)
	if err != nil {
		t.Fatalf("pull as uid %d: %v", os.Geteuid(), err)
	}
	img := filepath.Join(b.Layout.Image(res.Info.Name), paths.RootfsFile)
	checkInodes(t, img, rootlessWant)
	ea := debugfs(t, img, "ea_list /usr/bin/ping")
	if !strings.Contains(ea, "user.banger (3) = \"yes\"") || !strings.Contains(ea, "security.capability (20)") {
		t.Errorf("xattrs of /usr/bin/ping:\n%s", ea)
	}
	if _, err := (system.Exec{}).Run(context.Background(), "e2fsck", "-fn", img); err != nil {
		t.Errorf("image not clean: %v", err)
	}
	emptyDir(t, b.Layout.Tmp())
}

// checkInodes compares debugfs' stat of each path with want ("type mode
// uid:gid links"; a directory's link count is left out when want has none).
func checkInodes(t *testing.T, img string, want map[string]string) {
	t.Helper()
	for p, w := range want {
		q, err := debugfsQuote(p)
		if err != nil {
			t.Fatal(err)
		}
		got := inode(t, img, q)
		if strings.Count(w, " ") == 2 && got != "missing" {
			got = got[:strings.LastIndexByte(got, ' ')]
		}
		if got != w {
			t.Errorf("%s: got %q, want %q", p, got, w)
		}
	}
}

// TestBuildFromDirAsOwner: an unprivileged owner builds from a tree it can
// read; owners, modes (setuid, sticky), xattrs and hard links come from the
// tree, files the owner owns keep its uid, and Customize's files are root's.
func TestBuildFromDirAsOwner(t *testing.T) {
	if !asOwner(t) {
		return
	}
	testenv.RequireTools(t, "mkfs.ext4", "debugfs")
	src := t.TempDir()
	writeTree(t, src, map[string]string{
		"usr/bin/tool":             "setuid",
		"usr/bin/dash":             "shell",
		"tmp/":                     "",
		"ro/file":                  "x",
		"etc/ssh/ssh_host_rsa_key": "SHARED",
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(filepath.Join(src, "usr/bin/tool"), os.ModeSetuid|0o755))
	must(os.Link(filepath.Join(src, "usr/bin/dash"), filepath.Join(src, "usr/bin/sh")))
	must(os.Symlink("dash", filepath.Join(src, "usr/bin/ash")))
	must(os.Chmod(filepath.Join(src, "tmp"), os.ModeSticky|0o777))
	must(os.Chmod(filepath.Join(src, "ro"), 0o555))
	t.Cleanup(func() { os.Chmod(filepath.Join(src, "ro"), 0o755) })
	xattr := true
	if err := setUserXattr(filepath.Join(src, "usr/bin/dash"), "user.banger", "tree"); err != nil {
		t.Logf("no user xattrs on %s (%v): xattr check left out", src, err)
		xattr = false
	}
	b := &Builder{Runner: system.Exec{}, Layout: paths.Layout{Root: t.TempDir()}}
	if _, err := b.BuildFromDir(context.Background(), "tree", src, nil); err != nil {
		t.Fatalf("build as uid %d: %v", os.Geteuid(), err)
	}
	img := filepath.Join(b.Layout.Image("tree"), paths.RootfsFile)
	me := strconv.Itoa(os.Geteuid()) + ":" + strconv.Itoa(os.Getegid())
	checkInodes(t, img, map[string]string{
		"/usr/bin/tool":                      "regular 04755 " + me + " 1",
		"/usr/bin/dash":                      "regular 0644 " + me + " 2",
		"/usr/bin/sh":                        "regular 0644 " + me + " 2",
		"/usr/bin/ash":                       "symlink 0777 " + me + " 1",
		"/tmp":                               "directory 01777 " + me,
		"/ro":                                "directory 0555 " + me,
		"/ro/file":                           "regular 0644 " + me + " 1",
		"/etc/ssh/ssh_host_rsa_key":          "missing",
		"/etc/ssh/sshd_config.d/banger.conf": "regular 0644 0:0 1",
		"/root":                              "directory 0700 0:0 2",
	})
	if xattr {
		if ea := debugfs(t, img, "ea_list /usr/bin/dash"); !strings.Contains(ea, `user.banger (4) = "tree"`) {
			t.Errorf("xattr lost:\n%s", ea)
		}
	}
	emptyDir(t, b.Layout.Tmp())
}

func setUserXattr(p, name, value string) error {
	return unix.Lsetxattr(p, name, []byte(value), 0)
}

// fakeMmdebstrapTar writes what mmdebstrap --format=tar writes in unshare
// mode, in miniature: entries with root's and system groups' ids, setuid
// bits and device nodes, names starting with "./".
func fakeMmdebstrapTar(target string) error {
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	ents := []tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./dev/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
		{Name: "./etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./etc/shadow", Typeflag: tar.TypeReg, Mode: 0o640, Gid: 42},
		{Name: "./etc/ssh/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./etc/ssh/ssh_host_ed25519_key", Typeflag: tar.TypeReg, Mode: 0o600},
		{Name: "./tmp/", Typeflag: tar.TypeDir, Mode: 0o1777},
		{Name: "./usr/bin/passwd", Typeflag: tar.TypeReg, Mode: 0o4755},
		{Name: "./var/mail/", Typeflag: tar.TypeDir, Mode: 0o2775, Gid: 8},
		{Name: "./var/lib/dpkg/status", Typeflag: tar.TypeReg, Mode: 0o644},
	}
	body := map[string]string{"./var/lib/dpkg/status": dpkgStatus, "./etc/ssh/ssh_host_ed25519_key": "SHARED KEY", "./usr/bin/passwd": "ELF", "./etc/shadow": "root:*:1::::::\n"}
	for _, h := range ents {
		h.Size = int64(len(body[h.Name]))
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return err
		}
		if _, err := io.WriteString(tw, body[h.Name]); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// TestBuildDefaultAsOwner: unprivileged, BuildDefault runs mmdebstrap in
// unshare mode writing a tar (the fake writes what it would), flattens it
// and stamps the tar's owners into the ext4; the tar is gone afterwards.
func TestBuildDefaultAsOwner(t *testing.T) {
	if !asOwner(t) {
		return
	}
	testenv.RequireTools(t, "mkfs.ext4", "debugfs")
	layout := paths.Layout{Root: t.TempDir()}
	f := &fakeRunner{}
	b := &Builder{Runner: f, Layout: layout, Mirror: "http://deb.example.org/debian"}
	info, err := b.BuildDefault(context.Background(), "debian", nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(info.Packages, ",") != "base-files,openssh-server" {
		t.Errorf("info %+v", info)
	}
	tmp := regexp.MustCompile(regexp.QuoteMeta(layout.Tmp()) + `/image-debian-\d+`)
	log := tmp.ReplaceAllString(strings.Join(f.log, "\n"), "STAGING")
	want := "mmdebstrap --mode=unshare --variant=apt --format=tar --include=systemd-sysv,openssh-server,iproute2,ca-certificates,git " +
		"--dpkgopt=path-exclude=/usr/share/doc/* --dpkgopt=path-exclude=/usr/share/man/* " +
		"--dpkgopt=path-exclude=/usr/share/locale/* --dpkgopt=path-exclude=/usr/share/info/* " +
		"-- bookworm STAGING/rootfs.tar http://deb.example.org/debian\n" +
		"mkfs.ext4 -q -F -b 4096 -L rootfs -d STAGING/rootfs -E root_owner=0:0 STAGING/image/.rootfs.ext4.tmp-"
	if !strings.HasPrefix(log, want) || !strings.Contains(log, "\ndebugfs -w -f STAGING/owners.debugfs STAGING/image/rootfs.ext4") {
		t.Errorf("commands:\n%s\nwant:\n%s...", log, want)
	}
	img := filepath.Join(layout.Image("debian"), paths.RootfsFile)
	checkInodes(t, img, map[string]string{
		"/etc/shadow":                   "regular 0640 0:42 1",
		"/usr/bin/passwd":               "regular 04755 0:0 1",
		"/tmp":                          "directory 01777 0:0",
		"/var/mail":                     "directory 02775 0:8",
		"/var/lib/dpkg/status":          "regular 0644 0:0 1",
		"/dev/null":                     "missing",
		"/etc/ssh/ssh_host_ed25519_key": "missing",
		"/etc/machine-id":               "regular 0444 0:0 1",
	})
	emptyDir(t, layout.Tmp())
}

// TestStampScript: only what differs from the staging tree becomes a
// command; names with spaces and quotes are quoted for debugfs; a name
// debugfs cannot encode is refused; a failing debugfs command fails the
// stamp even though debugfs exits 0.
func TestStampScript(t *testing.T) { stampScriptTest(t) }

// TestStampScriptAsOwner: the same unprivileged, where entries the build
// wrote (owned by its uid) become root's.
func TestStampScriptAsOwner(t *testing.T) {
	if asOwner(t) {
		stampScriptTest(t)
	}
}

func stampScriptTest(t *testing.T) {
	testenv.RequireTools(t, "debugfs", "mkfs.ext4")
	root := t.TempDir()
	writeTree(t, root, map[string]string{`a b/q"x`: "odd", "plain": "p", "dir/": ""})
	me, mg := os.Geteuid(), os.Getegid()
	o := NewOwners(me, mg)
	o.record(`a b/q"x`, 7, 8, fs.ModeSetuid|0o755, map[string][]byte{"user.k": []byte("v\x00\"x y")})
	o.record("dir", me, mg, fs.ModeSticky|0o777, nil)
	vals := t.TempDir()
	script, n, err := o.StampScript(root, vals)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`sif "/a b/q""x" uid 7`, `sif "/a b/q""x" gid 8`, `sif "/a b/q""x" mode 0104755`,
		`ea_set -f "` + vals + `/1" "/a b/q""x" "user.k"`,
		`sif "/dir" mode 041777`,
	}
	if me != 0 {
		// Unrecorded entries the build wrote are root's.
		want = append(want, `sif "/" uid 0`, `sif "/" gid 0`, `sif "/a b" uid 0`, `sif "/a b" gid 0`,
			`sif "/plain" uid 0`, `sif "/plain" gid 0`)
	}
	got := strings.Split(strings.TrimSpace(string(script)), "\n")
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) || n != len(want) {
		t.Errorf("script (%d commands):\n%s\nwant:\n%s", n, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if b, _ := os.ReadFile(filepath.Join(vals, "1")); string(b) != "v\x00\"x y" {
		t.Errorf("xattr value file %q", b)
	}
	if _, err := debugfsQuote("a\nb"); err == nil {
		t.Error("newline in a path accepted")
	}

	// Applied for real, the odd name gets its owner; debugfs errors fail.
	img := filepath.Join(t.TempDir(), "img")
	ctx := context.Background()
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := (system.Exec{}).Run(ctx, "mkfs.ext4", "-q", "-F", "-d", root, img); err != nil {
		t.Fatal(err)
	}
	if _, err := stampImage(ctx, system.Exec{}, img, root, t.TempDir(), o); err != nil {
		t.Fatal(err)
	}
	checkInodes(t, img, map[string]string{`/a b/q"x`: "regular 04755 7:8 1", "/dir": "directory 01777 " + strconv.Itoa(me) + ":" + strconv.Itoa(mg)})
	if me != 0 {
		checkInodes(t, img, map[string]string{"/plain": "regular 0644 0:0 1"})
	}
	if ea := debugfs(t, img, `ea_get "/a b/q""x" user.k`); !strings.Contains(ea, "76 00 22 78 20 79") {
		t.Errorf("xattr: %q", ea)
	}
	notExt4 := filepath.Join(t.TempDir(), "junk")
	if err := os.WriteFile(notExt4, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := stampImage(ctx, system.Exec{}, notExt4, root, t.TempDir(), o); err == nil || !strings.Contains(err.Error(), "debugfs") {
		t.Errorf("stamp into a non-ext4 file: %v", err)
	}
}

// TestBuildFromDirUnreadableAsOwner: a tree with a file the owner cannot
// read fails naming it and the remedy, and leaves nothing behind.
func TestBuildFromDirUnreadableAsOwner(t *testing.T) {
	if !asOwner(t) {
		return
	}
	testenv.RequireTools(t, "mkfs.ext4", "debugfs")
	src := t.TempDir()
	writeTree(t, src, map[string]string{"etc/shadow": "secret", "etc/ok": "fine"})
	if err := os.Chmod(filepath.Join(src, "etc/shadow"), 0); err != nil {
		t.Fatal(err)
	}
	b := &Builder{Runner: system.Exec{}, Layout: paths.Layout{Root: t.TempDir()}}
	_, err := b.BuildFromDir(context.Background(), "x", src, nil)
	if err == nil || !strings.Contains(err.Error(), "etc/shadow") || !strings.Contains(err.Error(), "cannot read the source tree") {
		t.Fatalf("err %v", err)
	}
	emptyDir(t, b.Layout.Tmp())
	emptyDir(t, b.Layout.ImagesDir())
}

// TestFlattenXattrLimits: the Owners table holds xattrs in memory until the
// stamp, so one value is capped at the kernel's 64 KiB and all of them
// together at Limits.MaxXattrBytes; over either the flatten fails naming it.
func TestFlattenXattrLimits(t *testing.T) {
	big := tent{name: "big", body: "x", typ: tar.TypeReg, mode: 0o644,
		xattrs: map[string]string{"user.big": strings.Repeat("v", maxXattrValue+1)}}
	_, err := Flatten(context.Background(), t.TempDir(), []v1.Layer{layer(t, big)}, Limits{}, nil, nil)
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "exceeds 65536 bytes (limit)") {
		t.Errorf("64 KiB + 1 value: %v", err)
	}
	var ents []tent
	for i := range 20 {
		ents = append(ents, tent{name: fmt.Sprintf("f%d", i), typ: tar.TypeDir, mode: 0o755,
			xattrs: map[string]string{"user.a": strings.Repeat("v", 10<<10)}})
	}
	st, err := Flatten(context.Background(), t.TempDir(), []v1.Layer{layer(t, ents...)}, Limits{MaxXattrBytes: 100 << 10}, nil, nil)
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "xattrs of the image exceed 102400 bytes (limit)") || st.Entries > 11 {
		t.Errorf("200 KiB of xattrs, limit 100 KiB: %v after %d entries", err, st.Entries)
	}
	if _, err := Flatten(context.Background(), t.TempDir(), []v1.Layer{layer(t, ents[:9]...)}, Limits{MaxXattrBytes: 100 << 10}, nil, nil); err != nil {
		t.Errorf("90 KiB of xattrs, limit 100 KiB: %v", err)
	}
}
