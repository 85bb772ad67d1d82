package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"

	"github.com/banger-dev/banger/internal/api"
)

// Limits bound what a pulled image may unpack to. Zero fields take the
// defaults.
type Limits struct {
	MaxLayerBytes int64 // uncompressed bytes of one layer
	MaxTotalBytes int64 // uncompressed bytes of all layers together
	MaxEntries    int   // tar entries of all layers together
	// MaxXattrBytes bounds the xattr names and values of all entries
	// together, which the Owners table holds in memory until the stamp.
	MaxXattrBytes int64
}

// DefaultLimits are generous for real root file systems and small enough
// that a decompression bomb fails long before the disk fills up.
var DefaultLimits = Limits{MaxLayerBytes: 8 << 30, MaxTotalBytes: 16 << 30, MaxEntries: 1_000_000, MaxXattrBytes: 64 << 20}

func (l Limits) withDefaults() Limits {
	if l.MaxLayerBytes <= 0 {
		l.MaxLayerBytes = DefaultLimits.MaxLayerBytes
	}
	if l.MaxTotalBytes <= 0 {
		l.MaxTotalBytes = DefaultLimits.MaxTotalBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultLimits.MaxEntries
	}
	if l.MaxXattrBytes <= 0 {
		l.MaxXattrBytes = DefaultLimits.MaxXattrBytes
	}
	return l
}

// FlattenProgress is reported while layers are read: compressed bytes read so
// far of all layers, their total, and the layer being read (1-based).
type FlattenProgress struct {
	Layer, Layers  int
	Current, Total int64
}

// FlattenStats summarises a flatten.
// MaxSkippedListed bounds how many skipped special files are named.
const MaxSkippedListed = 100

type FlattenStats struct {
	Layers, Entries int
	Bytes           int64    // uncompressed tar bytes read
	Skipped         []string // the first MaxSkippedListed device nodes and FIFOs left out (see Flatten)
	SkippedCount    int      // all of them
	// Owners holds each entry's owner, group, full mode and xattrs, which
	// the staging tree does not carry (see Owners); stamp them into the ext4.
	Owners *Owners
}

// Whiteout markers of the OCI layer format.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// maxSymlinkHops bounds symlink resolution of parent directories.
const maxSymlinkHops = 40

// Flatten applies layers, lowest first, onto dir, which must exist and be
// empty. It needs no privilege: nothing is chowned, no setuid/setgid/sticky
// bit or xattr is applied on the host; each entry's owner, group, full mode
// and xattrs go into FlattenStats.Owners, which the build stamps into the
// ext4 image with debugfs after mkfs.ext4 -d.
//
// Safety: every path is resolved by this code, component by component,
// inside the root; nothing is ever opened through a path that leaves it
// (an os.Root guards every operation as a second line). Entry names are taken
// relative to the root; a name or a hard-link target that climbs above the
// root, or a parent symlink whose relative target does, fails the flatten
// naming the entry. Absolute symlink targets met while resolving a parent are
// resolved inside the root, as the guest would see them.
//
// Policy for special files: device nodes and FIFOs are skipped (listed in
// FlattenStats.Skipped and logged). A banger guest gets /dev from devtmpfs,
// so an image needs none, and creating device nodes from untrusted input is
// how a sandbox escape starts.
func Flatten(ctx context.Context, dir string, layers []v1.Layer, limits Limits, log *slog.Logger, progress func(FlattenProgress)) (FlattenStats, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return FlattenStats{}, fmt.Errorf("flatten: %w", err)
	}
	defer root.Close()
	f := &flattener{root: root, limits: limits.withDefaults(), log: log, owners: NewOwners(os.Geteuid(), os.Getegid())}
	f.stats.Owners = f.owners
	var total int64
	for i, l := range layers {
		sz, err := l.Size()
		if err != nil {
			return f.stats, fmt.Errorf("layer %d: size: %w", i+1, err)
		}
		total += sz
	}
	prog := &progressCounter{fn: progress, total: total, layers: len(layers)}
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return f.stats, err
		}
		prog.layer = i + 1
		if err := f.layer(ctx, l, prog); err != nil {
			d, _ := l.Digest()
			return f.stats, fmt.Errorf("layer %d/%d (%s): %w", i+1, len(layers), d, err)
		}
		f.stats.Layers++
	}
	prog.report(true)
	return f.stats, nil
}

