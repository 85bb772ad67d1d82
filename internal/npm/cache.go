package npm

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/tarsafe"
)

// On-disk layout under Cache.Dir:
//
//	<pkg>/<version>-<first 16 hex of the tarball's sha512>/
//	    meta.json        the File, as JSON
//	    <member's base>  the extracted file, mode 0555
//	.tmp-*/              an entry being built; renamed into place once verified
//
// A scoped package's <pkg> is two directories (@scope/name).
const (
	metaName  = "meta.json"
	tmpPrefix = ".tmp-"
	hexKeyLen = 16

	// DefaultMaxTarball bounds a compressed tarball (opencode's is ~60 MiB).
	DefaultMaxTarball = 256 << 20
	maxMetaFile       = 64 << 10
	progressStep      = 1 << 20
)

// Cache keeps single files extracted from verified npm tarballs under Dir.
// It must not be copied after first use.
type Cache struct {
	Dir      string
	Registry *Registry
	Log      *slog.Logger
	// MaxTarball bounds the compressed tarball (0 = DefaultMaxTarball).
	MaxTarball int64

	mu    sync.Mutex
	locks map[string]*keyLock
}

// File is one cached file.
type File struct {
	Path      string    `json:"path"` // the cached file, mode 0555, in a dir only the owner can write
	Package   string    `json:"package"`
	Version   string    `json:"version"`
	Integrity string    `json:"integrity"` // the tarball's sha512 SSRI, verified
	Member    string    `json:"member"`
	SHA256    string    `json:"sha256"` // of the extracted file (hex)
	Size      int64     `json:"size"`
	Fetched   time.Time `json:"fetched"`
}

func (c *Cache) log() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.New(slog.DiscardHandler)
}

// keyLock serialises the work on one pkg@version; refs counts holders and
// waiters so the map entry goes away with the last of them.
type keyLock struct {
	ch   chan struct{}
	refs int
}

func (c *Cache) lock(ctx context.Context, key string) (func(), error) {
	c.mu.Lock()
	if c.locks == nil {
		c.locks = map[string]*keyLock{}
	}
	l := c.locks[key]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		c.locks[key] = l
	}
	l.refs++
	c.mu.Unlock()
	release := func() {
		c.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(c.locks, key)
		}
		c.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, fmt.Errorf("waiting for another fetch of %s: %w", key, context.Cause(ctx))
	}
}

// validMember checks a tarball member path: relative, clean, no "..".
func validMember(m string) error {
	if m == "" || !fs.ValidPath(m) || m == "." || path.Base(m) == metaName {
		return fmt.Errorf("npm tarball member %q: want a clean relative path like package/bin/NAME: %w", m, api.ErrInvalid)
	}
	return nil
}

// pkgDir is where the entries of pkg live (a scoped name nests).
func (c *Cache) pkgDir(pkg string) string {
	return filepath.Join(c.Dir, filepath.FromSlash(pkg))
}

// entryDirName is <version>-<16 hex>; the suffix has a fixed length, so a
// version with dashes ("1.0.0-beta") never matches another's prefix.
func entryDirName(version string, digest []byte) string {
	return version + "-" + hex.EncodeToString(digest)[:hexKeyLen]
}

