//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// ownerUser creates a throwaway unprivileged user (removed at cleanup) and
// a state dir it owns; it returns the user name and that state dir.
func ownerUser(t *testing.T) (string, string) {
	t.Helper()
	user := fmt.Sprintf("bgown%d", os.Getpid()%100000)
	if out, err := run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", user); err != nil {
		t.Fatalf("useradd: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = run("userdel", user) })
	home, err := os.MkdirTemp("", "banger-owner-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	if out, err := run("chown", user+":"+user, home); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	// The binaries live under a 0700 temp dir of root's: give the user a copy.
	bin := filepath.Join(home, "bin")
	for _, b := range []string{"banger", "bangerd", "banger-agent"} {
		if out, err := run("install", "-D", "-o", user, "-m", "0755", filepath.Join(E.bin, b), filepath.Join(bin, b)); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	return user, home
}

// asOwner runs the CLI as user inside the test's namespace with the state
// dir under home, the daemon it starts running as that user too.
func asOwner(t *testing.T, user, home string, args ...string) (string, time.Duration) {
	t.Helper()
	full := append([]string{"netns", "exec", E.ns, "setpriv", "--reuid=" + user, "--regid=" + user, "--init-groups", "--",
		"env", "HOME=" + home, "BANGER_SUBNET=172.30.7.0/24", filepath.Join(home, "bin", "banger"), "--state-dir", filepath.Join(home, "state")}, args...)
	t0 := time.Now()
	out, err := exec.Command("ip", full...).CombinedOutput()
	if err != nil {
		t.Fatalf("as %s: banger %s: %v\n%s", user, strings.Join(args, " "), err, out)
	}
	return string(out), time.Since(t0)
}

// inodeListing is every entry of an ext4 image below the given directories
// as "path mode uid:gid size" (directories without size), from debugfs ls -p.
func inodeListing(t *testing.T, img string, dirs []string) map[string]string {
	t.Helper()
	script := filepath.Join(t.TempDir(), "ls.debugfs")
	var sb strings.Builder
	for _, d := range dirs {
		fmt.Fprintf(&sb, "ls -p \"%s\"\n", strings.ReplaceAll(d, `"`, `""`))
	}
	if err := os.WriteFile(script, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("debugfs", "-f", script, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs ls: %v\n%s", err, out)
	}
	got := map[string]string{}
	cur := ""
	for _, l := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(l, "debugfs: ls -p "); ok {
			cur = strings.ReplaceAll(strings.Trim(rest, `"`), `""`, `"`)
			continue
		}
		// /ino/mode/uid/gid/name/size/
		f := strings.Split(l, "/")
		if len(f) < 7 || f[5] == "." || f[5] == ".." {
			continue
		}
		mode, _ := strconv.ParseUint(f[2], 8, 32)
		entry := fmt.Sprintf("%06o %s:%s", mode, f[3], f[4])
		if mode&0o170000 != 0o040000 {
			entry += " " + f[6]
		}
		got[strings.TrimSuffix(cur, "/")+"/"+strings.Join(f[5:len(f)-2], "/")] = entry
	}
	return got
}

// treeDirs lists the directories of a tree as absolute image paths.
func treeDirs(t *testing.T, root string) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			dirs = append(dirs, "/"+strings.TrimPrefix(filepath.ToSlash(rel), "."))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// sameInodes fails t where two listings differ, ignoring /dev's children
// (device nodes: copied by cp -a as root, left out by Flatten by design).
func sameInodes(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	var diffs []string
	for p, w := range want {
		if strings.HasPrefix(p, "/dev/") {
			continue
		}
		if g := got[p]; g != w {
			diffs = append(diffs, fmt.Sprintf("%s: %q, want %q", p, g, w))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok && !strings.HasPrefix(p, "/dev/") {
			diffs = append(diffs, fmt.Sprintf("%s: %q, not in the reference", p, g))
		}
	}
	sort.Strings(diffs)
	if n := len(diffs); n > 0 {
		if n > 40 {
			diffs = append(diffs[:40], fmt.Sprintf("... and %d more", len(diffs)-40))
		}
		t.Errorf("%s: %d entries differ from the root-built image:\n%s", what, n, strings.Join(diffs, "\n"))
	}
}

// TestImageAsOwner: an unprivileged user with its own state dir pulls the
// Debian rootfs image from a registry and builds an image --from-dir, no
// sudo; every inode of both ext4 images (owner, group, mode with setuid,
// setgid and sticky bits, size) equals what the root daemon made of the same
// content through the old root-only path (cp -a). Nothing in the user's
// state dir belongs to another uid.
func TestImageAsOwner(t *testing.T) {
	user, home := ownerUser(t)
	reg := startRegistry(t)
	img, err := mutate.AppendLayers(empty.Image, rootfsLayer(t, E.rootfs))
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	pushRef, err := name.ParseReference(reg.pushHost+"/e2e/owner:bookworm", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(pushRef, img); err != nil {
		t.Fatalf("push: %v", err)
	}
	t.Cleanup(func() { _, _ = asOwnerQuiet(user, home, "daemon", "stop") })

	out, d := asOwner(t, user, home, "image", "pull", reg.pullHost+"/e2e/owner:bookworm", "--insecure", "--name", "owned")
	t.Logf("pull as %s in %.1fs:\n%s", user, d.Seconds(), out)
	dirs := treeDirs(t, E.rootfs)
	ref := inodeListing(t, filepath.Join(E.stateDir, "images", "default", "rootfs.ext4"), dirs)
	if len(ref) < 1000 {
		t.Fatalf("reference listing has %d entries", len(ref))
	}
	pulled := filepath.Join(home, "state", "images", "owned", "rootfs.ext4")
	sameInodes(t, "pulled as "+user, ref, inodeListing(t, pulled, dirs))
	for p, w := range map[string]string{
		"/usr/bin/passwd": "104755 0:0", "/usr/bin/chage": "102755 0:42", "/tmp": "041777 0:0",
		"/etc/shadow": "100640 0:42", "/var/mail": "042775 0:8", "/root": "040700 0:0",
	} {
		if g := ref[p]; !strings.HasPrefix(g, w) {
			t.Errorf("reference %s: %q, want %q", p, g, w)
		}
	}

	// --from-dir: the tree must be readable by the user, so a copy of the
	// rootfs with o+rX; the root daemon builds the same copy as reference.
	// Not t.TempDir: its parent is 0700; never chmod anything above this dir.
	srcDir, err := os.MkdirTemp("", "banger-owner-src-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(srcDir) })
	if err := os.Chmod(srcDir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(srcDir, "rootfs")
	if out, err := run("cp", "-a", "--reflink=auto", E.rootfs, src); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := run("chmod", "-R", "o+rX", src); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t0 := time.Now()
	if out, err := E.banger("image", "build", "rootref", "--from-dir", src); err != nil {
		t.Fatalf("root build: %v\n%s", err, out)
	}
	t.Logf("from-dir as root in %.1fs", time.Since(t0).Seconds())
	t.Cleanup(func() { _, _ = E.banger("image", "rm", "rootref") })
	out, d = asOwner(t, user, home, "image", "build", "ownref", "--from-dir", src)
	t.Logf("from-dir as %s in %.1fs:\n%s", user, d.Seconds(), out)
	srcDirs := treeDirs(t, src)
	sameInodes(t, "built --from-dir as "+user,
		inodeListing(t, filepath.Join(E.stateDir, "images", "rootref", "rootfs.ext4"), srcDirs),
		inodeListing(t, filepath.Join(home, "state", "images", "ownref", "rootfs.ext4"), srcDirs))

	// Nothing the user's daemon left belongs to anyone else.
	if out, err := run("find", filepath.Join(home, "state"), "-not", "-user", user, "-print", "-quit"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("files not owned by %s in its state dir: %q %v", user, out, err)
	}
}

func asOwnerQuiet(user, home string, args ...string) (string, error) {
	full := append([]string{"netns", "exec", E.ns, "setpriv", "--reuid=" + user, "--regid=" + user, "--init-groups", "--",
		"env", "HOME=" + home, filepath.Join(home, "bin", "banger"), "--state-dir", filepath.Join(home, "state")}, args...)
	out, err := exec.Command("ip", full...).CombinedOutput()
	return string(out), err
}
