package disk

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
)

// MethodQcow2 is a qcow2 overlay whose backing file is the source.
const MethodQcow2 Method = "qcow2-overlay"

// Disk formats, as recorded by callers and handed to the VMM. A format is
// always recorded, never detected from the file: a guest owns its disk's
// bytes and could write a qcow2 header into a raw one.
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// ValidFormat reports whether f is a format Layer takes and VMMs are given.
func ValidFormat(f string) bool { return f == FormatRaw || f == FormatQcow2 }

// layerPerm: a VM's disk is its owner's alone (the VMM runs as the daemon's uid).
const layerPerm = 0o600

// Layer makes dst a copy-on-write view of src (format srcFormat, "raw" or "qcow2"): FICLONE when the
// file system can (dst then has src's format), else, when allowQcow2, a qcow2 overlay backed by src
// (absolute path, backing format recorded in the overlay, never probed), else a hole-preserving copy.
// It returns the method and dst's format. Nothing is left at dst on failure.
//
// The overlay is `qemu-img create -f qcow2 -b SRC -F FMT` through r, sized
// as src, written under a temporary name next to dst and renamed into place
// like Clone's output. dst is 0600 whatever src's mode. An overlay reads src
// for as long as it exists: src must then never change or go away (the
// caller records the dependency). A qcow2 src with a backing file of its own
// must name it by absolute path, or a clone or copy of it elsewhere would not
// find it.
func Layer(ctx context.Context, r system.Runner, src, srcFormat, dst string, allowQcow2 bool) (Method, string, error) {
	if !ValidFormat(srcFormat) {
		return "", "", fmt.Errorf("layer %s: format %q: want raw or qcow2: %w", src, srcFormat, api.ErrInvalid)
	}
	// Absolute paths for qemu-img and for the overlay's header: a relative
	// backing name would be resolved against dst's directory, and a name
	// with a colon before its first slash would read as a protocol.
	absSrc, err := filepath.Abs(src)
	if err != nil {
		return "", "", fmt.Errorf("layer: %w", err)
	}
	absDst, err := filepath.Abs(dst)
	if err != nil {
		return "", "", fmt.Errorf("layer: %w", err)
	}
	format := srcFormat
	m, err := commit(ctx, "layer", absSrc, absDst, layerPerm, func(in, out *os.File, tmp string, size int64) (Method, error) {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		if reflink(in, out) {
			return MethodReflink, nil
		}
		if allowQcow2 {
			// qemu-img truncates and writes the temporary file in place (same
			// inode, our 0600 mode), so commit's fsync and rename cover it.
			if _, err := r.Run(ctx, "qemu-img", "create", "-q", "-f", FormatQcow2,
				"-b", absSrc, "-F", srcFormat, tmp); err != nil {
				return "", err
			}
			format = FormatQcow2
			return MethodQcow2, nil
		}
		return copyInto(ctx, in, out, size)
	})
	if err != nil {
		return "", "", err
	}
	return m, format, nil
}
