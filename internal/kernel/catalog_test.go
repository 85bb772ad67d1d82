package kernel

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// versionedBzImage has a boot protocol header whose kernel_version points at version.
func versionedBzImage(version string) []byte {
	b := make([]byte, 0x1000)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x20E:], 0x300)
	copy(b[0x500:], version+" (debian-kernel@lists.debian.org) #1 SMP\x00")
	return b
}

// modulesTarball packs the lib/modules part of testPackage (gzip).
func modulesTarball(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for p, c := range testPackage() {
		if !strings.HasPrefix(p, "lib/modules/") {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: "./usr/" + p, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(c))}); err != nil {
			t.Fatal(err)
		}
		_, _ = tw.Write([]byte(c))
	}
	// Entries outside lib/modules, or climbing out, are ignored.
	_ = tw.WriteHeader(&tar.Header{Name: "../../evil", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
	_, _ = tw.Write([]byte("x"))
	_ = tw.Close()
	_ = zw.Close()
	return buf.Bytes()
}

// catalogServer serves files by path, counting GETs and Range requests.
type catalogServer struct {
	mu     sync.Mutex
	files  map[string][]byte
	gets   map[string]int
	ranges int
	url    string
}

func newCatalogServer(t *testing.T, files map[string][]byte) *catalogServer {
	cs := &catalogServer{files: files, gets: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cs.mu.Lock()
		b, ok := cs.files[r.URL.Path]
		cs.gets[r.URL.Path]++
		if r.Header.Get("Range") != "" {
			cs.ranges++
		}
		cs.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, r.URL.Path, time.Time{}, bytes.NewReader(b))
	}))
	t.Cleanup(srv.Close)
	cs.url = srv.URL
	return cs
}

func TestPullFromCatalog(t *testing.T) {
	imp, _, _ := newTestImporter(t, nil)
	vmlinuz := versionedBzImage(testVer)
	mods := modulesTarball(t)
	cat := fmt.Sprintf(`{"kernels": [
	  {"name": "generic-6.1", "arch": "x86_64", "url": "files/vmlinuz", "sha256": %q,
	   "modules": {"url": "/files/modules.tar.gz", "sha256": %q}},
	  {"name": "broken", "arch": "amd64", "url": "files/vmlinuz", "sha256": %q}
	]}`, sum(vmlinuz), sum(mods), strings.Repeat("0", 64))
	cs := newCatalogServer(t, map[string][]byte{"/catalog.json": []byte(cat), "/files/vmlinuz": vmlinuz, "/files/modules.tar.gz": mods})
	p := &Puller{Importer: imp, Insecure: true} // httptest serves plain http
	var events []PullProgress
	info, err := p.Pull(context.Background(), cs.url+"/catalog.json", "generic-6.1", "", func(ev PullProgress) { events = append(events, ev) })
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "generic-6.1" || info.Version != testVer || info.SHA256 != sum(vmlinuz) ||
		info.Source != "catalog:"+cs.url+"/catalog.json#generic-6.1" || len(info.Modules) < 7 {
		t.Fatalf("info: %+v", info)
	}
	if got, _ := os.ReadFile(info.Kernel); !bytes.Equal(got, vmlinuz) {
		t.Error("stored kernel differs")
	}
	if st, err := os.Stat(info.Initrd); err != nil || st.Size() == 0 {
		t.Errorf("initramfs: %v", err)
	}
	if loaded, err := Load(imp.Layout, "generic-6.1"); err != nil || loaded.Source != info.Source {
		t.Errorf("kernel.json: %+v %v", loaded, err)
	}
	var sawBytes bool
	for _, ev := range events {
		sawBytes = sawBytes || (ev.Stage == "kernel" && ev.Current == int64(len(vmlinuz)) && ev.Total == int64(len(vmlinuz)))
	}
	if !sawBytes {
		t.Errorf("no byte progress: %+v", events)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(imp.Layout.Root), "evil")); err == nil {
		t.Error("modules tarball wrote outside its directory")
	}

	// Cached: the same entry under another name downloads nothing again.
	if _, err := p.Pull(context.Background(), cs.url+"/catalog.json", "generic-6.1", "again", nil); err != nil {
		t.Fatal(err)
	}
	if cs.gets["/files/vmlinuz"] != 1 || cs.gets["/files/modules.tar.gz"] != 1 {
		t.Errorf("downloads not cached: %v", cs.gets)
	}
	// Existing name.
	if _, err := p.Pull(context.Background(), cs.url+"/catalog.json", "generic-6.1", "", nil); !errors.Is(err, api.ErrExists) {
		t.Errorf("pull over an existing kernel: %v", err)
	}
	// Checksum mismatch: nothing stored, nothing cached.
	_, err = p.Pull(context.Background(), cs.url+"/catalog.json", "broken", "", nil)
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "sha256 mismatch") {
		t.Fatalf("mismatch: %v", err)
	}
	if _, err := Load(imp.Layout, "broken"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("broken kernel stored: %v", err)
	}
	ents, _ := os.ReadDir(imp.Layout.Cache())
	for _, e := range ents {
		if strings.Contains(e.Name(), strings.Repeat("0", 64)) {
			t.Errorf("bad download kept in cache: %s", e.Name())
		}
	}
	// Unknown entry.
	if _, err := p.Pull(context.Background(), cs.url+"/catalog.json", "nope", "", nil); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("unknown entry: %v", err)
	}
}

