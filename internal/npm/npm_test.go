package npm

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/tartest"
)

const (
	pkgName = "opencode-linux-x64"
	member  = "package/bin/opencode"
)

// entry is one tar entry a test tarball holds.
type entry struct {
	name     string
	typ      byte
	body     string
	linkname string
}

func reg(name, body string) entry { return entry{name: name, typ: tar.TypeReg, body: body} }

// tarOf writes entries as an uncompressed tar (no end marker when raw
// entries follow: callers add tartest.Archive themselves).
func tarOf(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o755, Size: int64(len(e.body)), Linkname: e.linkname}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gz(t testing.TB, raw []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func tgz(t testing.TB, entries ...entry) []byte { return gz(t, tarOf(t, entries...)) }

func integrityOf(b []byte) string {
	d := sha512.Sum512(b)
	return formatIntegrity(d[:])
}

// pub is one published version of the fake registry; tests change its
// fields to make the registry (or a mirror) lie.
type pub struct {
	name, version string
	tgz           []byte        // what the metadata's integrity describes
	integrity     string        // published; "" = integrityOf(tgz)
	tarballURL    string        // published; "" = on the fake itself
	serve         []byte        // what the tarball URL returns; nil = tgz
	chunked       bool          // no Content-Length
	stallAfter    int           // >0: send that many bytes, then stall
	trickle       time.Duration // >0: send 1 KiB chunks this far apart
	delay         time.Duration
	metaOverride  []byte // served instead of the version document
}

// fakeRegistry is an npm registry serving version documents and tarballs,
// counting requests by kind.
type fakeRegistry struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	pubs   map[string]*pub // "name@version"
	latest map[string]string
	meta   int
	tars   int
	uris   []string
	stall  chan struct{}
}

func newFake(t *testing.T, useTLS bool) *fakeRegistry {
	f := &fakeRegistry{t: t, pubs: map[string]*pub{}, latest: map[string]string{}, stall: make(chan struct{})}
	h := http.HandlerFunc(f.serveHTTP)
	if useTLS {
		f.srv = httptest.NewTLSServer(h)
	} else {
		f.srv = httptest.NewServer(h)
	}
	t.Cleanup(func() { close(f.stall); f.srv.Close() })
	return f
}

func (f *fakeRegistry) publish(name, version string, tgz []byte) *pub {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := &pub{name: name, version: version, tgz: tgz}
	f.pubs[name+"@"+version] = p
	f.latest[name] = version
	return p
}

func (f *fakeRegistry) counts() (meta, tars int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.meta, f.tars
}

func (f *fakeRegistry) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.uris...)
}

func (f *fakeRegistry) serveHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.uris = append(f.uris, r.RequestURI)
	if rest, ok := strings.CutPrefix(r.URL.Path, "/-/tarballs/"); ok {
		f.tars++
		p := f.pubs[rest]
		f.mu.Unlock()
		if p == nil {
			http.NotFound(w, r)
			return
		}
		time.Sleep(p.delay)
		body := p.serve
		if body == nil {
			body = p.tgz
		}
		if p.stallAfter > 0 {
			w.Write(body[:p.stallAfter])
			w.(http.Flusher).Flush()
			select {
			case <-f.stall:
			case <-r.Context().Done():
			}
			return
		}
		if p.trickle > 0 {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			for len(body) > 0 {
				n := min(1024, len(body))
				w.Write(body[:n])
				w.(http.Flusher).Flush()
				body = body[n:]
				time.Sleep(p.trickle)
			}
			return
		}
		if p.chunked {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
		} else {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		}
		w.Write(body)
		return
	}
	f.meta++
	// /<name>/<version>, a scoped name's '/' escaped as %2f.
	i := strings.LastIndex(r.URL.Path, "/")
	name, version := r.URL.Path[1:i], r.URL.Path[i+1:]
	if version == "latest" {
		version = f.latest[name]
	}
	p := f.pubs[name+"@"+version]
	f.mu.Unlock()
	if p == nil {
		http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
		return
	}
	if p.metaOverride != nil {
		w.Write(p.metaOverride)
		return
	}
	integ := p.integrity
	if integ == "" {
		integ = integrityOf(p.tgz)
	}
	tu := p.tarballURL
	if tu == "" {
		tu = f.srv.URL + "/-/tarballs/" + name + "@" + version
	}
	json.NewEncoder(w).Encode(map[string]any{
		"name": name, "version": version,
		"dist": map[string]any{"tarball": tu, "integrity": integ, "shasum": "0000"},
	})
}

