package kernel

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/download"
	"github.com/banger-dev/banger/internal/tarsafe"
)

// A kernel catalog is a JSON document:
//
//	{"kernels": [{
//	    "name": "generic-6.1",            // what `banger kernel pull NAME` asks for
//	    "version": "6.1.0-56-cloud-amd64", // optional: else from the bzImage header
//	    "arch": "x86_64",                 // x86_64 or amd64
//	    "format": "vmlinuz",              // "vmlinuz" (default) or "deb" (a Debian kernel package)
//	    "url": "vmlinuz-6.1",             // absolute, or relative to the catalog's URL
//	    "sha256": "<64 hex>",
//	    "initrd":  {"url": "...", "sha256": "..."}, // optional: used as is
//	    "modules": {"url": "...", "sha256": "..."}  // optional: tar(.gz|.zst) holding lib/modules/<version>/;
//	}]}                                             // banger generates its initramfs from it
//
// Every download is checked against its sha256 and cached under
// Layout.Cache() by that digest, so a second pull downloads nothing.
type Catalog struct {
	Kernels []CatalogEntry `json:"kernels"`
}

// CatalogEntry is one kernel of a catalog.
type CatalogEntry struct {
	Name    string    `json:"name"`
	Version string    `json:"version,omitempty"`
	Arch    string    `json:"arch"`
	Format  string    `json:"format,omitempty"`
	URL     string    `json:"url"`
	SHA256  string    `json:"sha256"`
	Initrd  *Artifact `json:"initrd,omitempty"`
	Modules *Artifact `json:"modules,omitempty"`
}

// Artifact is a downloadable file and its digest.
type Artifact struct {
	URL    string `json:"url"`
	SHA256 string `json:"sha256"`
}

// Catalog formats.
const (
	FormatVmlinuz = "vmlinuz"
	FormatDeb     = "deb"
)

// Limits on what a catalog may make banger download.
const (
	maxCatalogBytes  = 4 << 20
	maxDownloadBytes = 2 << 30
	maxModulesBytes  = 4 << 30 // unpacked modules tarball, at logical size
	// maxModulesEntries bounds tar entries of a modules tarball (Debian's
	// has ~7000).
	maxModulesEntries = 200_000
)

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ParseCatalog decodes and validates a catalog; base resolves relative URLs.
func ParseCatalog(data []byte, base *url.URL) (Catalog, error) {
	var c Catalog
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Catalog{}, fmt.Errorf("kernel catalog: %v: %w", err, api.ErrInvalid)
	}
	seen := map[string]bool{}
	for i := range c.Kernels {
		e := &c.Kernels[i]
		bad := func(why string) (Catalog, error) {
			return Catalog{}, fmt.Errorf("kernel catalog entry %d (%q): %s: %w", i, e.Name, why, api.ErrInvalid)
		}
		if ValidName(e.Name) != nil {
			return bad("bad name")
		}
		if seen[e.Name] {
			return bad("duplicate name")
		}
		seen[e.Name] = true
		switch e.Arch {
		case "x86_64", "amd64", "":
		default:
			return bad("arch " + e.Arch + " is not x86_64")
		}
		switch e.Format {
		case "":
			e.Format = FormatVmlinuz
		case FormatVmlinuz, FormatDeb:
		default:
			return bad("unknown format " + e.Format)
		}
		if e.Version != "" && !versionRE.MatchString(e.Version) {
			return bad("bad version")
		}
		if e.Format == FormatDeb && (e.Initrd != nil || e.Modules != nil) {
			return bad("a deb entry carries its own modules")
		}
		if e.Initrd != nil && e.Modules != nil {
			return bad("initrd and modules are exclusive")
		}
		arts := []*Artifact{{URL: e.URL, SHA256: e.SHA256}, e.Initrd, e.Modules}
		for j, a := range arts {
			if a == nil {
				continue
			}
			if !sha256RE.MatchString(a.SHA256) {
				return bad("sha256 must be 64 lower-case hex digits")
			}
			u, err := resolveURL(base, a.URL)
			if err != nil {
				return bad(err.Error())
			}
			a.URL = u
			if j == 0 {
				e.URL = u
			}
		}
	}
	return c, nil
}

func resolveURL(base *url.URL, s string) (string, error) {
	if s == "" {
		return "", errors.New("empty url")
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("url %q: %v", s, err)
	}
	if base != nil {
		u = base.ResolveReference(u)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("url %q: want http or https", s)
	}
	return u.String(), nil
}

// Find returns the entry called name.
func (c Catalog) Find(name string) (CatalogEntry, error) {
	for _, e := range c.Kernels {
		if e.Name == name {
			return e, nil
		}
	}
	return CatalogEntry{}, fmt.Errorf("kernel %q is not in the catalog: %w", name, api.ErrNotFound)
}

// PullProgress reports a download: what, and bytes so far of how many (-1: unknown).
type PullProgress struct {
	Stage, Message string
	Current, Total int64
}

