//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// debsDir holds the .debs of the default package set (systemd-sysv,
// openssh-server and their dependencies), which the flat apt repo serves.
// Unless BANGER_E2E_DEBS names a directory, they are the exact versions
// installed in the cached rootfs, downloaded once with apt-get into the
// asset cache (keyed like the rootfs), so a cold CI run has them too.
func debsDir(t *testing.T) string {
	if d := os.Getenv("BANGER_E2E_DEBS"); d != "" {
		return d
	}
	dir := filepath.Join(E.cache, "debs-"+filepath.Base(E.rootfs))
	if _, err := os.Stat(dir + ".complete"); err == nil {
		return dir
	}
	out, err := run("dpkg-query", "--admindir="+filepath.Join(E.rootfs, "var/lib/dpkg"), "-W", "-f", "${Package}=${Version}\n")
	if err != nil {
		t.Fatalf("list rootfs packages: %v", err)
	}
	pkgs := strings.Fields(out)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	cmd := exec.Command("apt-get", append([]string{"download", "-q"}, pkgs...)...)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("apt-get download of %d packages: %v\n%s", len(pkgs), err, tailStr(string(b), 2000))
	}
	if err := os.WriteFile(dir+".complete", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("downloaded %d .debs in %.1fs into %s", len(pkgs), time.Since(t0).Seconds(), dir)
	return dir
}

// TestImagePullFirstBoot: an image without systemd or sshd (the Debian rootfs
// with both purged, its sources.list pointing at a flat apt repo the test
// serves inside its namespace) is pulled, boots through banger-agent's
// first-boot init, which installs systemd-sysv + openssh-server with apt and
// execs systemd; then ssh works.
func TestImagePullFirstBoot(t *testing.T) {
	if _, err := run("apt-ftparchive", "--version"); err != nil {
		t.Fatal("apt-ftparchive not installed (apt-utils; scripts/install-deps.sh installs it)")
	}
	debs, _ := filepath.Glob(filepath.Join(debsDir(t), "*.deb"))
	if len(debs) == 0 {
		t.Fatalf("no .debs in %s", debsDir(t))
	}
	tmp := t.TempDir()

	// The flat repository, served on the namespace's gateway side.
	repo := filepath.Join(tmp, "repo")
	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range debs {
		if err := os.Symlink(d, filepath.Join(repo, filepath.Base(d))); err != nil {
			t.Fatal(err)
		}
	}
	pk, err := run("sh", "-c", "cd "+repo+" && apt-ftparchive packages . > Packages && apt-ftparchive release . > Release")
	if err != nil {
		t.Fatalf("apt-ftparchive: %v %s", err, pk)
	}
	ln := listenInNetns(t, E.ns, "0.0.0.0:0")
	var hitsMu sync.Mutex
	var hits strings.Builder
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hitsMu.Lock()
		hits.WriteString(r.URL.Path + "\n")
		hitsMu.Unlock()
		http.FileServer(http.Dir(repo)).ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	mirror := fmt.Sprintf("http://172.30.7.1:%d/", ln.Addr().(*net.TCPAddr).Port)

	// The minimal rootfs: the cached Debian tree without systemd and sshd.
	t0 := time.Now()
	root := filepath.Join(tmp, "rootfs")
	if out, err := run("cp", "-a", "--reflink=auto", E.rootfs, root); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out, err := run("chroot", root, "dpkg", "--purge", "systemd-sysv", "openssh-server", "openssh-sftp-server", "systemd"); err != nil {
		t.Fatalf("purge: %v %s", err, out)
	}
	_ = os.RemoveAll(filepath.Join(root, "etc/apt/sources.list.d"))
	if err := os.WriteFile(filepath.Join(root, "etc/apt/sources.list"), []byte("deb [trusted=yes] "+mirror+" ./\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"usr/lib/systemd/systemd", "usr/sbin/sshd"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Fatalf("%s still in the minimal rootfs", p)
		}
	}
	t.Logf("minimal rootfs in %.1fs", time.Since(t0).Seconds())

	reg := startRegistry(t)
	img, err := mutate.AppendLayers(empty.Image, rootfsLayer(t, root))
	if err != nil {
		t.Fatal(err)
	}
	img, _ = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64"})
	pushRef, _ := name.ParseReference(reg.pushHost+"/e2e/debian-nosystemd:1", name.Insecure)
	if err := remote.Write(pushRef, img); err != nil {
		t.Fatal(err)
	}
	var res pullResult
	out := must(t, "image", "pull", reg.pullHost+"/e2e/debian-nosystemd:1", "--insecure", "--name", "nosystemd", "--json")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !res.Image.FirstBoot {
		t.Fatalf("image without systemd not marked for first boot: %+v", res)
	}
	t.Cleanup(func() { _, _ = E.banger("image", "rm", "nosystemd") })

	deleteOnCleanup(t, "fbbox")
	t0 = time.Now()
	// The mirror is a host service: only a guest with --host-access reaches it.
	r := E.bangerRes("vm", "create", "--image", "nosystemd", "--name", "fbbox", "--boot-timeout", "600", "--host-access")
	if r.code != 0 {
		logs, _ := E.banger("vm", "logs", "fbbox")
		t.Fatalf("create: exit %d\n%s\n%s\nconsole:\n%s\nrepo hits:\n%s", r.code, r.stdout, r.stderr, tailStr(logs, 4000), hits.String())
	}
	t.Logf("first boot (apt install of systemd-sysv + openssh-server) → ssh in %.1fs", time.Since(t0).Seconds())
	out = must(t, "vm", "ssh", "fbbox", "--", "id; systemctl is-active ssh; dpkg-query -W -f='${Status}\\n' systemd-sysv; cat /proc/1/comm")
	for _, w := range []string{"uid=0(root)", "active", "install ok installed", "systemd"} {
		if !strings.Contains(out, w) {
			t.Errorf("guest output lacks %q:\n%s", w, out)
		}
	}
	if !strings.Contains(hits.String(), "openssh-server") {
		t.Errorf("the repo served no openssh-server:\n%s", hits.String())
	}
	logs, _ := E.banger("vm", "logs", "fbbox")
	if !strings.Contains(logs, "first boot: apt-get") {
		t.Errorf("console shows no first-boot install:\n%s", tailStr(logs, 3000))
	}
}