// newCache is a Cache on the fake whose log lines land in the returned
// buffer.
func newCache(t *testing.T, f *fakeRegistry) (*Cache, *syncBuffer) {
	logs := &syncBuffer{}
	c := &Cache{
		Dir:      t.TempDir(),
		Registry: &Registry{URL: f.srv.URL, Client: f.srv.Client(), IdleTimeout: 5 * time.Second},
		Log:      slog.New(slog.NewTextHandler(logs, nil)),
	}
	if f.srv.TLS == nil {
		c.Registry.Insecure = true
	}
	return c, logs
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// assertNothingKept checks that a failed Fetch left no entry and no
// temporary directory.
func assertNothingKept(t *testing.T, c *Cache) {
	t.Helper()
	var left []string
	filepath.WalkDir(c.Dir, func(p string, d os.DirEntry, err error) error {
		if p != c.Dir && err == nil {
			left = append(left, strings.TrimPrefix(p, c.Dir))
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("cache dir not empty after a failed fetch: %v", left)
	}
}

func wantErr(t *testing.T, err, sentinel error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v containing %q", sentinel, parts)
	}
	if sentinel != nil && !errors.Is(err, sentinel) {
		t.Errorf("error %q is not %v", err, sentinel)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

const body = "#!/bin/sh\necho opencode\n"

func stdTgz(t *testing.T) []byte {
	return tgz(t,
		entry{name: "package/", typ: tar.TypeDir},
		reg("package/package.json", `{"name":"opencode-linux-x64"}`),
		reg(member, body),
		reg("package/README.md", "readme"))
}

func TestFetch(t *testing.T) {
	f := newFake(t, true)
	archive := stdTgz(t)
	f.publish(pkgName, "1.2.3", archive)
	c, _ := newCache(t, f)
	var calls [][2]int64
	got, err := c.Fetch(ctxT(t), pkgName, "1.2.3", integrityOf(archive), member, 1<<20, func(d, n int64) {
		calls = append(calls, [2]int64{d, n})
	})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(body))
	want := File{Package: pkgName, Version: "1.2.3", Integrity: integrityOf(archive), Member: member,
		SHA256: hex.EncodeToString(sum[:]), Size: int64(len(body))}
	wantDir := filepath.Join(c.Dir, pkgName, "1.2.3-"+hex.EncodeToString(sha512Of(archive))[:16])
	if got.Path != filepath.Join(wantDir, "opencode") {
		t.Errorf("path %s, want in %s", got.Path, wantDir)
	}
	if time.Since(got.Fetched) > time.Minute {
		t.Errorf("fetched %v", got.Fetched)
	}
	cmp := got
	cmp.Path, cmp.Fetched = "", time.Time{}
	if cmp != want {
		t.Errorf("file\n got %+v\nwant %+v", cmp, want)
	}
	data, err := os.ReadFile(got.Path)
	if err != nil || string(data) != body {
		t.Fatalf("cached file %q, %v", data, err)
	}
	st, _ := os.Stat(got.Path)
	if st.Mode().Perm() != 0o555 {
		t.Errorf("file mode %v, want 0555", st.Mode())
	}
	dst, _ := os.Stat(wantDir)
	if dst.Mode().Perm()&0o022 != 0 {
		t.Errorf("entry dir mode %v: others can write", dst.Mode())
	}
	var meta File
	raw, _ := os.ReadFile(filepath.Join(wantDir, "meta.json"))
	if err := json.Unmarshal(raw, &meta); err != nil || meta != got {
		t.Errorf("meta.json %s (%v), want %+v", raw, err, got)
	}
	if len(calls) < 2 || calls[0] != [2]int64{0, int64(len(archive))} || calls[len(calls)-1] != [2]int64{int64(len(archive)), int64(len(archive))} {
		t.Errorf("progress calls %v", calls)
	}

	// A hit, pinned or not, asks the registry nothing.
	m0, t0 := f.counts()
	if m0 != 1 || t0 != 1 {
		t.Fatalf("first fetch: %d metadata and %d tarball requests, want 1 and 1", m0, t0)
	}
	for _, integ := range []string{integrityOf(archive), ""} {
		again, err := c.Fetch(ctxT(t), pkgName, "1.2.3", integ, member, 1<<20, nil)
		if err != nil || again != got {
			t.Fatalf("second fetch (pinned %q): %+v, %v", integ, again, err)
		}
	}
	if m, n := f.counts(); m != m0 || n != t0 {
		t.Errorf("cache hits made %d metadata and %d tarball requests", m-m0, n-t0)
	}
	list, err := c.List()
	if err != nil || len(list) != 1 || list[0] != got {
		t.Errorf("List: %+v, %v", list, err)
	}
}

func sha512Of(b []byte) []byte { d := sha512.Sum512(b); return d[:] }

func TestFetchLatest(t *testing.T) {
	f := newFake(t, true)
	f.publish(pkgName, "1.0.0", stdTgz(t))
	newer := tgz(t, reg(member, "v2"))
	f.publish(pkgName, "2.0.0-beta.1", newer)
	c, _ := newCache(t, f)
	d, err := c.Registry.Resolve(ctxT(t), pkgName, "")
	if err != nil || d.Version != "2.0.0-beta.1" || d.Integrity != integrityOf(newer) {
		t.Fatalf("Resolve latest: %+v, %v", d, err)
	}
	got, err := c.Fetch(ctxT(t), pkgName, "", "", member, 1<<20, nil)
	if err != nil || got.Version != "2.0.0-beta.1" {
		t.Fatalf("Fetch latest: %+v, %v", got, err)
	}
	if data, _ := os.ReadFile(got.Path); string(data) != "v2" {
		t.Errorf("latest content %q", data)
	}
	if uris := f.requests(); !strings.Contains(strings.Join(uris, " "), "/"+pkgName+"/latest") {
		t.Errorf("requests %v: no /latest", uris)
	}
	// An exact version is fetched as such, next to the latest.
	if got1, err := c.Fetch(ctxT(t), pkgName, "1.0.0", "", member, 1<<20, nil); err != nil || got1.Version != "1.0.0" {
		t.Fatalf("Fetch 1.0.0: %+v, %v", got1, err)
	}
	if list, _ := c.List(); len(list) != 2 {
		t.Errorf("List: %+v", list)
	}
}

// A mirror that publishes the pinned integrity but serves other bytes.
func TestFetchPinnedMismatch(t *testing.T) {
	f := newFake(t, true)
	real := stdTgz(t)
	p := f.publish(pkgName, "1.2.3", real)
	p.serve = tgz(t, reg(member, "evil"))
	c, _ := newCache(t, f)
	_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", integrityOf(real), member, 1<<20, nil)
	wantErr(t, err, api.ErrInvalid, "integrity mismatch", pkgName+"@1.2.3", integrityOf(real), integrityOf(p.serve))
	assertNothingKept(t, c)
}

// The registry publishes another integrity than the pinned one: refused
// before any download.
func TestFetchPublishedDiffersFromPinned(t *testing.T) {
	f := newFake(t, true)
	other := tgz(t, reg(member, "other build"))
	f.publish(pkgName, "1.2.3", other)
	c, _ := newCache(t, f)
	pinned := integrityOf(stdTgz(t))
	_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", pinned, member, 1<<20, nil)
	wantErr(t, err, api.ErrInvalid, pkgName+"@1.2.3", pinned, integrityOf(other))
	if _, n := f.counts(); n != 0 {
		t.Errorf("%d tarball requests after the integrity refusal", n)
	}
	assertNothingKept(t, c)
}

// Bytes changed in transit (or on the registry's disk) against the
// integrity the registry publishes.
func TestFetchTampered(t *testing.T) {
	for _, at := range []string{"header", "middle", "end"} {
		t.Run(at, func(t *testing.T) {
			f := newFake(t, true)
			real := stdTgz(t)
			p := f.publish(pkgName, "1.2.3", real)
			p.serve = bytes.Clone(real)
			switch at {
			case "header":
				p.serve[9] ^= 1 // gzip OS byte: unpacks fine
			case "middle":
				p.serve[len(real)/2] ^= 0x40
			case "end":
				p.serve[len(real)-1] ^= 1 // gzip ISIZE trailer
			}
			c, _ := newCache(t, f)
			_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1<<20, nil)
			wantErr(t, err, api.ErrInvalid, "integrity mismatch", pkgName+"@1.2.3")
			assertNothingKept(t, c)
		})
	}
}

// The digest covers the whole tarball, bytes after the end of the tar
// included: published with trailing bytes it verifies; trailing bytes
// not published are refused.
func TestFetchDigestCoversTrailingBytes(t *testing.T) {
	junk := make([]byte, 256<<10)
	rand.Read(junk)
	f := newFake(t, true)
	withJunk := append(stdTgz(t), junk...)
	f.publish(pkgName, "1.0.0", withJunk)
	p := f.publish(pkgName, "2.0.0", stdTgz(t))
	p.serve = append(bytes.Clone(p.tgz), junk...)
	c, _ := newCache(t, f)
	if _, err := c.Fetch(ctxT(t), pkgName, "1.0.0", "", member, 1<<20, nil); err != nil {
		t.Fatalf("tarball with published trailing bytes: %v", err)
	}
	_, err := c.Fetch(ctxT(t), pkgName, "2.0.0", "", member, 1<<20, nil)
	wantErr(t, err, api.ErrInvalid, "integrity mismatch")
}

func TestFetchMemberMissing(t *testing.T) {
	f := newFake(t, true)
	f.publish(pkgName, "1.2.3", tgz(t, reg("package/bin/other", "x"), reg("package/bin/opencode.sh", "x")))
	c, _ := newCache(t, f)
	_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1<<20, nil)
	wantErr(t, err, api.ErrNotFound, pkgName+"@1.2.3", member)
	assertNothingKept(t, c)
}

// The registry's bytes match its integrity but the member is hostile.
func TestFetchHostileMember(t *testing.T) {
	cases := map[string][]entry{
		"symlink":        {{name: member, typ: tar.TypeSymlink, linkname: "/etc/shadow"}},
		"hardlink":       {reg("package/x", "x"), {name: member, typ: tar.TypeLink, linkname: "package/x"}},
		"directory":      {{name: member + "/", typ: tar.TypeDir}},
		"char device":    {{name: member, typ: tar.TypeChar}},
		"fifo":           {{name: member, typ: tar.TypeFifo}},
		"dotdot":         {reg("package/lib/../bin/opencode", "evil")},
		"leading dotdot": {reg("../"+member, "evil")},
		"absolute":       {reg("/"+member, "evil")},
		"dotdot first":   {reg("package/bin/../bin/opencode", "evil"), reg(member, body)},
		"twice":          {reg(member, body), reg(member, "evil")},
	}
	for name, ents := range cases {
		t.Run(name, func(t *testing.T) {
			f := newFake(t, true)
			f.publish(pkgName, "1.2.3", tgz(t, ents...))
			c, _ := newCache(t, f)
			_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1<<20, nil)
			wantErr(t, err, api.ErrInvalid, pkgName+"@1.2.3", "refused")
			assertNothingKept(t, c)
		})
	}
	// "./package/..." is the plain spelling npm pack never writes but tar
	// does; it is the member.
	f := newFake(t, true)
	f.publish(pkgName, "1.2.3", tgz(t, reg("./"+member, body)))
	c, _ := newCache(t, f)
	if _, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1<<20, nil); err != nil {
		t.Errorf("./%s: %v", member, err)
	}
}