type flattener struct {
	root    *os.Root
	limits  Limits
	log     *slog.Logger
	stats   FlattenStats
	created map[string]bool // paths made by the current layer (for opaque dirs)
	// dirs caches resolveDir results; any removal or new symlink can change
	// a resolution, so those drop the whole cache.
	dirs map[string]string
	// owners records what the staging tree cannot carry (see Owners).
	owners     *Owners
	xattrBytes int64 // charged against Limits.MaxXattrBytes

	// File contents at their logical size (hdr.Size after archive/tar's
	// sparse expansion), for the layer and for the image: a sparse entry of
	// a few bytes in the archive may expand to any size.
	logicalLayer, logicalTotal int64
}

// progressCounter counts compressed bytes and reports at most every 200 ms.
type progressCounter struct {
	fn            func(FlattenProgress)
	r             io.Reader
	done, total   int64
	layer, layers int
	last          time.Time
}

func (p *progressCounter) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	p.report(false)
	return n, err
}

func (p *progressCounter) report(force bool) {
	if p.fn == nil || (!force && time.Since(p.last) < 200*time.Millisecond) {
		return
	}
	p.last = time.Now()
	p.fn(FlattenProgress{Layer: p.layer, Layers: p.layers, Current: p.done, Total: p.total})
}

// limitReader fails once more than the layer's or the image's budget of
// uncompressed bytes has been read.
type limitReader struct {
	r     io.Reader
	f     *flattener
	layer int64
}

func (l *limitReader) Read(b []byte) (int, error) {
	n, err := l.r.Read(b)
	l.layer += int64(n)
	l.f.stats.Bytes += int64(n)
	if lerr := l.f.checkLimits(l.layer, l.f.stats.Bytes); lerr != nil {
		return n, lerr
	}
	return n, err
}

// checkLimits fails when layer or total bytes exceed their limits.
func (f *flattener) checkLimits(layer, total int64) error {
	if layer > f.limits.MaxLayerBytes {
		return fmt.Errorf("layer unpacks to more than %d bytes (limit): %w", f.limits.MaxLayerBytes, api.ErrInvalid)
	}
	if total > f.limits.MaxTotalBytes {
		return fmt.Errorf("image unpacks to more than %d bytes (limit): %w", f.limits.MaxTotalBytes, api.ErrInvalid)
	}
	return nil
}

// charge books a file's logical size before anything is written, so an
// over-limit entry leaves no partial file.
func (f *flattener) charge(hdr *tar.Header) error {
	if hdr.Size < 0 {
		return fmt.Errorf("negative size %d: %w", hdr.Size, api.ErrInvalid)
	}
	f.logicalLayer += hdr.Size
	f.logicalTotal += hdr.Size
	return f.checkLimits(f.logicalLayer, f.logicalTotal)
}

func (f *flattener) layer(ctx context.Context, l v1.Layer, prog *progressCounter) error {
	if sz, err := l.Size(); err == nil && sz > f.limits.MaxLayerBytes {
		return fmt.Errorf("compressed size %d exceeds the layer limit %d: %w", sz, f.limits.MaxLayerBytes, api.ErrInvalid)
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	defer rc.Close()
	prog.r = rc
	br := bufio.NewReaderSize(prog, 64<<10)
	plain, closeDec, err := decompress(br)
	if err != nil {
		return err
	}
	defer closeDec()
	f.created = map[string]bool{}
	f.logicalLayer = 0
	tr := tar.NewReader(&limitReader{r: plain, f: f})
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		f.stats.Entries++
		if f.stats.Entries > f.limits.MaxEntries {
			return fmt.Errorf("more than %d entries (limit): %w", f.limits.MaxEntries, api.ErrInvalid)
		}
		if err := f.entry(hdr, tr); err != nil {
			return err
		}
	}
	// Read the compressed stream to its end: the registry client checks the
	// blob's digest only there, and a tar may end before its compressed data.
	if _, err := io.Copy(io.Discard, br); err != nil {
		return fmt.Errorf("read layer: %w", err)
	}
	return nil
}

// decompress sniffs gzip and zstd; anything else is read as a plain tar.
func decompress(br *bufio.Reader) (io.Reader, func(), error) {
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}

