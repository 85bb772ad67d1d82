package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
)

// --- crafted images on a loopback registry --------------------------------

// tent is one tar entry of a crafted layer.
type tent struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
	xattrs           map[string]string
}

func file(n, body string, mode int64) tent {
	return tent{name: n, body: body, typ: tar.TypeReg, mode: mode}
}
func dir(n string, mode int64) tent { return tent{name: n, typ: tar.TypeDir, mode: mode} }
func symlink(n, target string) tent {
	return tent{name: n, link: target, typ: tar.TypeSymlink, mode: 0o777}
}
func hardlink(n, target string) tent {
	return tent{name: n, link: target, typ: tar.TypeLink, mode: 0o644}
}

func tarBytes(t testing.TB, ents ...tent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, Linkname: e.link, Format: tar.FormatPAX}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if e.typ == tar.TypeChar {
			h.Devmajor, h.Devminor = 1, 3
		}
		if len(e.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %q: %v", e.name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gz(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

func layer(t testing.TB, ents ...tent) v1.Layer {
	t.Helper()
	return static.NewLayer(gz(t, tarBytes(t, ents...)), types.DockerLayer)
}

// testRegistry is go-containerregistry's registry on 127.0.0.1; mangle, when
// set, rewrites blob responses (digest mismatch, truncation).
type testRegistry struct {
	host   string
	mu     sync.Mutex
	mangle func([]byte) []byte
}

func newRegistry(t testing.TB) *testRegistry {
	t.Helper()
	tr := &testRegistry{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.mu.Lock()
		m := tr.mangle
		tr.mu.Unlock()
		if m == nil || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/sha256:") {
			reg.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, r)
		body := m(rec.Body.Bytes())
		for k, v := range rec.Header() {
			if k != "Content-Length" {
				w.Header()[k] = v
			}
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	tr.host = strings.TrimPrefix(srv.URL, "http://")
	return tr
}

func (r *testRegistry) setMangle(m func([]byte) []byte) {
	r.mu.Lock()
	r.mangle = m
	r.mu.Unlock()
}

// push writes an image of layers as host/repo:tag and returns the reference.
func (r *testRegistry) push(t testing.TB, repo string, layers ...v1.Layer) string {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	ref := r.host + "/" + repo + ":latest"
	if err := remote.Write(mustRef(t, ref), img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

func mustRef(t testing.TB, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func pullBuilder(t testing.TB) *Builder {
	t.Helper()
	return &Builder{Runner: system.Exec{}, Layout: paths.Layout{Root: t.TempDir()}}
}

// assertNothingLeft checks that a failed pull left neither an image nor staging.
func assertNothingLeft(t *testing.T, b *Builder) {
	t.Helper()
	emptyDir(t, b.Layout.ImagesDir())
	emptyDir(t, b.Layout.Tmp())
}

// --- flatten semantics ------------------------------------------------------

func TestPullFlattenSemantics(t *testing.T) {
	needRoot(t)
	needTools(t, "mkfs.ext4", "debugfs")
	reg := newRegistry(t)
	l1 := layer(t,
		dir("etc/", 0o755),
		file("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644),
		dir("bin", 0o755),
		tent{name: "bin/su", body: "ELF", typ: tar.TypeReg, mode: 0o4755},
		tent{name: "usr/bin/wall", body: "ELF", typ: tar.TypeReg, mode: 0o2755, gid: 5},
		tent{name: "home/u/", typ: tar.TypeDir, mode: 0o700, uid: 1000, gid: 1000},
		tent{name: "home/u/.profile", body: "x", typ: tar.TypeReg, mode: 0o600, uid: 1000, gid: 1000},
		dir("tmp", 0o1777),
		file("usr/lib/a", "shared", 0o644),
		hardlink("usr/lib/b", "usr/lib/a"),
		symlink("lib", "usr/lib"),
		file("gone/file", "bye", 0o644),
		file("opq/old", "lower", 0o644),
		dir("opq/sub", 0o755),
		file("opq/sub/deep", "lower", 0o644),
		tent{name: "xattr", body: "x", typ: tar.TypeReg, mode: 0o755, xattrs: map[string]string{"user.banger": "yes"}},
		tent{name: "dev/null", typ: tar.TypeChar, mode: 0o666},
		tent{name: "run/fifo", typ: tar.TypeFifo, mode: 0o644},
	)
	l2 := layer(t,
		file("gone/.wh.file", "", 0o644),
		file("opq/new", "upper", 0o644),
		file("opq/.wh..wh..opq", "", 0o644),
		file("lib/through", "via relative symlink", 0o644), // lands in usr/lib
		symlink("abs", "/usr"),
		file("abs/through-abs", "via absolute symlink", 0o644), // lands in usr/, never host /usr
		file("/etc/absname", "absolute name", 0o600),
		file("./etc/../etc/dotted", "cleaned", 0o644),
	)
	ref := reg.push(t, "sem/base", l1, l2)
	b := pullBuilder(t)
	var events []PullEvent
	res, err := b.Pull(context.Background(), PullOptions{Ref: ref, Insecure: true}, func(ev PullEvent) { events = append(events, ev) })
	if err != nil {
		t.Fatal(err)
	}
	if res.Info.Name != "base-latest" || !strings.HasPrefix(res.Info.Digest, "sha256:") || !res.Info.FirstBoot {
		t.Fatalf("info: %+v", res.Info)
	}
	if fmt.Sprint(res.Skipped) != "[/dev/null /run/fifo]" {
		t.Errorf("skipped: %v", res.Skipped)
	}
	var sawBytes bool
	for _, ev := range events {
		if ev.Stage == StagePull && ev.Total > 0 && ev.Current == ev.Total {
			sawBytes = true
		}
	}
	if !sawBytes {
		t.Errorf("no byte progress reaching the total in %+v", events)
	}
	img := filepath.Join(b.Layout.Image("base-latest"), paths.RootfsFile)
	want := map[string]string{
		"/bin/su":           "regular 04755 0:0 1",
		"/usr/bin/wall":     "regular 02755 0:5 1",
		"/home/u":           "directory 0700 1000:1000 2",
		"/home/u/.profile":  "regular 0600 1000:1000 1",
		"/tmp":              "directory 01777 0:0 2",
		"/usr/lib/a":        "regular 0644 0:0 2",
		"/usr/lib/b":        "regular 0644 0:0 2",
		"/usr/lib/through":  "regular 0644 0:0 1",
		"/usr/through-abs":  "regular 0644 0:0 1",
		"/etc/absname":      "regular 0600 0:0 1",
		"/etc/dotted":       "regular 0644 0:0 1",
		"/lib":              "symlink 0777 0:0 1",
		"/opq/new":          "regular 0644 0:0 1",
		"/opq/old":          "missing",
		"/opq/sub":          "missing",
		"/gone/file":        "missing",
		"/gone/.wh.file":    "missing",
		"/opq/.wh..wh..opq": "missing",
		"/dev/null":         "missing",
		"/run/fifo":         "missing",
	}
	for p, w := range want {
		if got := inode(t, img, p); got != w {
			t.Errorf("%s: got %q, want %q", p, got, w)
		}
	}
	if ea := debugfs(t, img, "ea_list /xattr"); !strings.Contains(ea, "user.banger") {
		t.Errorf("xattr lost: %s", ea)
	}
	if _, err := os.Stat("/usr/through-abs"); err == nil {
		t.Fatal("a write through an absolute symlink reached the host")
	}
	emptyDir(t, b.Layout.Tmp())

	// Same digest again: nothing to do.
	res2, err := b.Pull(context.Background(), PullOptions{Ref: ref, Insecure: true}, nil)
	if err != nil || !res2.Unchanged || res2.Info.Digest != res.Info.Digest {
		t.Fatalf("second pull: %+v, %v", res2, err)
	}
	// Another image under the same name is refused.
	other := reg.push(t, "sem/base", layer(t, file("x", "y", 0o644)))
	if _, err := b.Pull(context.Background(), PullOptions{Ref: other, Insecure: true}, nil); !errors.Is(err, api.ErrExists) {
		t.Fatalf("different digest, same name: %v", err)
	}
}

func TestPullSystemdImageNeedsNoFirstBoot(t *testing.T) {
	needRoot(t)
	needTools(t, "mkfs.ext4")
	reg := newRegistry(t)
	ref := reg.push(t, "deb/sd", layer(t,
		dir("usr/lib/systemd", 0o755),
		file("usr/lib/systemd/systemd", "ELF", 0o755),
		symlink("lib", "usr/lib"),
		file("usr/sbin/sshd", "ELF", 0o755),
	))
	b := pullBuilder(t)
	res, err := b.Pull(context.Background(), PullOptions{Ref: ref, Name: "sd", Insecure: true, Size: 64 << 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Info.FirstBoot || res.Info.Size != 64<<20 {
		t.Fatalf("info: %+v", res.Info)
	}
	if _, err := b.Pull(context.Background(), PullOptions{Ref: reg.push(t, "deb/sd2", layer(t, file("x", "y", 0o644))), Name: "tiny", Insecure: true, Size: 1 << 20}, nil); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("too small --size: %v", err)
	}
	assertNothingLeftBut(t, b, "sd")
}

func assertNothingLeftBut(t *testing.T, b *Builder, keep string) {
	t.Helper()
	ents, _ := os.ReadDir(b.Layout.ImagesDir())
	for _, e := range ents {
		if e.Name() != keep {
			t.Errorf("unexpected image dir %s", e.Name())
		}
	}
	emptyDir(t, b.Layout.Tmp())
}

// archImage is a one-layer image whose config and /arch file name arch.
func archImage(t *testing.T, arch string, ents ...tent) v1.Image {
	t.Helper()
	base, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: arch})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, layer(t, append([]tent{file("arch", arch, 0o644)}, ents...)...))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// A multi-arch index: banger must build the linux/amd64 image. The other
// entries carry different content (and arm64 a hostile layer), so the built
// rootfs shows which manifest was flattened.
func TestPullPicksAmd64FromIndex(t *testing.T) {
	needRoot(t)
	needTools(t, "mkfs.ext4", "debugfs")
	reg := newRegistry(t)
	amd := archImage(t, "amd64")
	arm := archImage(t, "arm64", file("../../evil-arm64", "x", 0o644))
	s390 := archImage(t, "s390x")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: s390, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}},
	)
	ref := reg.host + "/multi/arch:1"
	if err := remote.WriteIndex(mustRef(t, ref), idx); err != nil {
		t.Fatal(err)
	}
	b := pullBuilder(t)
	res, err := b.Pull(context.Background(), PullOptions{Ref: ref, Name: "multi", Insecure: true}, nil)
	if err != nil {
		t.Fatalf("pull of a multi-arch index: %v", err)
	}
	want, _ := amd.Digest()
	if res.Info.Digest != want.String() {
		t.Errorf("recorded digest %s, want amd64's %s", res.Info.Digest, want)
	}
	img := filepath.Join(b.Layout.Image("multi"), paths.RootfsFile)
	out := strings.Split(strings.TrimSpace(debugfs(t, img, "cat /arch")), "\n") // after debugfs' banner
	if got := out[len(out)-1]; got != "amd64" {
		t.Fatalf("flattened /arch = %q, want amd64", got)
	}
	assertNothingLeftBut(t, b, "multi")

	// A manifest the index calls amd64 whose config says otherwise is refused.
	liar := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	ref = reg.host + "/multi/liar:1"
	if err := remote.WriteIndex(mustRef(t, ref), liar); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Pull(context.Background(), PullOptions{Ref: ref, Name: "liar", Insecure: true}, nil); !errors.Is(err, api.ErrInvalid) ||
		!strings.Contains(err.Error(), "linux/arm64") {
		t.Fatalf("index entry lying about its platform: %v", err)
	}
	assertNothingLeftBut(t, b, "multi")
}

func TestPullRefusesPlainHTTPWithoutInsecure(t *testing.T) {
	reg := newRegistry(t)
	ref := reg.push(t, "plain/http", layer(t, file("x", "y", 0o644)))
	b := pullBuilder(t)
	_, err := b.Pull(context.Background(), PullOptions{Ref: ref}, nil)
	if err == nil || !strings.Contains(err.Error(), "--insecure") {
		t.Fatalf("want a refusal naming --insecure, got %v", err)
	}
	assertNothingLeft(t, b)
}

// --- hardening: every crafted image fails cleanly ---------------------------

func TestPullHardening(t *testing.T) {
	needRoot(t)
	zeros := strings.Repeat("\x00", 3<<20)
	cases := []struct {
		name    string
		layers  func(t *testing.T) []v1.Layer
		limits  Limits
		mangle  func([]byte) []byte
		wantErr []string
		invalid bool
	}{
		{name: "dotdot", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{layer(t, file("../../evil-dotdot", "x", 0o644))}
		}, wantErr: []string{`"../../evil-dotdot"`, "escapes the image root"}, invalid: true},
		{name: "dotdot inside", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{layer(t, file("a/b/../../../evil-inside", "x", 0o644))}
		}, wantErr: []string{`"a/b/../../../evil-inside"`, "escapes the image root"}, invalid: true},
		{name: "symlink same layer", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{layer(t, symlink("link", "../../../../.."), file("link/evil-symlink", "x", 0o644))}
		}, wantErr: []string{`"link/evil-symlink"`, "escapes the image root through a symlink"}, invalid: true},
		{name: "symlink earlier layer", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{layer(t, dir("d", 0o755), symlink("d/up", "../..")), layer(t, file("d/up/evil-layer", "x", 0o644))}
		}, wantErr: []string{"layer 2/2", `"d/up/evil-layer"`, "escapes"}, invalid: true},
		{name: "hard link dotdot", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{layer(t, hardlink("passwd", "../../../../etc/passwd"))}
		}, wantErr: []string{`"passwd"`, "hard link target", "escapes the image root"}, invalid: true},
		{name: "hard link through symlink", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{layer(t, symlink("s", "../../../.."), hardlink("h", "s/etc/passwd"))}
		}, wantErr: []string{`"h"`, `hard link target "s/etc/passwd"`, "escapes"}, invalid: true},
		{name: "newline", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{layer(t, file("etc/evil\nname", "x", 0o644))}
		}, wantErr: []string{`"etc/evil\nname"`, "control character 0x0a"}, invalid: true},
		{name: "control char", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{layer(t, file("bell\x07", "x", 0o644))}
		}, wantErr: []string{"control character 0x07"}, invalid: true},
		{name: "symlink target control char", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{layer(t, symlink("l", "a\nb"))}
		}, wantErr: []string{`"l"`, "control character"}, invalid: true},
		{name: "layer bomb", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{layer(t, file("zeros", zeros, 0o644))}
		}, limits: Limits{MaxLayerBytes: 1 << 20}, wantErr: []string{"layer unpacks to more than 1048576 bytes"}, invalid: true},
		{name: "total bomb", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{layer(t, file("z1", zeros, 0o644)), layer(t, file("z2", zeros, 0o644))}
		}, limits: Limits{MaxLayerBytes: 4 << 20, MaxTotalBytes: 5 << 20}, wantErr: []string{"layer 2/2", "image unpacks to more than 5242880 bytes"}, invalid: true},
		{name: "entry bomb", layers: func(t *testing.T) []v1.Layer {
			var ents []tent
			for i := range 20 {
				ents = append(ents, file(fmt.Sprintf("f%d", i), "", 0o644))
			}
			return []v1.Layer{layer(t, ents...)}
		}, limits: Limits{MaxEntries: 10}, wantErr: []string{"more than 10 entries"}, invalid: true},
		{name: "truncated layer", layers: func(t *testing.T) []v1.Layer {
			full := gz(t, tarBytes(t, file("big", strings.Repeat("abcdefgh", 1<<14), 0o644)))
			return []v1.Layer{static.NewLayer(full[:len(full)/2], types.DockerLayer)}
		}, wantErr: []string{"layer 1/1", "unexpected EOF"}},
		{name: "corrupt layer", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{static.NewLayer(append([]byte{0x1f, 0x8b, 8, 0}, bytes.Repeat([]byte{0xee}, 600)...), types.DockerLayer)}
		}, wantErr: []string{"layer 1/1"}},
		{name: "not a tar", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{static.NewLayer(gz(t, bytes.Repeat([]byte("not a tar archive "), 100)), types.DockerLayer)}
		}, wantErr: []string{"layer 1/1", "read tar"}},
		{name: "digest mismatch", layers: func(t *testing.T) []v1.Layer {
			return []v1.Layer{layer(t, file("etc/hostname", "box\n", 0o644))}
		}, mangle: func(b []byte) []byte {
			if len(b) > 0 && bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
				b = bytes.Clone(b)
				b[len(b)-5] ^= 0xff // the gzip trailer: the tar still reads, the digest does not match
			}
			return b
		}, wantErr: []string{"layer 1/1", "sha256"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t)
			ref := reg.push(t, "evil/"+strings.ReplaceAll(tc.name, " ", "-"), tc.layers(t)...)
			reg.setMangle(tc.mangle)
			b := pullBuilder(t)
			_, err := b.Pull(context.Background(), PullOptions{Ref: ref, Insecure: true, Limits: tc.limits}, nil)
			if err == nil {
				t.Fatal("pull succeeded")
			}
			t.Logf("error: %v", err)
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tc.invalid && !errors.Is(err, api.ErrInvalid) {
				t.Errorf("error %v is not api.ErrInvalid", err)
			}
			assertNothingLeft(t, b)
			// Nothing was written next to the state root either.
			_ = filepath.WalkDir(filepath.Dir(b.Layout.Root), func(p string, d fs.DirEntry, err error) error {
				if err == nil && strings.HasPrefix(d.Name(), "evil") {
					t.Errorf("escaped write: %s", p)
				}
				return nil
			})
		})
	}
}

