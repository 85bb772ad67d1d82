package kernel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
)

// fakeHost keeps state for the commands ImportDeb and DownloadDebian run:
// a package archive (path → content) that dpkg-deb -x materializes, "xz"
// and "zstd" that strip a marker prefix, and an apt with one package.
type fakeHost struct {
	mu       sync.Mutex
	pkg      map[string]string // files of the .deb
	aptOut   string            // apt-cache depends output
	debName  string            // file apt-get download creates
	commands []string
}

func (f *fakeHost) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commands = append(f.commands, name+" "+strings.Join(args, " "))
	switch {
	case name == "dpkg-deb" && len(args) == 3 && args[0] == "-x":
		for p, c := range f.pkg {
			dst := filepath.Join(args[2], p)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return nil, err
			}
			if err := os.WriteFile(dst, []byte(c), 0o644); err != nil {
				return nil, err
			}
		}
		return nil, nil
	case name == "xz" && len(args) == 4 && args[0] == "-d":
		src := args[3]
		return nil, unmark(src, strings.TrimSuffix(src, ".xz"), "XZ:", true)
	case name == "zstd" && len(args) == 6 && args[0] == "-d" && args[4] == "-o":
		return nil, unmark(args[3], args[5], "ZSTD:", false)
	case name == "apt-cache":
		return []byte(f.aptOut), nil
	case name == "env" && len(args) == 5 && args[0] == "-C" && args[2] == "apt-get" && args[3] == "download":
		return nil, os.WriteFile(filepath.Join(args[1], f.debName), []byte("deb"), 0o644)
	}
	return nil, &system.ExitError{Cmd: name, Code: 127, Output: "fake: unknown command"}
}

func (f *fakeHost) Start(context.Context, system.ProcSpec) (int, error) {
	return 0, errors.New("fake: no processes")
}

func unmark(src, dst, marker string, removeSrc bool) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(b), marker) {
		return fmt.Errorf("%s: not %s data", src, marker)
	}
	if err := os.WriteFile(dst, b[len(marker):], 0o644); err != nil {
		return err
	}
	if removeSrc {
		return os.Remove(src)
	}
	return nil
}

const testVer = "6.1.0-99-cloud-amd64"

func testPackage() map[string]string {
	mod := func(deps string) string { return string(fakeModuleELF("license=GPL", "depends="+deps)) }
	k := "lib/modules/" + testVer + "/kernel/"
	return map[string]string{
		"boot/vmlinuz-" + testVer:                                "BZIMAGE",
		"boot/config-" + testVer:                                 "CONFIG_X=y",
		"lib/modules/" + testVer + "/modules.builtin":            "kernel/net/vmw_vsock/vsock.ko\nkernel/lib/crc32c.ko\n",
		k + "drivers/virtio/virtio.ko":                           mod(""),
		k + "drivers/virtio/virtio_ring.ko":                      mod(""),
		k + "drivers/virtio/virtio_mmio.ko.xz":                   "XZ:" + mod("virtio,virtio_ring"),
		k + "drivers/block/virtio_blk.ko.zst":                    "ZSTD:" + mod("virtio,virtio_ring,crc32c"),
		k + "net/core/failover.ko":                               mod(""),
		k + "drivers/net/net_failover.ko":                        mod("failover"),
		k + "drivers/net/virtio_net.ko":                          mod("net_failover,virtio,virtio_ring"),
		k + "drivers/char/hw_random/virtio-rng.ko":               mod("virtio,virtio_ring"),
		k + "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko": mod("vsock,virtio,virtio_ring"),
		k + "net/vmw_vsock/vmw_vsock_virtio_transport.ko":        mod("vmw_vsock_virtio_transport_common,vsock,virtio,virtio_ring"),
		k + "drivers/unrelated/big_driver.ko":                    "not even an ELF: must never be read",
	}
}

func newTestImporter(t *testing.T, pkg map[string]string) (*Importer, *fakeHost, string) {
	t.Helper()
	dir := t.TempDir()
	agent := filepath.Join(dir, "banger-agent")
	if err := os.WriteFile(agent, fakeModuleELF("agent=1"), 0o755); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(dir, "linux-image-"+testVer+"_1_amd64.deb")
	if err := os.WriteFile(deb, []byte("!<arch>"), 0o644); err != nil {
		t.Fatal(err)
	}
	fh := &fakeHost{pkg: pkg}
	return &Importer{Runner: fh, Layout: paths.Layout{Root: filepath.Join(dir, "state")}, AgentPath: agent}, fh, deb
}