func TestDownloadResumes(t *testing.T) {
	imp, _, _ := newTestImporter(t, nil)
	blob := bytes.Repeat([]byte("0123456789"), 100_000)
	cs := newCatalogServer(t, map[string][]byte{"/blob": blob})
	p := &Puller{Importer: imp, Insecure: true} // httptest serves plain http
	s := sum(blob)
	if err := os.MkdirAll(imp.Layout.Cache(), 0o700); err != nil {
		t.Fatal(err)
	}
	// An interrupted earlier attempt left the first 300 kB.
	if err := os.WriteFile(filepath.Join(imp.Layout.Cache(), "sha256-"+s+".part"), blob[:300_000], 0o600); err != nil {
		t.Fatal(err)
	}
	path, err := p.Download(context.Background(), Artifact{URL: cs.url + "/blob", SHA256: s}, "blob", func(PullProgress) {})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, blob) || cs.ranges != 1 {
		t.Fatalf("resumed download: %d bytes, %d range requests", len(got), cs.ranges)
	}
}

func TestImportFilesWithInitrd(t *testing.T) {
	imp, _, _ := newTestImporter(t, nil)
	dir := t.TempDir()
	k, rd := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	_ = os.WriteFile(k, versionedBzImage("6.12.1-custom"), 0o644)
	_ = os.WriteFile(rd, []byte("my initrd"), 0o644)
	info, err := imp.ImportFiles(context.Background(), "custom", FilesSpec{Kernel: k, Initrd: rd}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(info.Initrd); string(got) != "my initrd" || info.Version != "6.12.1-custom" || info.Source != "files:"+k {
		t.Fatalf("info %+v, initrd %q", info, got)
	}
	if _, err := imp.ImportFiles(context.Background(), "both", FilesSpec{Kernel: k, Initrd: rd, Modules: dir}, nil); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("initrd + modules: %v", err)
	}
	assertEmptyDir(t, imp.Layout.Tmp())
}

func TestParseCatalogRejects(t *testing.T) {
	good := strings.Repeat("a", 64)
	base, _ := url.Parse("https://example.invalid/c/catalog.json")
	ok := fmt.Sprintf(`{"kernels":[{"name":"k","arch":"x86_64","url":"v/vmlinuz","sha256":%q}]}`, good)
	c, err := ParseCatalog([]byte(ok), base)
	if err != nil || c.Kernels[0].URL != "https://example.invalid/c/v/vmlinuz" || c.Kernels[0].Format != FormatVmlinuz {
		t.Fatalf("%+v %v", c, err)
	}
	for _, bad := range []string{
		`{"kernels":[{"name":"k","arch":"x86_64","url":"v","sha256":"abc"}]}`,
		fmt.Sprintf(`{"kernels":[{"name":"k","arch":"arm64","url":"v","sha256":%q}]}`, good),
		fmt.Sprintf(`{"kernels":[{"name":"K!","arch":"x86_64","url":"v","sha256":%q}]}`, good),
		fmt.Sprintf(`{"kernels":[{"name":"k","url":"ftp://x/v","sha256":%q}]}`, good),
		fmt.Sprintf(`{"kernels":[{"name":"k","url":"v","sha256":%q,"surprise":1}]}`, good),
		fmt.Sprintf(`{"kernels":[{"name":"k","url":"v","sha256":%q},{"name":"k","url":"v","sha256":%q}]}`, good, good),
		fmt.Sprintf(`{"kernels":[{"name":"k","url":"v","sha256":%q,"initrd":{"url":"i","sha256":%q},"modules":{"url":"m","sha256":%q}}]}`, good, good, good),
		fmt.Sprintf(`{"kernels":[{"name":"k","format":"rpm","url":"v","sha256":%q}]}`, good),
		`[]`,
	} {
		if _, err := ParseCatalog([]byte(bad), base); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("accepted %s (%v)", bad, err)
		}
	}
}

// FuzzParseCatalog: a catalog is untrusted input; whatever parses has only
// valid names, digests and http(s) URLs.
func FuzzParseCatalog(f *testing.F) {
	good := strings.Repeat("a", 64)
	f.Add(fmt.Sprintf(`{"kernels":[{"name":"k","arch":"x86_64","url":"v/vmlinuz","sha256":%q,"modules":{"url":"m","sha256":%q}}]}`, good, good))
	f.Add(`{"kernels":[]}`)
	base, _ := url.Parse("http://127.0.0.1/catalog.json")
	f.Fuzz(func(t *testing.T, data string) {
		c, err := ParseCatalog([]byte(data), base)
		if err != nil {
			return
		}
		for _, e := range c.Kernels {
			if ValidName(e.Name) != nil || !sha256RE.MatchString(e.SHA256) ||
				!(strings.HasPrefix(e.URL, "http://") || strings.HasPrefix(e.URL, "https://")) {
				t.Fatalf("accepted %+v", e)
			}
		}
	})
}
