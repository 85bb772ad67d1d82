// Package disk makes and changes the disk files VMs boot from: copy-on-write
// clones or qcow2 overlays of image files (Clone, Layer), raw ext4 images,
// offline growth and the per-VM seed disk.
package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Method says how Clone or Layer made a disk from its source, so callers can
// record it.
type Method string

const (
	// MethodReflink: FICLONE; the clone shares every extent with its source.
	MethodReflink Method = "reflink"
	// MethodSparseCopy: only the data extents were copied; holes stay holes.
	MethodSparseCopy Method = "sparse-copy"
)

// copyChunk bounds each copy_file_range/read-write step so cancellation is noticed.
const copyChunk = 64 << 20

// Clone makes dst a copy-on-write clone of src using the cheapest primitive:
// FICLONE, then a hole-preserving copy (SEEK_DATA/SEEK_HOLE + copy_file_range,
// falling back to read/write across file systems). Holes are never filled.
// dst gets src's permission bits. The clone is written under a temporary name
// in dst's directory and renamed into place, so on failure nothing is left at
// dst.
func Clone(ctx context.Context, src, dst string) (Method, error) {
	m, err := commit(ctx, "clone", src, dst, 0, func(in, out *os.File, _ string, size int64) (Method, error) {
		return cloneInto(ctx, in, out, size)
	})
	return m, err
}

// commit is the frame of Clone, Layer and GrowCopy (src == dst): src opened
// (a regular file), a temporary file made next to dst, fill writes it (in:
// src, out and tmp: the temporary file and its name), its mode set (perm 0:
// src's), synced and renamed onto dst. On failure the temporary file is
// removed.
func commit(ctx context.Context, what, src, dst string, perm os.FileMode, fill func(in, out *os.File, tmp string, size int64) (Method, error)) (Method, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s %s: not a regular file", what, src)
	}
	if perm == 0 {
		perm = st.Mode().Perm()
	}

	dir, base := filepath.Split(dst)
	if dir == "" {
		dir = "."
	}
	out, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	tmp := out.Name()
	done := false
	defer func() {
		if !done {
			out.Close()
			os.Remove(tmp)
		}
	}()

	method, err := fill(in, out, tmp, st.Size())
	if err != nil {
		if src == dst {
			return "", fmt.Errorf("%s %s: %w", what, src, err)
		}
		return "", fmt.Errorf("%s %s to %s: %w", what, src, dst, err)
	}
	if err := out.Chmod(perm); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	// A crash after the rename must not leave a half-written disk under dst.
	if err := out.Sync(); err != nil {
		return "", fmt.Errorf("%s: sync %s: %w", what, tmp, err)
	}
	if err := out.Close(); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	done = true
	return method, nil
}

func cloneInto(ctx context.Context, in, out *os.File, size int64) (Method, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if reflink(in, out) {
		return MethodReflink, nil
	}
	return copyInto(ctx, in, out, size)
}

// reflink tries FICLONE. Any failure (EOPNOTSUPP on ext4, EXDEV across file
// systems, EINVAL, ENOTTY...) just means this host cannot share extents here.
func reflink(in, out *os.File) bool {
	return unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil
}

// copyInto makes out a hole-preserving copy of in.
func copyInto(ctx context.Context, in, out *os.File, size int64) (Method, error) {
	if err := out.Truncate(size); err != nil {
		return "", err
	}
	if err := sparseCopy(ctx, in, out, size); err != nil {
		return "", err
	}
	return MethodSparseCopy, nil
}

// sparseCopy copies only the data extents of in; out is already size bytes long
// (all hole), so skipping a range keeps it a hole.
func sparseCopy(ctx context.Context, in, out *os.File, size int64) error {
	ifd := int(in.Fd())
	useCFR := true
	var off int64
	for off < size {
		start, err := unix.Seek(ifd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if err != nil {
			// No SEEK_DATA on this file system: copy everything, skipping zero blocks.
			return copyRange(ctx, in, out, off, size, &useCFR)
		}
		end, err := unix.Seek(ifd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		end = min(end, size)
		if err := copyRange(ctx, in, out, start, end, &useCFR); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// copyRange copies [start, end) of in to the same offsets of out, with
// copy_file_range while the kernel allows it, else read/write.
func copyRange(ctx context.Context, in, out *os.File, start, end int64, useCFR *bool) error {
	for off := start; off < end; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(int64(copyChunk), end-off)
		if *useCFR {
			roff, woff := off, off
			c, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(n), 0)
			switch {
			case err == nil && c > 0:
				off += int64(c)
				continue
			case err == nil: // 0 bytes: source shrank under us
				return fmt.Errorf("copy_file_range: unexpected end of file at %d", off)
			case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ENOSYS),
				errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL):
				*useCFR = false
			default:
				return fmt.Errorf("copy_file_range: %w", err)
			}
		}
		if err := copyChunkRW(in, out, off, n); err != nil {
			return err
		}
		off += n
	}
	return nil
}

var zeroBlock = make([]byte, 64<<10)

// copyChunkRW copies n bytes at off with pread/pwrite, leaving all-zero blocks
// as holes (out was pre-sized, so unwritten ranges read back as zeros).
func copyChunkRW(in, out *os.File, off, n int64) error {
	buf := make([]byte, len(zeroBlock))
	for n > 0 {
		want := min(int64(len(buf)), n)
		r, err := in.ReadAt(buf[:want], off)
		if err != nil && !(errors.Is(err, io.EOF) && int64(r) == want) {
			return fmt.Errorf("read at %d: %w", off, err)
		}
		if !bytes.Equal(buf[:r], zeroBlock[:r]) {
			if _, err := out.WriteAt(buf[:r], off); err != nil {
				return fmt.Errorf("write at %d: %w", off, err)
			}
		}
		off += int64(r)
		n -= int64(r)
	}
	return nil
}