func TestFetchLimits(t *testing.T) {
	const limit = 1024
	cases := map[string]struct {
		ents  []entry
		parts []string
	}{
		"member over limit": {[]entry{reg(member, strings.Repeat("x", limit+1))},
			[]string{"1025 bytes", "limit of 1024"}},
		"member at limit, others over 2x": {[]entry{reg("package/a", strings.Repeat("a", limit)), reg(member, strings.Repeat("x", limit)), reg("package/b", "b")},
			[]string{"limit of 2048"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			f := newFake(t, true)
			f.publish(pkgName, "1.2.3", tgz(t, tc.ents...))
			c, _ := newCache(t, f)
			_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, limit, nil)
			wantErr(t, err, api.ErrInvalid, append(tc.parts, pkgName+"@1.2.3")...)
			assertNothingKept(t, c)
		})
	}
	t.Run("member at limit", func(t *testing.T) {
		f := newFake(t, true)
		f.publish(pkgName, "1.2.3", tgz(t, reg("package/a", strings.Repeat("a", limit-1)), reg(member, strings.Repeat("x", limit))))
		c, _ := newCache(t, f)
		if got, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, limit, nil); err != nil || got.Size != limit {
			t.Fatalf("%+v, %v", got, err)
		}
	})
}

// Sparse entries: a few hundred bytes on the wire that archive/tar would
// expand to their logical size.
func TestFetchSparse(t *testing.T) {
	for _, kind := range tartest.Kinds {
		t.Run("member/"+kind, func(t *testing.T) {
			f := newFake(t, true)
			// Within the limit: only the sparse check refuses it.
			f.publish(pkgName, "1.2.3", gz(t, tartest.Archive(tartest.SparseEntry(kind, member, 512<<10, []byte("x")))))
			c, _ := newCache(t, f)
			_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1<<20, nil)
			wantErr(t, err, api.ErrInvalid, "sparse", pkgName+"@1.2.3")
			assertNothingKept(t, c)
		})
		t.Run("other/"+kind, func(t *testing.T) {
			f := newFake(t, true)
			// A skipped entry is charged at its logical size, 1 GiB.
			raw := tartest.Archive(tartest.SparseEntry(kind, "package/hole", 1<<30, []byte("x")))
			first := tarOf(t, reg(member, body))
			raw = append(first[:len(first)-1024], raw...) // member, then the sparse entry
			f.publish(pkgName, "1.2.3", gz(t, raw))
			c, _ := newCache(t, f)
			_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1<<20, nil)
			wantErr(t, err, api.ErrInvalid, "limit of 2097152", pkgName+"@1.2.3")
			assertNothingKept(t, c)
		})
	}
}