func (f *flattener) entry(hdr *tar.Header, r io.Reader) error {
	name, err := cleanEntryName(hdr.Name)
	if err != nil {
		return err
	}
	fail := func(err error) error { return fmt.Errorf("entry %q: %w", hdr.Name, err) }
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	if name == "." {
		return nil // the root's own entry: the staging root keeps 0755 root:root
	}
	base := path.Base(name)
	parent, err := f.resolveDir(path.Dir(name), true)
	if err != nil {
		return fail(err)
	}
	if base == whiteoutOpaque {
		return f.opaque(parent)
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		victim := base[len(whiteoutPrefix):]
		if victim == "" || victim == "." || victim == ".." {
			return fail(fmt.Errorf("bad whiteout: %w", api.ErrInvalid))
		}
		f.dirs = nil
		if err := f.root.RemoveAll(path.Join(parent, victim)); err != nil {
			return fail(err)
		}
		f.owners.forget(path.Join(parent, victim))
		return nil
	}
	target := path.Join(parent, base)
	if hdr.Uid < 0 || hdr.Gid < 0 || int64(hdr.Uid) > 1<<32-2 || int64(hdr.Gid) > 1<<32-2 {
		return fail(fmt.Errorf("owner %d:%d out of range: %w", hdr.Uid, hdr.Gid, api.ErrInvalid))
	}
	mode := hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)

	switch hdr.Typeflag {
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		// Counted, but listed and logged only up to a bound: a layer of a
		// million FIFOs must not become a million log lines or a huge reply.
		f.stats.SkippedCount++
		if len(f.stats.Skipped) < MaxSkippedListed {
			f.stats.Skipped = append(f.stats.Skipped, "/"+target)
			f.log.Warn("image: special file skipped", "entry", hdr.Name, "type", string(hdr.Typeflag))
		}
		return nil
	// archive/tar already turns the legacy TypeRegA into TypeReg or TypeDir.
	case tar.TypeDir, tar.TypeReg, tar.TypeGNUSparse, tar.TypeSymlink, tar.TypeLink:
	default:
		f.log.Warn("image: entry of unknown type skipped", "entry", hdr.Name, "type", string(hdr.Typeflag))
		return nil
	}

	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		if err := f.charge(hdr); err != nil {
			return fail(err)
		}
	}
	if err := f.clear(target, hdr.Typeflag == tar.TypeDir); err != nil {
		return fail(err)
	}
	f.created[target] = true
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := f.root.Mkdir(target, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fail(err)
		}
		if err := f.meta(target, hdr, mode); err != nil {
			return fail(err)
		}
	case tar.TypeSymlink:
		if err := checkLinkTarget(hdr.Name, hdr.Linkname); err != nil {
			return err
		}
		f.dirs = nil
		if err := f.root.Symlink(hdr.Linkname, target); err != nil {
			return fail(err)
		}
		f.owners.recordSymlink(target, hdr.Uid, hdr.Gid)
	case tar.TypeLink:
		old, err := cleanEntryName(hdr.Linkname)
		if err != nil {
			return fail(fmt.Errorf("hard link target: %w", err))
		}
		if old == "." {
			return fail(fmt.Errorf("hard link to the root: %w", api.ErrInvalid))
		}
		oldParent, err := f.resolveDir(path.Dir(old), false)
		if err != nil {
			return fail(fmt.Errorf("hard link target %q: %w", hdr.Linkname, err))
		}
		oldPath := path.Join(oldParent, path.Base(old))
		fi, err := f.root.Lstat(oldPath)
		if err != nil {
			return fail(fmt.Errorf("hard link target %q: %w", hdr.Linkname, err))
		}
		if fi.IsDir() {
			return fail(fmt.Errorf("hard link to directory %q: %w", hdr.Linkname, api.ErrInvalid))
		}
		if err := f.root.Link(oldPath, target); err != nil {
			return fail(err)
		}
		f.owners.link(target, oldPath)
	default: // regular file
		if err := f.regular(target, hdr, mode, r); err != nil {
			return fail(err)
		}
	}
	return nil
}

// clear removes what is at target unless both it and the new entry are
// directories (a directory entry only updates the existing one's metadata).
func (f *flattener) clear(target string, dir bool) error {
	fi, err := f.root.Lstat(target)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() && dir {
		return nil
	}
	f.dirs = nil
	f.owners.forget(target)
	switch {
	case fi.IsDir():
		return f.root.RemoveAll(target)
	default:
		return f.root.Remove(target)
	}
}

func (f *flattener) regular(target string, hdr *tar.Header, mode fs.FileMode, r io.Reader) error {
	out, err := f.root.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		// No partial file: the stream failed (or hit a limit) mid-entry.
		_ = f.root.Remove(target)
		return err
	}
	if err := out.Chmod(stagingMode(mode, false)); err != nil {
		out.Close()
		return err
	}
	x, err := f.xattrs(hdr)
	if err != nil {
		out.Close()
		return err
	}
	f.owners.record(target, hdr.Uid, hdr.Gid, mode, x)
	if err := out.Close(); err != nil {
		return err
	}
	return f.root.Chtimes(target, hdr.ModTime, hdr.ModTime)
}