func TestImportDeb(t *testing.T) {
	imp, _, deb := newTestImporter(t, testPackage())
	var stages []string
	info, err := imp.ImportDeb(context.Background(), "debian-6.1", deb, func(s string) { stages = append(stages, s) })
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(stages, ","); got != "extract,vmlinux,modules,initramfs,finalize" {
		t.Errorf("stages = %s", got)
	}
	wantMods := []string{"virtio", "virtio_ring", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net",
		"vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "virtio_rng"}
	if !reflect.DeepEqual(info.Modules, wantMods) {
		t.Errorf("modules:\n got %v\nwant %v", info.Modules, wantMods)
	}
	dir := imp.Layout.Kernel("debian-6.1")
	sum := sha256.Sum256([]byte("BZIMAGE"))
	want := Info{Name: "debian-6.1", Version: testVer, Source: "deb:" + filepath.Base(deb),
		Kernel: filepath.Join(dir, paths.KernelFile), Initrd: filepath.Join(dir, paths.InitrdFile),
		Config: filepath.Join(dir, paths.KernelConfig),
		SHA256: hex.EncodeToString(sum[:]), Modules: wantMods, Imported: info.Imported}
	if !reflect.DeepEqual(info, want) {
		t.Errorf("info:\n got %+v\nwant %+v", info, want)
	}
	loaded, err := Load(imp.Layout, "debian-6.1")
	if err != nil || !reflect.DeepEqual(loaded, info) {
		t.Errorf("Load = %+v, %v", loaded, err)
	}
	if b, _ := os.ReadFile(info.Kernel); string(b) != "BZIMAGE" {
		t.Errorf("kernel = %q", b)
	}
	// Debian's boot/config-<version> is kept beside the kernel.
	if cfg, src, err := ReadConfig(info.Kernel); err != nil || src != info.Config || cfg["CONFIG_X"] != "y" {
		t.Errorf("ReadConfig = %v, %q, %v", cfg, src, err)
	}

	// The initramfs: the agent as /init, the console node, the decompressed
	// modules and the order list.
	data, err := os.ReadFile(info.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]cpioEntry{}
	for _, e := range readCpio(t, data) {
		entries[e.Name] = e
	}
	agent, _ := os.ReadFile(imp.AgentPath)
	if e := entries["init"]; e.Data != string(agent) || e.Mode != 0o100755 {
		t.Errorf("init entry mode %o, %d bytes", e.Mode, len(e.Data))
	}
	if e := entries["dev/console"]; e.Mode != 0o020600 || e.Rmaj != 5 || e.Rmin != 1 {
		t.Errorf("dev/console = %+v", e)
	}
	var list strings.Builder
	for _, m := range wantMods {
		p := "/lib/modules/" + m + ".ko"
		list.WriteString(p + "\n")
		e, ok := entries[p[1:]]
		if !ok || !strings.HasPrefix(e.Data, "\x7fELF") {
			t.Errorf("%s missing or not an ELF (compressed?)", p)
		}
	}
	if got := entries["etc/banger/modules"].Data; got != list.String() {
		t.Errorf("module list:\n%s\nwant\n%s", got, list.String())
	}
	if _, ok := entries["lib/modules/big_driver.ko"]; ok {
		t.Error("unrelated module included")
	}
	assertEmptyDir(t, imp.Layout.Tmp())

	// Same name again.
	if _, err := imp.ImportDeb(context.Background(), "debian-6.1", deb, nil); !errors.Is(err, api.ErrExists) {
		t.Errorf("reimport: err = %v, want ErrExists", err)
	}

	if err := Remove(imp.Layout, "debian-6.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("kernel dir still there: %v", err)
	}
	if err := Remove(imp.Layout, "debian-6.1"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
	if _, err := Load(imp.Layout, "debian-6.1"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("load removed: %v", err)
	}
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("%s not empty: %v", dir, ents)
	}
}

func TestImportDebInvalidNames(t *testing.T) {
	imp, fh, deb := newTestImporter(t, testPackage())
	for _, n := range []string{"", ".", "..", "../x", "a/b", "Upper", "-lead", ".hidden", strings.Repeat("a", 64), "sp ace", "nul\x00"} {
		if _, err := imp.ImportDeb(context.Background(), n, deb, nil); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("name %q: err = %v, want ErrInvalid", n, err)
		}
		if _, err := Load(imp.Layout, n); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("Load(%q): err = %v", n, err)
		}
		if err := Remove(imp.Layout, n); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("Remove(%q): err = %v", n, err)
		}
	}
	if len(fh.commands) != 0 {
		t.Errorf("commands ran for invalid names: %v", fh.commands)
	}
	if _, err := imp.ImportDeb(context.Background(), strings.Repeat("a", 63), deb, nil); err != nil {
		t.Errorf("63-char name refused: %v", err)
	}
}