func TestFetchTarballLimit(t *testing.T) {
	noise := make([]byte, 16<<10)
	rand.Read(noise)
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			f := newFake(t, true)
			p := f.publish(pkgName, "1.2.3", tgz(t, reg("package/noise", string(noise)), reg(member, body)))
			p.chunked = chunked
			c, _ := newCache(t, f)
			c.MaxTarball = 4096
			var read int64
			_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1<<20, func(d, _ int64) { read = d })
			wantErr(t, err, api.ErrInvalid, "limit of 4096", pkgName+"@1.2.3")
			if !chunked {
				// The announced length is refused before any byte is read.
				wantErr(t, err, api.ErrInvalid, fmt.Sprintf("is %d bytes", len(p.tgz)))
				if read != 0 {
					t.Errorf("read %d bytes of a tarball announced over the limit", read)
				}
			}
			assertNothingKept(t, c)
		})
	}
	// Headers the entries never charge (here 4000 empty entries, 4 MB of
	// tar in 6 KB of gzip) are bounded too.
	t.Run("empty entries", func(t *testing.T) {
		ents := []entry{reg(member, body)}
		for range 4000 {
			ents = append(ents, reg("package/e", ""))
		}
		f := newFake(t, true)
		archive := tgz(t, ents...)
		f.publish(pkgName, "1.2.3", archive)
		c, _ := newCache(t, f)
		c.MaxTarball = 64 << 10
		if len(archive) > int(c.MaxTarball) {
			t.Fatalf("test tarball is %d bytes", len(archive))
		}
		_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1024, nil)
		wantErr(t, err, api.ErrInvalid, "unpacks to more than the limit", pkgName+"@1.2.3")
		assertNothingKept(t, c)
	})
}