// meta gives a directory its staging mode and records the rest.
func (f *flattener) meta(target string, hdr *tar.Header, mode fs.FileMode) error {
	if err := f.root.Chmod(target, stagingMode(mode, true)); err != nil {
		return err
	}
	x, err := f.xattrs(hdr)
	if err != nil {
		return err
	}
	f.owners.record(target, hdr.Uid, hdr.Gid, mode, x)
	return nil
}

const paxXattr = "SCHILY.xattr."

// maxXattrValue is the kernel's limit on one xattr value (XATTR_SIZE_MAX).
const maxXattrValue = 64 << 10

// xattrs returns the entry's extended attributes (PAX SCHILY.xattr.*) in
// the namespaces an image may carry (allowedXattr), charged against
// MaxXattrBytes: the Owners table keeps them in memory.
func (f *flattener) xattrs(hdr *tar.Header) (map[string][]byte, error) {
	var out map[string][]byte
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattr)
		if !ok || !allowedXattr(name) {
			continue
		}
		if len(v) > maxXattrValue {
			return nil, fmt.Errorf("xattr %q: value of %d bytes exceeds %d bytes (limit): %w", name, len(v), maxXattrValue, api.ErrInvalid)
		}
		f.xattrBytes += int64(len(name) + len(v))
		if f.xattrBytes > f.limits.MaxXattrBytes {
			return nil, fmt.Errorf("xattrs of the image exceed %d bytes (limit): %w", f.limits.MaxXattrBytes, api.ErrInvalid)
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[name] = []byte(v)
	}
	return out, nil
}

// resolveDir resolves dir (clean, relative) to a path inside the root whose
// every component is a real directory: symlinks are followed by hand
// (relative targets from their own directory, absolute ones from the root),
// ".." may not climb above the root, and missing components are created
// (0755 root:root) when create is set.
func (f *flattener) resolveDir(dir string, create bool) (string, error) {
	if dir == "." || dir == "" {
		return ".", nil
	}
	if r, ok := f.dirs[dir]; ok {
		return r, nil
	}
	r, err := f.resolveDirUncached(dir, create)
	if err == nil {
		if f.dirs == nil {
			f.dirs = map[string]string{}
		}
		f.dirs[dir] = r
	}
	return r, err
}

func (f *flattener) resolveDirUncached(dir string, create bool) (string, error) {
	parts := strings.Split(dir, "/")
	resolved := ""
	hops := 0
	for len(parts) > 0 {
		p := parts[0]
		parts = parts[1:]
		switch p {
		case "", ".":
			continue
		case "..":
			if resolved == "" {
				return "", fmt.Errorf("path %q escapes the image root through a symlink: %w", dir, api.ErrInvalid)
			}
			resolved = path.Dir(resolved)
			if resolved == "." {
				resolved = ""
			}
			continue
		}
		next := path.Join(resolved, p)
		if resolved == "" {
			next = p
		}
		fi, err := f.root.Lstat(next)
		switch {
		case errors.Is(err, fs.ErrNotExist) && create:
			if err := f.root.Mkdir(next, 0o755); err != nil {
				return "", err
			}
			resolved = next
		case err != nil:
			return "", err
		case fi.IsDir():
			resolved = next
		case fi.Mode()&fs.ModeSymlink != 0:
			hops++
			if hops > maxSymlinkHops {
				return "", fmt.Errorf("path %q: too many levels of symlinks: %w", dir, api.ErrInvalid)
			}
			t, err := f.root.Readlink(next)
			if err != nil {
				return "", err
			}
			if strings.HasPrefix(t, "/") {
				resolved = ""
			}
			parts = append(strings.Split(t, "/"), parts...)
		default:
			return "", fmt.Errorf("path %q: %q is not a directory: %w", dir, next, api.ErrInvalid)
		}
	}
	if resolved == "" {
		return ".", nil
	}
	return resolved, nil
}

// opaque empties dir of everything lower layers put there, keeping what the
// current layer already wrote.
func (f *flattener) opaque(dir string) error {
	f.dirs = nil
	d, err := f.root.Open(dir)
	if err != nil {
		return err
	}
	ents, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := path.Join(dir, e.Name())
		if f.created[p] {
			if e.IsDir() {
				if err := f.opaque(p); err != nil {
					return err
				}
			}
			continue
		}
		if err := f.root.RemoveAll(p); err != nil {
			return err
		}
		f.owners.forget(p)
	}
	return nil
}