// Fetch returns member (e.g. "package/bin/opencode") of pkg@version from
// the cache, downloading it when absent. integrity is the expected
// tarball's SSRI; "" trusts the one the registry publishes. version "" is
// the latest dist-tag (a dist-tag always asks the registry first). limit
// bounds the member's logical size, and 2×limit every entry's together.
// progress (may be nil) gets bytes of the tarball read and its
// Content-Length (or -1).
func (c *Cache) Fetch(ctx context.Context, pkg, version, integrity, member string, limit int64, progress func(done, total int64)) (File, error) {
	if err := ValidName(pkg); err != nil {
		return File{}, err
	}
	if version != "" {
		if err := validVersion(version); err != nil {
			return File{}, err
		}
	}
	if err := validMember(member); err != nil {
		return File{}, err
	}
	if limit <= 0 || limit > 1<<50 {
		return File{}, fmt.Errorf("npm fetch of %s@%s: limit %d: %w", pkg, version, limit, api.ErrInvalid)
	}
	if c.Dir == "" || c.Registry == nil {
		return File{}, fmt.Errorf("npm cache: no directory or registry: %w", api.ErrInvalid)
	}
	var want []byte
	if integrity != "" {
		d, err := ParseIntegrity(integrity)
		if err != nil {
			return File{}, fmt.Errorf("pinned integrity of %s@%s: %w", pkg, version, err)
		}
		want = d
	}
	var dist *Dist
	if !isExact(version) {
		d, err := c.Registry.Resolve(ctx, pkg, version)
		if err != nil {
			return File{}, err
		}
		dist, version = &d, d.Version
	}
	ref := pkg + "@" + version
	unlock, err := c.lock(ctx, ref)
	if err != nil {
		return File{}, err
	}
	defer unlock()

	if f, ok := c.lookup(pkg, version, want, member); ok {
		return f, nil
	}
	if dist == nil {
		d, err := c.Registry.Resolve(ctx, pkg, version)
		if err != nil {
			return File{}, err
		}
		dist = &d
	}
	published, err := ParseIntegrity(dist.Integrity)
	if err != nil {
		return File{}, fmt.Errorf("npm %s: %w", ref, err)
	}
	if want == nil {
		want = published
	} else if !bytes.Equal(want, published) {
		return File{}, fmt.Errorf("npm %s: the registry publishes integrity %s, but %s is pinned (refused): %w",
			ref, dist.Integrity, formatIntegrity(want), api.ErrInvalid)
	}
	return c.download(ctx, *dist, want, member, limit, progress)
}

// lookup returns a verified cache entry. With want nil any entry of
// pkg@version holding member will do (the newest): it was verified
// against the registry's integrity when fetched and npm versions are
// immutable. A corrupt entry is removed.
func (c *Cache) lookup(pkg, version string, want []byte, member string) (File, bool) {
	var dirs []string
	if want != nil {
		dirs = []string{filepath.Join(c.pkgDir(pkg), entryDirName(version, want))}
	} else {
		dirs = c.entries(pkg, version)
	}
	var hits []File
	for _, d := range dirs {
		f, err := c.check(d, pkg, version, want)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			c.log().Warn("npm cache: corrupt entry removed", "dir", d, "err", err)
			if err := os.RemoveAll(d); err != nil {
				c.log().Warn("npm cache: remove corrupt entry", "dir", d, "err", err)
			}
		case f.Member == member:
			hits = append(hits, f)
		}
	}
	if len(hits) == 0 {
		return File{}, false
	}
	sort.Slice(hits, func(i, j int) bool { return hits[i].Fetched.After(hits[j].Fetched) })
	return hits[0], true
}

// entries lists the entry directories of pkg@version (every integrity).
func (c *Cache) entries(pkg, version string) []string {
	ents, err := os.ReadDir(c.pkgDir(pkg))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), version+"-")
		if !ok || len(rest) != hexKeyLen || strings.Trim(rest, "0123456789abcdef") != "" {
			continue
		}
		out = append(out, filepath.Join(c.pkgDir(pkg), e.Name()))
	}
	return out
}

// readMeta reads dir's meta.json; Path is recomputed from dir, not
// trusted.
func readMeta(dir string) (File, error) {
	fh, err := os.Open(filepath.Join(dir, metaName))
	if err != nil {
		return File{}, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxMetaFile+1))
	if err != nil {
		return File{}, err
	}
	if len(data) > maxMetaFile {
		return File{}, fmt.Errorf("%s larger than %d bytes", metaName, maxMetaFile)
	}
	var f File
	if err := json.Unmarshal(data, &f); err != nil {
		return File{}, fmt.Errorf("%s: %v", metaName, err)
	}
	if validMember(f.Member) != nil {
		return File{}, fmt.Errorf("%s: bad member %q", metaName, f.Member)
	}
	f.Path = filepath.Join(dir, path.Base(f.Member))
	return f, nil
}