func TestResolveMetadataLimit(t *testing.T) {
	f := newFake(t, true)
	p := f.publish(pkgName, "1.2.3", stdTgz(t))
	doc := fmt.Sprintf(`{"name":%q,"version":"1.2.3","readme":"%s","dist":{"tarball":"%s/-/tarballs/x","integrity":%q}}`,
		pkgName, strings.Repeat("x", maxMetadataBytes), f.srv.URL, integrityOf(p.tgz))
	p.metaOverride = []byte(doc)
	c, _ := newCache(t, f)
	_, err := c.Registry.Resolve(ctxT(t), pkgName, "1.2.3")
	wantErr(t, err, api.ErrInvalid, "limit of 4194304", pkgName+"@1.2.3")
}

func TestResolveRefusesBadMetadata(t *testing.T) {
	f := newFake(t, true)
	archive := stdTgz(t)
	host := strings.TrimPrefix(f.srv.URL, "https://")
	cases := map[string]func(p *pub){
		"tarball on another host": func(p *pub) { p.tarballURL = "https://evil.example/x.tgz" },
		"tarball on another port": func(p *pub) { p.tarballURL = "https://127.0.0.1:1/x.tgz" },
		"tarball over http":       func(p *pub) { p.tarballURL = "http://" + host + "/-/tarballs/x" },
		"tarball with userinfo":   func(p *pub) { p.tarballURL = "https://u:p@" + host + "/-/tarballs/x" },
		"sha1 integrity":          func(p *pub) { p.integrity = "sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk=" },
		"no integrity":            func(p *pub) { p.integrity = " " },
		"another package":         func(p *pub) { p.metaOverride = []byte(`{"name":"other","version":"1.2.3"}`) },
		"another version":         func(p *pub) { p.metaOverride = fmt.Appendf(nil, `{"name":%q,"version":"6.6.6"}`, pkgName) },
		"version with a slash":    func(p *pub) { p.metaOverride = fmt.Appendf(nil, `{"name":%q,"version":"../../x"}`, pkgName) },
		"not json":                func(p *pub) { p.metaOverride = []byte("<html>") },
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			p := f.publish(pkgName, "1.2.3", archive)
			mod(p)
			c, _ := newCache(t, f)
			_, t0 := f.counts()
			_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1<<20, nil)
			wantErr(t, err, api.ErrInvalid, pkgName+"@")
			if _, n := f.counts(); n != t0 {
				t.Errorf("tarball fetched despite the refusal")
			}
			assertNothingKept(t, c)
		})
	}
	// "latest" may name any version, but it must be a version.
	p := f.publish(pkgName, "1.2.3", archive)
	p.metaOverride = fmt.Appendf(nil, `{"name":%q,"version":".."}`, pkgName)
	c, _ := newCache(t, f)
	_, err := c.Fetch(ctxT(t), pkgName, "", "", member, 1<<20, nil)
	wantErr(t, err, api.ErrInvalid, `bad version ".."`)
}

func TestPlainHTTP(t *testing.T) {
	f := newFake(t, false)
	f.publish(pkgName, "1.2.3", stdTgz(t))
	c, _ := newCache(t, f)
	c.Registry.Insecure = false
	_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1<<20, nil)
	wantErr(t, err, api.ErrInvalid, "plain http")
	if m, n := f.counts(); m+n != 0 {
		t.Errorf("%d requests over refused http", m+n)
	}
	c.Registry = &Registry{URL: f.srv.URL, Insecure: true}
	if _, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1<<20, nil); err != nil {
		t.Fatalf("with Insecure: %v", err)
	}
	// An https registry redirecting to http is refused.
	red := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, f.srv.URL+r.URL.Path, http.StatusFound)
	}))
	defer red.Close()
	c2 := &Cache{Dir: t.TempDir(), Registry: &Registry{URL: red.URL, Client: red.Client()}}
	_, err = c2.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1<<20, nil)
	wantErr(t, err, api.ErrInvalid, "plain http")
}