func TestNameFromRef(t *testing.T) {
	for in, want := range map[string]string{
		"docker.io/library/debian:bookworm": "debian-bookworm",
		"debian":                            "debian-latest",
		"localhost:5000/team/dev_box:v1.2":  "dev_box-v1.2",
		"ghcr.io/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef": "b-0123456789ab",
	} {
		ref, err := name.ParseReference(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := NameFromRef(ref); got != want {
			t.Errorf("%s: got %q, want %q", in, got, want)
		}
	}
}

func TestRemoveStaleStaging(t *testing.T) {
	layout := paths.Layout{Root: t.TempDir()}
	for _, p := range []string{"image-deb-123/rootfs/etc/passwd", "kernel-x-1/keep", "image-file"} {
		full := filepath.Join(layout.Tmp(), p)
		_ = os.MkdirAll(filepath.Dir(full), 0o755)
		_ = os.WriteFile(full, []byte("x"), 0o644)
	}
	removed, err := RemoveStaleStaging(layout)
	if err != nil || len(removed) != 1 || filepath.Base(removed[0]) != "image-deb-123" {
		t.Fatalf("removed %v, %v", removed, err)
	}
	for _, p := range []string{"kernel-x-1/keep", "image-file"} {
		if _, err := os.Stat(filepath.Join(layout.Tmp(), p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}