// Failures at each stage leave nothing behind.
func TestImportDebAtomic(t *testing.T) {
	cases := map[string]func(pkg map[string]string){
		"missing dependency": func(p map[string]string) {
			p["lib/modules/"+testVer+"/kernel/drivers/net/virtio_net.ko"] = string(fakeModuleELF("depends=nonexistent"))
		},
		"cycle": func(p map[string]string) {
			p["lib/modules/"+testVer+"/kernel/drivers/virtio/virtio.ko"] = string(fakeModuleELF("depends=virtio_ring"))
			p["lib/modules/"+testVer+"/kernel/drivers/virtio/virtio_ring.ko"] = string(fakeModuleELF("depends=virtio"))
		},
		"corrupt module": func(p map[string]string) {
			p["lib/modules/"+testVer+"/kernel/drivers/virtio/virtio.ko"] = "garbage"
		},
		"bad compressed module": func(p map[string]string) {
			p["lib/modules/"+testVer+"/kernel/drivers/virtio/virtio_mmio.ko.xz"] = "not xz"
		},
		"no kernel":   func(p map[string]string) { delete(p, "boot/vmlinuz-"+testVer) },
		"two kernels": func(p map[string]string) { p["boot/vmlinuz-other"] = "x" },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			pkg := testPackage()
			mutate(pkg)
			imp, _, deb := newTestImporter(t, pkg)
			if _, err := imp.ImportDeb(context.Background(), "k", deb, nil); err == nil {
				t.Fatal("import succeeded")
			} else {
				t.Log(err)
			}
			if _, err := os.Lstat(imp.Layout.Kernel("k")); !os.IsNotExist(err) {
				t.Errorf("kernel dir exists after failure: %v", err)
			}
			assertEmptyDir(t, imp.Layout.Tmp())
		})
	}
}

func TestImportDebRefusesDynamicAgent(t *testing.T) {
	imp, fh, deb := newTestImporter(t, testPackage())
	dyn := ""
	for _, p := range []string{"/bin/true", "/usr/bin/true"} {
		if err := checkStaticELF(p); err != nil && errors.Is(err, api.ErrInvalid) {
			dyn = p
			break
		}
	}
	if dyn == "" {
		testenv.Missing(t, "no dynamically linked /bin/true or /usr/bin/true to stand in for a dynamic agent")
	}
	imp.AgentPath = dyn
	if _, err := imp.ImportDeb(context.Background(), "k", deb, nil); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("err = %v", err)
	}
	imp.AgentPath = filepath.Join(t.TempDir(), "missing")
	if _, err := imp.ImportDeb(context.Background(), "k", deb, nil); err == nil {
		t.Fatal("missing agent accepted")
	}
	if len(fh.commands) != 0 {
		t.Errorf("commands ran: %v", fh.commands)
	}
}

func TestDownloadDebian(t *testing.T) {
	fh := &fakeHost{
		aptOut:  "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n  Recommends: firmware\n",
		debName: "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb",
	}
	dir := filepath.Join(t.TempDir(), "debs")
	imp := &Importer{Runner: fh}
	got, err := imp.DownloadDebian(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, fh.debName); got != want {
		t.Errorf("path = %s, want %s", got, want)
	}
	want := "apt-cache depends linux-image-cloud-amd64\nenv -C " + dir + " apt-get download linux-image-6.1.0-56-cloud-amd64"
	if g := strings.Join(fh.commands, "\n"); g != want {
		t.Errorf("commands:\n%s\nwant\n%s", g, want)
	}
}

func TestDownloadDebianHostileAptOutput(t *testing.T) {
	for _, out := range []string{
		"",
		"linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64 --option=evil\n",
		"linux-image-cloud-amd64\n  Depends: -oAPT::x=1\n",
		"linux-image-cloud-amd64\n  Depends: <linux-image-virtual>\n",
		"  Recommends: linux-image-6.1.0-56-cloud-amd64\n",
	} {
		fh := &fakeHost{aptOut: out}
		_, err := (&Importer{Runner: fh}).DownloadDebian(context.Background(), t.TempDir())
		if !errors.Is(err, api.ErrNotFound) {
			t.Errorf("apt output %q: err = %v", out, err)
		}
		if len(fh.commands) != 1 {
			t.Errorf("apt output %q: ran %v", out, fh.commands)
		}
	}
}

// Another import of the same name that wins the race makes the final
// rename fail: the loser reports ErrExists and leaves the winner intact.
func TestImportDebLosesRace(t *testing.T) {
	imp, _, deb := newTestImporter(t, testPackage())
	dest := imp.Layout.Kernel("k")
	_, err := imp.ImportDeb(context.Background(), "k", deb, func(stage string) {
		if stage == "finalize" {
			os.MkdirAll(dest, 0o755)
			os.WriteFile(filepath.Join(dest, "winner"), []byte("w"), 0o644)
		}
	})
	if !errors.Is(err, api.ErrExists) {
		t.Fatalf("err = %v, want ErrExists", err)
	}
	if ents, _ := os.ReadDir(dest); len(ents) != 1 || ents[0].Name() != "winner" {
		t.Fatalf("winner's directory changed: %v", ents)
	}
	assertEmptyDir(t, imp.Layout.Tmp())
}