// Puller fetches kernels from a catalog and imports them.
type Puller struct {
	Importer *Importer
	// Insecure allows http:// for the catalog and its downloads (and
	// redirects to http); otherwise only https is fetched.
	Insecure bool
	// Timeouts (zero = the download package's defaults). A transfer may
	// take as long as it needs while bytes keep arriving; IdleTimeout
	// bounds a stall.
	ConnectTimeout, TLSTimeout, HeaderTimeout, IdleTimeout time.Duration
	// Client does the requests; nil = one built from the timeouts. Either
	// way a redirect is checked like the first URL.
	Client *http.Client
}

// get issues a GET through a download.Getter made from p's current fields
// (the whole transfer is not bounded: kernels are large and links slow).
// The returned cancel must be called when done.
func (p *Puller) get(ctx context.Context, what, rawURL string, hdr http.Header) (*http.Response, io.Reader, context.CancelFunc, error) {
	g := &download.Getter{
		Insecure:       p.Insecure,
		ConnectTimeout: p.ConnectTimeout,
		TLSTimeout:     p.TLSTimeout,
		HeaderTimeout:  p.HeaderTimeout,
		IdleTimeout:    p.IdleTimeout,
		Client:         p.Client,
	}
	return g.Get(ctx, what, rawURL, hdr)
}

// FetchCatalog downloads and parses the catalog at catalogURL.
func (p *Puller) FetchCatalog(ctx context.Context, catalogURL string) (Catalog, error) {
	base, err := url.Parse(catalogURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") {
		return Catalog{}, fmt.Errorf("catalog url %q: want https: %w", catalogURL, api.ErrInvalid)
	}
	resp, body, cancel, err := p.get(ctx, "catalog", catalogURL, nil)
	if err != nil {
		return Catalog{}, fmt.Errorf("fetch %w", err)
	}
	defer cancel()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Catalog{}, fmt.Errorf("fetch catalog %s: %s", catalogURL, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(body, maxCatalogBytes+1))
	if err != nil {
		return Catalog{}, fmt.Errorf("fetch catalog: %w", err)
	}
	if len(data) > maxCatalogBytes {
		return Catalog{}, fmt.Errorf("catalog larger than %d bytes: %w", maxCatalogBytes, api.ErrInvalid)
	}
	return ParseCatalog(data, base)
}

// Pull imports catalog entry entryName as kernel name (entryName when empty).
func (p *Puller) Pull(ctx context.Context, catalogURL, entryName, name string, progress func(PullProgress)) (Info, error) {
	if progress == nil {
		progress = func(PullProgress) {}
	}
	if name == "" {
		name = entryName
	}
	if err := ValidName(name); err != nil {
		return Info{}, err
	}
	if _, err := os.Lstat(p.Importer.Layout.Kernel(name)); err == nil {
		return Info{}, fmt.Errorf("kernel %q: %w", name, api.ErrExists)
	}
	progress(PullProgress{Stage: "catalog", Message: catalogURL})
	cat, err := p.FetchCatalog(ctx, catalogURL)
	if err != nil {
		return Info{}, err
	}
	e, err := cat.Find(entryName)
	if err != nil {
		return Info{}, err
	}
	source := "catalog:" + catalogURL + "#" + e.Name
	kpath, err := p.Download(ctx, Artifact{URL: e.URL, SHA256: e.SHA256}, "kernel", progress)
	if err != nil {
		return Info{}, err
	}
	stage := func(s string) { progress(PullProgress{Stage: s}) }
	if e.Format == FormatDeb {
		if _, err := p.Importer.ImportDeb(ctx, name, kpath, stage); err != nil {
			return Info{}, err
		}
		return SetSource(p.Importer.Layout, name, source)
	}
	spec := FilesSpec{Kernel: kpath, Version: e.Version, Source: source}
	if e.Initrd != nil {
		if spec.Initrd, err = p.Download(ctx, *e.Initrd, "initrd", progress); err != nil {
			return Info{}, err
		}
	}
	if e.Modules != nil {
		tarPath, err := p.Download(ctx, *e.Modules, "modules", progress)
		if err != nil {
			return Info{}, err
		}
		if err := os.MkdirAll(p.Importer.Layout.Tmp(), 0o700); err != nil {
			return Info{}, err
		}
		tmp, err := os.MkdirTemp(p.Importer.Layout.Tmp(), "modules-")
		if err != nil {
			return Info{}, err
		}
		defer os.RemoveAll(tmp)
		if spec.Modules, err = unpackModules(tarPath, tmp, e.Version); err != nil {
			return Info{}, fmt.Errorf("modules of %q: %w", e.Name, err)
		}
	}
	return p.Importer.ImportFiles(ctx, name, spec, stage)
}