// check verifies the entry in dir: its meta.json matches the key and the
// file its recorded size and sha256. fs.ErrNotExist: no entry at all.
func (c *Cache) check(dir, pkg, version string, want []byte) (File, error) {
	if _, err := os.Lstat(dir); err != nil {
		return File{}, err
	}
	f, err := readMeta(dir)
	if err != nil {
		return File{}, fmt.Errorf("entry without a valid %s: %v", metaName, err)
	}
	d, err := ParseIntegrity(f.Integrity)
	switch {
	case err != nil:
		return File{}, err
	case f.Package != pkg || f.Version != version:
		return File{}, fmt.Errorf("%s describes %s@%s", metaName, f.Package, f.Version)
	case filepath.Base(dir) != entryDirName(version, d):
		return File{}, fmt.Errorf("%s integrity %s does not match the directory", metaName, f.Integrity)
	case want != nil && !bytes.Equal(d, want):
		return File{}, fmt.Errorf("%s integrity %s is not the pinned one", metaName, f.Integrity)
	}
	st, err := os.Lstat(f.Path)
	if err != nil {
		return File{}, fmt.Errorf("cached file: %v", err)
	}
	if !st.Mode().IsRegular() || st.Size() != f.Size {
		return File{}, fmt.Errorf("cached file %s: %v, %d bytes; %s says a regular file of %d", f.Path, st.Mode(), st.Size(), metaName, f.Size)
	}
	fh, err := os.Open(f.Path)
	if err != nil {
		return File{}, fmt.Errorf("cached file: %v", err)
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(fh, f.Size+1)); err != nil {
		return File{}, fmt.Errorf("cached file: %v", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return File{}, fmt.Errorf("cached file %s: sha256 %s, %s says %s", f.Path, got, metaName, f.SHA256)
	}
	return f, nil
}

// limitReader fails with a clear error once more than max bytes came
// through (a silent truncation would read as a corrupt archive).
type limitReader struct {
	r   io.Reader
	n   int64
	max int64
	err func() error
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n > l.max {
		return 0, l.err()
	}
	if rem := l.max + 1 - l.n; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.n > l.max {
		return n, l.err()
	}
	return n, err
}

// sourceReader counts the tarball's bytes, reports progress and remembers
// a transport error, so a failed extraction can tell a broken download
// (reported as is) from bad content (checked against the digest first).
type sourceReader struct {
	r        io.Reader
	n, total int64
	last     int64
	fn       func(done, total int64)
	err      error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if err != nil && err != io.EOF {
		s.err = err
	}
	if s.fn != nil && (s.n-s.last >= progressStep || err == io.EOF) {
		s.last = s.n
		s.fn(s.n, s.total)
	}
	return n, err
}

// download streams the tarball of dist through sha512, extracts member
// into a temporary entry and renames it into place once the digest
// matched want.
func (c *Cache) download(ctx context.Context, dist Dist, want []byte, member string, limit int64, progress func(done, total int64)) (File, error) {
	ref := dist.Name + "@" + dist.Version
	maxTar := c.MaxTarball
	if maxTar <= 0 {
		maxTar = DefaultMaxTarball
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return File{}, fmt.Errorf("npm cache: %w", err)
	}
	tmp, err := os.MkdirTemp(c.Dir, tmpPrefix)
	if err != nil {
		return File{}, fmt.Errorf("npm cache: %w", err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()

	resp, body, cancel, err := c.Registry.get(ctx, "npm tarball of "+ref, dist.Tarball)
	if err != nil {
		return File{}, err
	}
	defer cancel()
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return File{}, fmt.Errorf("npm tarball of %s: %s not found: %w", ref, dist.Tarball, api.ErrNotFound)
	default:
		return File{}, fmt.Errorf("npm tarball of %s from %s: %s", ref, dist.Tarball, resp.Status)
	}
	if resp.ContentLength > maxTar {
		return File{}, fmt.Errorf("npm tarball of %s is %d bytes, over the limit of %d bytes: %w", ref, resp.ContentLength, maxTar, api.ErrInvalid)
	}
	src := &sourceReader{r: body, total: resp.ContentLength, fn: progress}
	if src.total < 0 {
		src.total = -1
	}
	if progress != nil {
		progress(0, src.total)
	}
	h := sha512.New()
	raw := io.TeeReader(&limitReader{r: src, max: maxTar, err: func() error {
		return fmt.Errorf("tarball larger than the limit of %d bytes: %w", maxTar, api.ErrInvalid)
	}}, h)

	out := filepath.Join(tmp, path.Base(member))
	// Headers may unpack to as much as the whole compressed allowance.
	f, xerr := extract(raw, ref, member, out, limit, maxTar)
	if xerr != nil && src.err != nil {
		return File{}, fmt.Errorf("npm tarball of %s: %w", ref, src.err) // the transport failed
	}
	// The digest covers every byte, trailing ones included: read to EOF.
	if _, err := io.Copy(io.Discard, raw); err != nil {
		if xerr != nil {
			return File{}, xerr
		}
		return File{}, fmt.Errorf("npm tarball of %s: %w", ref, err)
	}
	if got := h.Sum(nil); !bytes.Equal(got, want) {
		err := fmt.Errorf("npm tarball of %s from %s: integrity mismatch: got %s, want %s (nothing kept): %w",
			ref, dist.Tarball, formatIntegrity(got), formatIntegrity(want), api.ErrInvalid)
		if xerr != nil {
			err = fmt.Errorf("%w (and unpacking failed: %v)", err, xerr)
		}
		return File{}, err
	}
	if xerr != nil {
		return File{}, xerr
	}

	f.Package, f.Version, f.Integrity, f.Member = dist.Name, dist.Version, formatIntegrity(want), member
	f.Fetched = time.Now().UTC().Truncate(time.Second)
	parent := c.pkgDir(dist.Name)
	final := filepath.Join(parent, entryDirName(dist.Version, want))
	f.Path = filepath.Join(final, path.Base(member)) // where it will be
	meta, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return File{}, err
	}
	if err := writeFileSync(filepath.Join(tmp, metaName), append(meta, '\n'), 0o444); err != nil {
		return File{}, fmt.Errorf("npm cache: %w", err)
	}
	if err := os.Chmod(out, 0o555); err != nil {
		return File{}, fmt.Errorf("npm cache: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return File{}, fmt.Errorf("npm cache: %w", err)
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return File{}, fmt.Errorf("npm cache: %w", err)
	}
	// We hold the key's lock and found no valid entry for member: whatever
	// is there is stale (corrupt, or another member of the same tarball).
	if err := os.RemoveAll(final); err != nil {
		return File{}, fmt.Errorf("npm cache: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return File{}, fmt.Errorf("npm cache: %w", err)
	}
	done = true
	syncDir(parent)
	c.log().Info("npm: fetched", "package", ref, "member", member, "size", f.Size, "integrity", f.Integrity)
	return f, nil
}

// extract reads the gzipped tar r and writes member to out. Every entry's
// logical size (sparse ones at their expanded size) is charged against
// 2×limit, the member's against limit; the member must be one regular,
// non-sparse entry. Headers and padding may add at most overhead bytes to
// the unpacked stream: a gzip of empty entries or of chained long-name
// headers would otherwise unpack into gigabytes the entries never charge.
// It returns the File's size and sha256.
func extract(r io.Reader, ref, member, out string, limit, overhead int64) (File, error) {
	bad := func(format string, a ...any) (File, error) {
		return File{}, fmt.Errorf("npm tarball of %s: %s: %w", ref, fmt.Sprintf(format, a...), api.ErrInvalid)
	}
	zr, err := gzip.NewReader(r)
	if err != nil {
		return bad("not gzip: %v", err)
	}
	zr.Multistream(false)
	maxTotal := 2 * limit
	tr := tar.NewReader(&limitReader{r: zr, max: maxTotal + overhead, err: func() error {
		return fmt.Errorf("tarball unpacks to more than the limit of %d bytes (2×%d + %d for headers): %w", maxTotal+overhead, limit, overhead, api.ErrInvalid)
	}})
	var (
		f     File
		found bool
		total int64
	)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return File{}, fmt.Errorf("npm tarball of %s: %w", ref, err)
		}
		// A sparse entry's Size is already its logical size.
		if total += hdr.Size; hdr.Size < 0 || total > maxTotal {
			return bad("entries add up to more than the limit of %d bytes (2×%d)", maxTotal, limit)
		}
		if path.Clean("/"+hdr.Name) != "/"+member {
			continue
		}
		// This entry is the member, however spelled. Only the plain
		// spelling of a regular file is accepted.
		switch {
		case found:
			return bad("%s appears twice (refused)", member)
		case tarsafe.IsSparse(hdr):
			return bad("%s is a sparse entry (refused)", member)
		case hdr.Typeflag != tar.TypeReg:
			return bad("%s is not a regular file (type %q; refused)", member, hdr.Typeflag)
		case strings.TrimPrefix(hdr.Name, "./") != member:
			return bad("entry %q stands for %s (refused)", hdr.Name, member)
		case hdr.Size > limit:
			return bad("%s is %d bytes, over the limit of %d bytes", member, hdr.Size, limit)
		}
		found = true
		if f, err = writeMember(tr, out, hdr.Size); err != nil {
			return File{}, fmt.Errorf("npm tarball of %s: %s: %w", ref, member, err)
		}
	}
	if !found {
		return File{}, fmt.Errorf("npm tarball of %s has no %s: %w", ref, member, api.ErrNotFound)
	}
	return f, nil
}

func writeMember(r io.Reader, out string, size int64) (File, error) {
	fh, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return File{}, err
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(fh, h), io.LimitReader(r, size))
	if err != nil {
		return File{}, err
	}
	if n != size {
		return File{}, fmt.Errorf("short entry: %d of %d bytes", n, size)
	}
	if err := fh.Sync(); err != nil {
		return File{}, err
	}
	if err := fh.Close(); err != nil {
		return File{}, err
	}
	return File{SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}

func writeFileSync(name string, data []byte, mode os.FileMode) error {
	fh, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := fh.Write(data); err != nil {
		fh.Close()
		return err
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

// syncDir makes a rename durable; best effort.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// List returns every cached file, by package and version. Malformed
// entries are skipped with a log line.
func (c *Cache) List() ([]File, error) {
	var out []File
	err := filepath.WalkDir(c.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == c.Dir && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), tmpPrefix) {
			return fs.SkipDir
		}
		if d.IsDir() || d.Name() != metaName {
			return nil
		}
		dir := filepath.Dir(p)
		f, err := readMeta(dir)
		if err == nil {
			var rel string
			if rel, err = filepath.Rel(c.Dir, dir); err == nil && filepath.ToSlash(filepath.Dir(rel)) != f.Package {
				err = fmt.Errorf("%s names package %q", metaName, f.Package)
			}
		}
		if err != nil {
			c.log().Warn("npm cache: malformed entry skipped", "dir", dir, "err", err)
		} else {
			out = append(out, f)
		}
		return fs.SkipDir // an entry holds no further entries
	})
	if err != nil {
		return nil, fmt.Errorf("npm cache: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Package != out[j].Package {
			return out[i].Package < out[j].Package
		}
		return out[i].Version < out[j].Version
	})
	return out, nil
}

// Remove deletes the cache entries of pkg@version (every integrity). It
// is idempotent.
func (c *Cache) Remove(pkg, version string) error {
	if err := ValidName(pkg); err != nil {
		return err
	}
	if err := validVersion(version); err != nil {
		return err
	}
	unlock, err := c.lock(context.Background(), pkg+"@"+version)
	if err != nil {
		return err
	}
	defer unlock()
	for _, d := range c.entries(pkg, version) {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("npm cache: remove %s@%s: %w", pkg, version, err)
		}
	}
	// Drop the package's directory (and a scope's) once empty.
	for d := c.pkgDir(pkg); d != filepath.Clean(c.Dir); d = filepath.Dir(d) {
		if os.Remove(d) != nil {
			break
		}
	}
	return nil
}

// RemoveTemp removes entries a process that died mid-fetch left half built
// (up to the member's limit each). bangerd calls it at start, before any
// Fetch can be building one.
func (c *Cache) RemoveTemp() error {
	ents, err := os.ReadDir(c.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), tmpPrefix) {
			c.log().Info("npm cache: removing an interrupted fetch", "dir", e.Name())
			errs = append(errs, os.RemoveAll(filepath.Join(c.Dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}
