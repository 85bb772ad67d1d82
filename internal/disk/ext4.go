package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
)

// MinExt4Size is the smallest image CreateExt4 makes; mke2fs needs some room
// for its metadata and a journal.
const MinExt4Size = 8 << 20

// maxLabelLen is ext4's volume label limit in bytes.
const maxLabelLen = 16

// CreateExt4 makes a sparse ext4 image of size bytes at path with the given
// label, populated from srcDir when it is not empty. The owners and modes in
// srcDir are copied as they are; the root directory is owned by 0:0. The image
// is built under a temporary name and renamed onto path.
func CreateExt4(ctx context.Context, r system.Runner, path string, size int64, label, srcDir string) error {
	if size < MinExt4Size || size%1024 != 0 {
		return fmt.Errorf("ext4 size %d: must be a multiple of 1 KiB and at least %d bytes: %w", size, MinExt4Size, api.ErrInvalid)
	}
	if !validLabel(label) {
		return fmt.Errorf("ext4 label %q: %w", label, api.ErrInvalid)
	}
	if srcDir != "" {
		st, err := os.Stat(srcDir)
		if err != nil {
			return fmt.Errorf("ext4 source: %w", err)
		}
		if !st.IsDir() {
			return fmt.Errorf("ext4 source %s: not a directory: %w", srcDir, api.ErrInvalid)
		}
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("create ext4: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	// Sizing the file first keeps it sparse and exactly size bytes long.
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create ext4: %w", err)
	}

	// -b 4096: mke2fs would pick 1 KiB blocks for small images, which limits
	// how far Grow can take them and slows every later access.
	args := []string{"-q", "-F", "-b", "4096", "-L", label}
	if srcDir != "" {
		args = append(args, "-d", srcDir)
	}
	args = append(args, "-E", "root_owner=0:0", tmp, fmt.Sprintf("%dk", size/1024))
	if _, err := r.Run(ctx, "mkfs.ext4", args...); err != nil {
		return fmt.Errorf("create ext4 %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("create ext4: %w", err)
	}
	ok = true
	return nil
}

func validLabel(label string) bool {
	if label == "" || len(label) > maxLabelLen || !utf8.ValidString(label) {
		return false
	}
	for _, c := range label {
		// Labels end up in LABEL= lookups and /dev/disk/by-label names.
		if c < 0x20 || c == 0x7f || c == '/' || c == '\\' || c == ' ' || c == '"' || c == '\'' {
			return false
		}
	}
	return true
}

// Grow enlarges an ext4 image offline to size bytes, in place: e2fsck -fy first
// (resize2fs refuses an unchecked file system, and a reused image may have
// stale bitmaps), then extend the file, then resize2fs. A failure part-way may
// leave the file system unusable, so Grow is for images the caller can throw
// away (a root disk just cloned by create); GrowCopy is for disks that hold
// data. Shrinking is refused with api.ErrInvalid; growing to the current size
// is a no-op.
func Grow(ctx context.Context, r system.Runner, path string, size int64) error {
	cur, err := growCheck(path, size)
	if err != nil || cur == size {
		return err
	}
	if err := growFS(ctx, r, path, size); err != nil {
		return fmt.Errorf("grow %s: %w", path, err)
	}
	return nil
}

// GrowCopy grows the ext4 image at path to size bytes without ever writing to
// it: a clone of it (FICLONE, else a hole-preserving copy of its allocated
// blocks, which needs that much free space while it runs) is checked
// (e2fsck -fy), extended, resized (resize2fs), checked again read-only
// (e2fsck -fn), synced and renamed over path. On any failure or cancellation
// path still holds the original and the clone is removed; a process killed
// part-way leaves the original and a `.<name>.tmp-*` file next to it.
// Shrinking is refused with api.ErrInvalid; growing to the current size is a
// no-op.
func GrowCopy(ctx context.Context, r system.Runner, path string, size int64) error {
	cur, err := growCheck(path, size)
	if err != nil || cur == size {
		return err
	}
	_, err = commit(ctx, "grow", path, path, 0, func(in, out *os.File, tmp string, n int64) (Method, error) {
		m, err := cloneInto(ctx, in, out, n)
		if err != nil {
			return "", err
		}
		if err := growFS(ctx, r, tmp, size); err != nil {
			return "", err
		}
		// resize2fs succeeded; the file system replaces the original only
		// if it also checks clean.
		if _, err := r.Run(ctx, "e2fsck", "-fn", tmp); err != nil {
			return "", fmt.Errorf("check after resize: %w", err)
		}
		return m, nil
	})
	return err
}

// growCheck returns the current size of the image at path, refusing a
// missing or irregular file and a size below the current one.
func growCheck(path string, size int64) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("grow %s: %w", path, api.ErrNotFound)
		}
		return 0, fmt.Errorf("grow: %w", err)
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("grow %s: not a regular file: %w", path, api.ErrInvalid)
	}
	if cur := st.Size(); size < cur {
		return 0, fmt.Errorf("grow %s: %d bytes is smaller than the current %d (shrinking is not supported): %w", path, size, cur, api.ErrInvalid)
	}
	return st.Size(), nil
}

// growFS checks, extends and resizes the ext4 image at path.
func growFS(ctx context.Context, r system.Runner, path string, size int64) error {
	if _, err := r.Run(ctx, "e2fsck", "-fy", path); err != nil {
		// 1 = errors corrected; the image is now clean.
		var ee *system.ExitError
		if !errors.As(err, &ee) || ee.Code != 1 {
			return fmt.Errorf("check: %w", err)
		}
	}
	if err := os.Truncate(path, size); err != nil {
		return err
	}
	if _, err := r.Run(ctx, "resize2fs", path); err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	return nil
}

// RemoveTemps removes the temporary files that CreateExt4, Clone, Layer or
// GrowCopy, killed part-way, left next to path (`.<name>.tmp-*`). Only for a
// caller that knows no such operation on path is running.
func RemoveTemps(path string) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "."+base+".tmp-") && e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