func TestNotFound(t *testing.T) {
	f := newFake(t, true)
	p := f.publish(pkgName, "1.2.3", stdTgz(t))
	c, _ := newCache(t, f)
	_, err := c.Fetch(ctxT(t), "nope", "1.0.0", "", member, 1<<20, nil)
	wantErr(t, err, api.ErrNotFound, "nope@1.0.0")
	_, err = c.Fetch(ctxT(t), pkgName, "9.9.9", "", member, 1<<20, nil)
	wantErr(t, err, api.ErrNotFound, pkgName+"@9.9.9")
	p.tarballURL = f.srv.URL + "/-/tarballs/gone"
	_, err = c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, 1<<20, nil)
	wantErr(t, err, api.ErrNotFound, pkgName+"@1.2.3")
	assertNothingKept(t, c)
}

func TestIdleTimeout(t *testing.T) {
	f := newFake(t, true)
	noise := make([]byte, 64<<10)
	rand.Read(noise)
	p := f.publish(pkgName, "1.2.3", tgz(t, reg("package/noise", string(noise)), reg(member, body)))
	p.stallAfter = 1000
	c, _ := newCache(t, f)
	c.Registry.IdleTimeout = 300 * time.Millisecond
	start := time.Now()
	_, err := c.Fetch(ctxT(t), pkgName, "1.2.3", integrityOf(p.tgz), member, 1<<20, nil)
	wantErr(t, err, nil, "idle timeout", pkgName+"@1.2.3")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stalled fetch took %v", d)
	}
	assertNothingKept(t, c)
}

