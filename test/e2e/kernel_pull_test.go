//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func fileSHA256(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestKernelPull serves a kernel catalog inside the test namespace with two
// entries made from the cached Debian kernel package — the .deb itself, and
// its vmlinuz plus a modules tarball — pulls both with the CLI, checks that
// `kernel list` shows where they came from and their checksums, and boots a
// VM on the vmlinuz+modules one.
func TestKernelPull(t *testing.T) {
	dir := t.TempDir()
	x := filepath.Join(dir, "x")
	if out, err := run("dpkg-deb", "-x", E.deb, x); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(x, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		t.Fatalf("vmlinuz in %s: %v", E.deb, vmlinuz)
	}
	version := strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	files := filepath.Join(dir, "files")
	if err := os.MkdirAll(files, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := run("tar", "-C", x, "-cf", filepath.Join(files, "modules.tar"), "lib/modules/"+version); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	for src, dst := range map[string]string{vmlinuz[0]: "vmlinuz", E.deb: "kernel.deb"} {
		if err := os.Symlink(src, filepath.Join(files, dst)); err != nil {
			t.Fatal(err)
		}
	}
	catalog := fmt.Sprintf(`{"kernels": [
  {"name": "catalog-generic", "version": %q, "arch": "x86_64", "url": "files/vmlinuz", "sha256": %q,
   "modules": {"url": "files/modules.tar", "sha256": %q}},
  {"name": "catalog-deb", "arch": "amd64", "format": "deb", "url": "files/kernel.deb", "sha256": %q},
  {"name": "catalog-bad", "arch": "amd64", "url": "files/vmlinuz", "sha256": %q}
]}`, version, fileSHA256(t, vmlinuz[0]), fileSHA256(t, filepath.Join(files, "modules.tar")), fileSHA256(t, E.deb), strings.Repeat("0", 64))
	if err := os.WriteFile(filepath.Join(dir, "catalog.json"), []byte(catalog), 0o644); err != nil {
		t.Fatal(err)
	}
	ln := listenInNetns(t, E.ns, "127.0.0.1:0")
	srv := &http.Server{Handler: http.FileServer(http.Dir(dir)), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	url := "http://" + ln.Addr().String() + "/catalog.json"

	// Plain http needs --insecure (the test serves http inside the netns).
	r := E.bangerRes("kernel", "pull", "catalog-generic", "--catalog", url)
	if r.code == 0 || !strings.Contains(r.stderr, "--insecure") {
		t.Fatalf("plain-http catalog without --insecure: exit %d\n%s", r.code, r.stderr)
	}
	t0 := time.Now()
	r = E.bangerRes("kernel", "pull", "catalog-generic", "--catalog", url, "--insecure")
	if r.code != 0 {
		t.Fatalf("kernel pull: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("kernel pull (vmlinuz + modules) in %.1fs:\n%s%s", time.Since(t0).Seconds(), r.stderr, r.stdout)
	t.Cleanup(func() { _, _ = E.banger("kernel", "rm", "catalog-generic") })
	r = E.bangerRes("kernel", "pull", "catalog-deb", "--catalog", url, "--insecure")
	if r.code != 0 {
		t.Fatalf("kernel pull deb: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	t.Cleanup(func() { _, _ = E.banger("kernel", "rm", "catalog-deb") })
	r = E.bangerRes("kernel", "pull", "catalog-bad", "--catalog", url, "--insecure")
	if r.code == 0 || !strings.Contains(r.stderr, "sha256 mismatch") {
		t.Fatalf("bad checksum: exit %d\n%s", r.code, r.stderr)
	}

	var ks []struct{ Name, Version, Source, SHA256, Path, Initrd string }
	if err := json.Unmarshal([]byte(must(t, "kernel", "list", "--json")), &ks); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	paths := map[string][2]string{}      // name → kernel, initrd
	wantSum := fileSHA256(t, vmlinuz[0]) // the recorded digest is the kernel image's
	for _, k := range ks {
		paths[k.Name] = [2]string{k.Path, k.Initrd}
		// Every kernel here comes from the real Debian package (the default
		// one through `kernel import --deb`): each must have yielded the
		// uncompressed vmlinux, and that is what boots.
		assertVmlinux(t, k.Name, k.Path)
		if strings.HasPrefix(k.Name, "catalog-") {
			seen[k.Name] = true
			if k.Source != "catalog:"+url+"#"+k.Name || k.SHA256 != wantSum || k.Version != version {
				t.Errorf("kernel %+v, want sha256 %s", k, wantSum)
			}
		}
	}
	if !seen["catalog-generic"] || !seen["catalog-deb"] || seen["catalog-bad"] {
		t.Fatalf("kernel list: %+v", ks)
	}
	if list := must(t, "kernel", "list"); !strings.Contains(list, "catalog:") {
		t.Errorf("kernel list does not show the source:\n%s", list)
	}

	deleteOnCleanup(t, "kcat")
	if r := E.bangerRes("vm", "create", "--name", "kcat", "--kernel", "catalog-generic"); r.code != 0 {
		t.Fatalf("create: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if out := must(t, "vm", "ssh", "kcat", "--", "uname -r"); strings.TrimSpace(out) != version {
		t.Errorf("uname -r = %q, want %s", out, version)
	}
	v := showVM(t, "kcat")
	// uname cannot tell the kernels apart (one package): QEMU's arguments can.
	args, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", v.PID))
	if err != nil {
		t.Fatal(err)
	}
	argv := strings.Split(string(args), "\x00")
	want := paths["catalog-generic"]
	if argAfter(argv, "-kernel") != want[0] || argAfter(argv, "-initrd") != want[1] || want[0] == "" {
		t.Errorf("vm kcat booted -kernel %q -initrd %q, want catalog-generic's %q %q (all kernels: %v)",
			argAfter(argv, "-kernel"), argAfter(argv, "-initrd"), want[0], want[1], paths)
	}
	must(t, "vm", "delete", "--force", "kcat")
	assertGone(t, v)
}

// argAfter returns the argument that follows flag in argv ("" when absent).
func argAfter(argv []string, flag string) string {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1]
		}
	}
	return ""
}

// assertVmlinux checks that a kernel's boot path is the uncompressed ELF
// vmlinux extracted at import, not the bzImage it falls back to.
func assertVmlinux(t *testing.T, name, path string) {
	t.Helper()
	if filepath.Base(path) != "vmlinux" {
		t.Errorf("kernel %s boots %q, not an extracted vmlinux", name, path)
		return
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != "\x7fELF" {
		t.Errorf("kernel %s: %s is not ELF (%q, %v)", name, path, magic, err)
	}
}