// Download fetches a into the cache (Layout.Cache()/sha256-<hex>), resuming
// a partial download with a Range request when the server allows it, and
// returns the cached file once its digest matched. A cached file is reused.
func (p *Puller) Download(ctx context.Context, a Artifact, what string, progress func(PullProgress)) (string, error) {
	if !sha256RE.MatchString(a.SHA256) {
		return "", fmt.Errorf("%s: bad sha256 %q: %w", what, a.SHA256, api.ErrInvalid)
	}
	cache := p.Importer.Layout.Cache()
	if err := os.MkdirAll(cache, 0o700); err != nil {
		return "", err
	}
	final := filepath.Join(cache, "sha256-"+a.SHA256)
	if _, err := os.Stat(final); err == nil {
		progress(PullProgress{Stage: what, Message: "cached " + a.SHA256[:12]})
		return final, nil
	}
	part := final + ".part"
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	have, err := io.Copy(h, f) // hash what an earlier attempt left
	if err != nil {
		return "", err
	}
	hdr := http.Header{}
	if have > 0 {
		hdr.Set("Range", fmt.Sprintf("bytes=%d-", have))
	}
	resp, body, cancel, err := p.get(ctx, what, a.URL, hdr)
	if err != nil {
		return "", fmt.Errorf("download %w", err)
	}
	defer cancel()
	defer resp.Body.Close()
	switch {
	case have > 0 && resp.StatusCode == http.StatusPartialContent:
	case resp.StatusCode == http.StatusOK:
		// Full body: start over.
		if err := f.Truncate(0); err != nil {
			return "", err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return "", err
		}
		h.Reset()
		have = 0
	default:
		return "", fmt.Errorf("download %s %s: %s", what, a.URL, resp.Status)
	}
	total := int64(-1)
	if resp.ContentLength >= 0 {
		total = have + resp.ContentLength
	}
	pr := &byteProgress{r: body, n: have, total: total, fn: func(n, t int64) {
		progress(PullProgress{Stage: what, Message: path.Base(a.URL), Current: n, Total: t})
	}}
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(pr, maxDownloadBytes-have+1))
	if err != nil {
		return "", fmt.Errorf("download %s: %w (a retry resumes)", what, err)
	}
	if have+n > maxDownloadBytes {
		os.Remove(part)
		return "", fmt.Errorf("download %s: larger than %d bytes: %w", what, int64(maxDownloadBytes), api.ErrInvalid)
	}
	pr.report(true)
	got := hex.EncodeToString(h.Sum(nil))
	if got != a.SHA256 {
		os.Remove(part)
		return "", fmt.Errorf("download %s %s: sha256 mismatch: got %s, catalog says %s: %w", what, a.URL, got, a.SHA256, api.ErrInvalid)
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := os.Rename(part, final); err != nil {
		return "", err
	}
	return final, nil
}

type byteProgress struct {
	r        io.Reader
	n, total int64
	last     int64
	fn       func(n, total int64)
}

func (b *byteProgress) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += int64(n)
	b.report(false)
	return n, err
}

func (b *byteProgress) report(force bool) {
	if force || b.n-b.last >= 4<<20 {
		b.last = b.n
		b.fn(b.n, b.total)
	}
}

// unpackModules extracts the lib/modules part of a modules tarball (regular
// files and directories only; nothing outside dir) and returns the module
// directory for version (the only one present when version is empty).
func unpackModules(tarPath, dir, version string) (string, error) {
	f, err := os.Open(tarPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var r io.Reader = br
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return "", err
		}
		defer zr.Close()
		r = zr
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return "", err
		}
		defer zr.Close()
		r = zr
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	var total int64
	entries := 0
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("modules tarball: %w", err)
		}
		if entries++; entries > maxModulesEntries {
			return "", fmt.Errorf("modules tarball has more than %d entries (limit): %w", maxModulesEntries, api.ErrInvalid)
		}
		// Sparse entries expand to far more than the archive holds; no
		// modules tarball needs one.
		if tarsafe.IsSparse(hdr) {
			return "", fmt.Errorf("modules tarball: entry %q is sparse (refused): %w", hdr.Name, api.ErrInvalid)
		}
		name := path.Clean(strings.TrimLeft(hdr.Name, "/"))
		name = strings.TrimPrefix(name, "usr/")
		if !strings.HasPrefix(name, "lib/modules/") || !fs.ValidPath(name) {
			continue
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return "", err
			}
		case tar.TypeReg:
			total += hdr.Size
			if total > maxModulesBytes {
				return "", fmt.Errorf("modules tarball unpacks to more than %d bytes: %w", int64(maxModulesBytes), api.ErrInvalid)
			}
			if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
				return "", err
			}
			out, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
			if err != nil {
				return "", err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return "", err
			}
		}
	}
	if version != "" {
		d := filepath.Join(dir, "lib/modules", version)
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			return "", fmt.Errorf("modules tarball has no lib/modules/%s: %w", version, api.ErrInvalid)
		}
		return d, nil
	}
	ents, err := os.ReadDir(filepath.Join(dir, "lib/modules"))
	if err != nil || len(ents) != 1 || !ents[0].IsDir() {
		return "", fmt.Errorf("modules tarball: want exactly one lib/modules/<version> (or give version): %w", api.ErrInvalid)
	}
	return filepath.Join(dir, "lib/modules", ents[0].Name()), nil
}