// A slow download that keeps sending is not cut off: IdleTimeout bounds a
// stall, not the transfer.
func TestIdleTimeoutIsNotATotalTimeout(t *testing.T) {
	f := newFake(t, true)
	noise := make([]byte, 12<<10)
	rand.Read(noise)
	p := f.publish(pkgName, "1.2.3", tgz(t, reg("package/noise", string(noise)), reg(member, body)))
	p.trickle = 100 * time.Millisecond // 13 chunks: ~1.3 s in all
	c, _ := newCache(t, f)
	c.Registry.IdleTimeout = 400 * time.Millisecond
	start := time.Now()
	if _, err := c.Fetch(ctxT(t), pkgName, "1.2.3", integrityOf(p.tgz), member, 1<<20, nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 2*c.Registry.IdleTimeout {
		t.Fatalf("download took %v: the test does not outlast the idle timeout", d)
	}
}

func TestCorruptEntryRefetched(t *testing.T) {
	f := newFake(t, true)
	archive := stdTgz(t)
	f.publish(pkgName, "1.2.3", archive)
	corruptions := map[string]func(t *testing.T, file File){
		"same size, other bytes": func(t *testing.T, file File) {
			os.Chmod(file.Path, 0o755)
			if err := os.WriteFile(file.Path, []byte(strings.Repeat("X", len(body))), 0o755); err != nil {
				t.Fatal(err)
			}
		},
		"truncated": func(t *testing.T, file File) {
			if err := os.Truncate(file.Path, 3); err != nil {
				t.Fatal(err)
			}
		},
		"replaced by a symlink": func(t *testing.T, file File) {
			os.Remove(file.Path)
			os.WriteFile(file.Path+".x", []byte(body), 0o555)
			if err := os.Symlink(file.Path+".x", file.Path); err != nil {
				t.Fatal(err)
			}
		},
		"meta.json garbled": func(t *testing.T, file File) {
			m := filepath.Join(filepath.Dir(file.Path), "meta.json")
			os.Chmod(m, 0o644)
			if err := os.WriteFile(m, []byte("{"), 0o644); err != nil {
				t.Fatal(err)
			}
		},
		"meta.json integrity rewritten": func(t *testing.T, file File) {
			m := filepath.Join(filepath.Dir(file.Path), "meta.json")
			file.Integrity = integrityOf([]byte("x"))
			b, _ := json.Marshal(file)
			os.Chmod(m, 0o644)
			os.WriteFile(m, b, 0o644)
		},
	}
	for name, corrupt := range corruptions {
		t.Run(name, func(t *testing.T) {
			c, logs := newCache(t, f)
			first, err := c.Fetch(ctxT(t), pkgName, "1.2.3", integrityOf(archive), member, 1<<20, nil)
			if err != nil {
				t.Fatal(err)
			}
			corrupt(t, first)
			_, t0 := f.counts()
			again, err := c.Fetch(ctxT(t), pkgName, "1.2.3", integrityOf(archive), member, 1<<20, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, n := f.counts(); n != t0+1 {
				t.Errorf("corrupt entry not fetched again (%d tarball requests)", n-t0)
			}
			if data, _ := os.ReadFile(again.Path); string(data) != body {
				t.Errorf("re-fetched file %q", data)
			}
			if !strings.Contains(logs.String(), "corrupt entry removed") {
				t.Errorf("no log line for the corrupt entry: %s", logs)
			}
		})
	}
}

func TestConcurrentFetch(t *testing.T) {
	f := newFake(t, true)
	archive := stdTgz(t)
	p := f.publish(pkgName, "1.2.3", archive)
	p.delay = 200 * time.Millisecond
	c, _ := newCache(t, f)
	const n = 8
	var wg sync.WaitGroup
	files := make([]File, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			integ := ""
			if i%2 == 0 {
				integ = integrityOf(archive)
			}
			files[i], errs[i] = c.Fetch(ctxT(t), pkgName, "1.2.3", integ, member, 1<<20, nil)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || files[i] != files[0] {
			t.Errorf("fetch %d: %+v, %v", i, files[i], errs[i])
		}
	}
	if _, tars := f.counts(); tars != 1 {
		t.Errorf("%d concurrent fetches downloaded %d times, want once", n, tars)
	}
	if len(c.locks) != 0 {
		t.Errorf("locks left: %v", c.locks)
	}
}

func TestScopedName(t *testing.T) {
	f := newFake(t, true)
	archive := stdTgz(t)
	f.publish("@acme/tool", "0.1.0", archive)
	c, _ := newCache(t, f)
	got, err := c.Fetch(ctxT(t), "@acme/tool", "0.1.0", "", member, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	if uris := f.requests(); uris[0] != "/@acme%2ftool/0.1.0" {
		t.Errorf("metadata request %q, want /@acme%%2ftool/0.1.0", uris[0])
	}
	if !strings.HasPrefix(got.Path, filepath.Join(c.Dir, "@acme", "tool", "0.1.0-")) {
		t.Errorf("path %s", got.Path)
	}
	if list, err := c.List(); err != nil || len(list) != 1 || list[0].Package != "@acme/tool" {
		t.Errorf("List: %+v, %v", list, err)
	}
	for range 2 {
		if err := c.Remove("@acme/tool", "0.1.0"); err != nil {
			t.Fatal(err)
		}
	}
	assertNothingKept(t, c)
}

func TestListAndRemove(t *testing.T) {
	f := newFake(t, true)
	f.publish(pkgName, "1.0.0", stdTgz(t))
	f.publish(pkgName, "1.0.0-beta", tgz(t, reg(member, "beta")))
	f.publish("other", "2.0.0", stdTgz(t))
	c, logs := newCache(t, f)
	if list, err := c.List(); err != nil || len(list) != 0 {
		t.Fatalf("empty cache: %+v, %v", list, err)
	}
	for _, pv := range [][2]string{{pkgName, "1.0.0"}, {pkgName, "1.0.0-beta"}, {"other", "2.0.0"}} {
		if _, err := c.Fetch(ctxT(t), pv[0], pv[1], "", member, 1<<20, nil); err != nil {
			t.Fatal(err)
		}
	}
	// A malformed entry and a leftover temporary directory.
	bad := filepath.Join(c.Dir, "junk", "1.0.0-0123456789abcdef")
	os.MkdirAll(bad, 0o755)
	os.WriteFile(filepath.Join(bad, "meta.json"), []byte("nope"), 0o644)
	os.MkdirAll(filepath.Join(c.Dir, ".tmp-123", "x"), 0o755)
	os.WriteFile(filepath.Join(c.Dir, ".tmp-123", "x", "meta.json"), []byte("{}"), 0o644)
	list, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range list {
		names = append(names, f.Package+"@"+f.Version)
	}
	if got := strings.Join(names, " "); got != pkgName+"@1.0.0 "+pkgName+"@1.0.0-beta other@2.0.0" {
		t.Errorf("List: %s", got)
	}
	if !strings.Contains(logs.String(), "malformed entry skipped") {
		t.Errorf("no log line for the malformed entry: %s", logs)
	}
	// Removing 1.0.0 leaves 1.0.0-beta, and twice is fine.
	for range 2 {
		if err := c.Remove(pkgName, "1.0.0"); err != nil {
			t.Fatal(err)
		}
	}
	list, _ = c.List()
	if len(list) != 2 || list[0].Version != "1.0.0-beta" {
		t.Errorf("after Remove: %+v", list)
	}
	if err := c.Remove("../x", "1.0.0"); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("Remove bad name: %v", err)
	}
	if err := c.Remove(pkgName, ".."); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("Remove bad version: %v", err)
	}
}

func TestInvalidInput(t *testing.T) {
	f := newFake(t, true)
	archive := stdTgz(t)
	f.publish(pkgName, "1.2.3", archive)
	c, _ := newCache(t, f)
	type call struct{ pkg, version, integrity, member string }
	ok := call{pkgName, "1.2.3", "", member}
	var cases []call
	for _, n := range []string{"", "Upper", "a b", "../x", "x/../y", "a/b", "@scope", "@/x", "@s/", "@s/x/y", ".hidden", "_x", "a%2fb", "a\x00", strings.Repeat("a", 215)} {
		c := ok
		c.pkg = n
		cases = append(cases, c)
	}
	for _, v := range []string{".", "..", "../1", "1.0/2", "1.0.0 ", "-1", "1%2f", "1?x", strings.Repeat("1", 65)} {
		c := ok
		c.version = v
		cases = append(cases, c)
	}
	for _, m := range []string{"", ".", "/" + member, "../" + member, "package/../" + member, "package//bin", "package/bin/", "package/meta.json"} {
		c := ok
		c.member = m
		cases = append(cases, c)
	}
	for _, i := range []string{"sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk=", "sha512-", "sha512-!!", "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", integrityOf(archive)[:20]} {
		c := ok
		c.integrity = i
		cases = append(cases, c)
	}
	for _, tc := range cases {
		_, err := c.Fetch(ctxT(t), tc.pkg, tc.version, tc.integrity, tc.member, 1<<20, nil)
		if !errors.Is(err, api.ErrInvalid) {
			t.Errorf("Fetch(%q, %q, %q, %q): %v, want invalid", tc.pkg, tc.version, tc.integrity, tc.member, err)
		}
	}
	for _, limit := range []int64{0, -1, 1 << 62} {
		if _, err := c.Fetch(ctxT(t), pkgName, "1.2.3", "", member, limit, nil); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("limit %d: %v", limit, err)
		}
	}
	if _, err := c.Registry.Resolve(ctxT(t), "Bad", "1"); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("Resolve bad name: %v", err)
	}
	if m, n := f.counts(); m+n != 0 {
		t.Errorf("invalid input made %d requests", m+n)
	}
	for _, n := range []string{"a", "a.b-c_d", "@s/x", "@a-b/c.d", strings.Repeat("a", 214)} {
		if err := ValidName(n); err != nil {
			t.Errorf("ValidName(%q): %v", n, err)
		}
	}
}

