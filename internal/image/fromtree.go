package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
)

// streamLayer is a plain tar stream presented as a layer, so a bootstrap tar
// or a source tree goes through Flatten (limits, path hardening, Owners)
// exactly like a pulled layer. It has no registry digest.
type streamLayer struct {
	open func() (io.ReadCloser, error)
	size int64 // 0 when unknown
	what string
}

func (l streamLayer) Digest() (v1.Hash, error) {
	return v1.Hash{Algorithm: "local", Hex: l.what}, nil
}
func (l streamLayer) DiffID() (v1.Hash, error)             { return l.Digest() }
func (l streamLayer) Compressed() (io.ReadCloser, error)   { return l.open() }
func (l streamLayer) Uncompressed() (io.ReadCloser, error) { return l.open() }
func (l streamLayer) Size() (int64, error)                 { return l.size, nil }
func (l streamLayer) MediaType() (types.MediaType, error)  { return types.DockerUncompressedLayer, nil }

// flattenTarFile flattens a tar file (mmdebstrap's rootless output) into
// rootfs, which it creates.
func (b *Builder) flattenTarFile(ctx context.Context, rootfs, tarPath string) (FlattenStats, error) {
	fi, err := os.Stat(tarPath)
	if err != nil {
		return FlattenStats{}, fmt.Errorf("bootstrap tar: %w", err)
	}
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return FlattenStats{}, err
	}
	l := streamLayer{size: fi.Size(), what: "mmdebstrap-tar", open: func() (io.ReadCloser, error) { return os.Open(tarPath) }}
	stats, err := Flatten(ctx, rootfs, []v1.Layer{l}, b.Limits, b.log(), nil)
	if err != nil {
		return stats, fmt.Errorf("unpack bootstrap tar: %w", err)
	}
	b.log().Info("image bootstrap unpacked", "entries", stats.Entries, "bytes", stats.Bytes, "skipped", stats.SkippedCount)
	return stats, nil
}

// flattenDir copies the tree src into rootfs (which it creates) through
// Flatten: src is read as a tar stream written by treeTar, with owners,
// modes, xattrs and hard links taken from lstat.
func (b *Builder) flattenDir(ctx context.Context, rootfs, src string) (FlattenStats, error) {
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return FlattenStats{}, err
	}
	l := streamLayer{what: "source-tree", open: func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(treeTar(ctx, src, pw)) }()
		return pr, nil
	}}
	return Flatten(ctx, rootfs, []v1.Layer{l}, b.Limits, b.log(), nil)
}

// treeTar writes the tree at src to w as a PAX tar: what lstat says of each
// entry (owner, group, mode with setuid/setgid/sticky), the xattrs of the
// namespaces an image may carry, hard links as links to the first path met.
// Sockets are left out; device nodes and FIFOs are written and Flatten skips
// them. A file banger cannot read fails the copy, naming it.
func treeTar(ctx context.Context, src string, w io.Writer) error {
	tw := tar.NewWriter(w)
	links := map[uint64]string{}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return unreadable(err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSocket != 0 {
			return nil
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no unix stat", p)
		}
		target := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = int(st.Uid), int(st.Gid), "", ""
		hdr.Format = tar.FormatPAX
		hdr.AccessTime, hdr.ChangeTime = fi.ModTime(), fi.ModTime()
		if x, err := readXattrs(p); err != nil {
			return err
		} else if len(x) > 0 {
			hdr.PAXRecords = x
		}
		if fi.Mode().IsRegular() && st.Nlink > 1 {
			if first, ok := links[st.Ino]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
				return tw.WriteHeader(hdr)
			}
			links[st.Ino] = hdr.Name
		}
		if !fi.Mode().IsRegular() {
			return tw.WriteHeader(hdr)
		}
		f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
		if err != nil {
			return unreadable(err)
		}
		defer f.Close()
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		// A file that grew or shrank since lstat fails the copy (tar checks).
		if _, err := io.Copy(tw, f); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

func unreadable(err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w (uid %d cannot read the source tree: give the owner read access, pull or build the image instead, or build as root): %w", err, os.Geteuid(), api.ErrInvalid)
	}
	return err
}

// readXattrs returns p's xattrs in the allowed namespaces as PAX records.
func readXattrs(p string) (map[string]string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if errors.Is(err, unix.ERANGE) {
		if n, err = unix.Llistxattr(p, nil); err == nil {
			buf = make([]byte, n)
			n, err = unix.Llistxattr(p, buf)
		}
	}
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("xattrs of %s: %w", p, err)
	}
	var out map[string]string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" || !allowedXattr(name) {
			continue
		}
		sz, err := unix.Lgetxattr(p, name, nil)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("xattr %s of %s: %w", name, p, err)
		}
		val := make([]byte, sz)
		if sz, err = unix.Lgetxattr(p, name, val); err != nil {
			return nil, fmt.Errorf("xattr %s of %s: %w", name, p, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[paxXattr+name] = string(val[:sz])
	}
	return out, nil
}