func TestParseIntegrity(t *testing.T) {
	sum := sha512Of([]byte("x"))
	s512 := formatIntegrity(sum)
	good := map[string]string{
		s512: s512,
		"sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk= " + s512: s512,
		s512 + "?foo \t sha384-abc":                 s512,
		s512 + " " + s512:                           s512,
	}
	for in, want := range good {
		d, err := ParseIntegrity(in)
		if err != nil || formatIntegrity(d) != want {
			t.Errorf("ParseIntegrity(%q): %x, %v", in, d, err)
		}
	}
	other := formatIntegrity(sha512Of([]byte("y")))
	for _, in := range []string{"", "sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk=", "SHA512-" + s512[7:], s512[:40], s512 + "AA", s512 + " " + other} {
		if _, err := ParseIntegrity(in); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("ParseIntegrity(%q): %v, want invalid", in, err)
		}
	}
}

func FuzzParseIntegrity(f *testing.F) {
	f.Add("sha512-q/t/3p2CTxOT9y2kvjesb/LZab2+1eqlhhWA02Be6mjTtmYtNBcBsrI5yDo4Fw7ZSPBW2oyMIGMNRqiKQjiAWw==")
	f.Add("sha1-x sha512-y?z")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseIntegrity(s)
		if err == nil && len(d) != 64 {
			t.Fatalf("%q: %d bytes", s, len(d))
		}
	})
}

// FuzzExtract: whatever the tarball, extract keeps to its limits and
// writes a member only when it returns it.
func FuzzExtract(f *testing.F) {
	f.Add(tgz(f, reg(member, body)))
	f.Add(tgz(f, entry{name: member, typ: tar.TypeSymlink, linkname: "x"}))
	f.Add(gz(f, tartest.Archive(tartest.SparseEntry(tartest.PAX10, member, 1<<20, []byte("x")))))
	f.Fuzz(func(t *testing.T, data []byte) {
		out := filepath.Join(t.TempDir(), "out")
		got, err := extract(bytes.NewReader(data), "p@1", member, out, 4096, 1<<20)
		st, serr := os.Stat(out)
		if err == nil {
			if serr != nil || st.Size() != got.Size || got.Size > 4096 {
				t.Fatalf("member %+v, file %v %v", got, st, serr)
			}
		} else if serr == nil && st.Size() > 4096 {
			t.Fatalf("failed extract left %d bytes", st.Size())
		}
	})
}

// TestRemoveTemp: what a fetch killed half way left goes; entries stay.
func TestRemoveTemp(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	if err := (&Cache{Dir: filepath.Join(c.Dir, "none")}).RemoveTemp(); err != nil {
		t.Fatalf("no cache dir yet: %v", err)
	}
	half := filepath.Join(c.Dir, tmpPrefix+"123")
	keep := filepath.Join(c.Dir, "pkg", "1.0.0-abcd")
	for _, d := range []string{half, keep} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "bin"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.RemoveTemp(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(half); !os.IsNotExist(err) {
		t.Fatalf("half-built entry left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(keep, "bin")); err != nil {
		t.Fatalf("a real entry went: %v", err)
	}
}
