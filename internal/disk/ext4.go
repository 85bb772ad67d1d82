package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// Grow enlarges an ext4 image offline to size bytes: e2fsck -fy first (resize2fs
// refuses an unchecked file system, and a reused image may have stale bitmaps),
// then extend the file, then resize2fs. Shrinking is refused with api.ErrInvalid;
// growing to the current size is a no-op.
func Grow(ctx context.Context, r system.Runner, path string, size int64) error {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("grow %s: %w", path, api.ErrNotFound)
		}
		return fmt.Errorf("grow: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("grow %s: not a regular file: %w", path, api.ErrInvalid)
	}
	cur := st.Size()
	switch {
	case size < cur:
		return fmt.Errorf("grow %s: %d bytes is smaller than the current %d (shrinking is not supported): %w", path, size, cur, api.ErrInvalid)
	case size == cur:
		return nil
	}
	if _, err := r.Run(ctx, "e2fsck", "-fy", path); err != nil {
		// 1 = errors corrected; the image is now clean.
		var ee *system.ExitError
		if !errors.As(err, &ee) || ee.Code != 1 {
			return fmt.Errorf("grow %s: check: %w", path, err)
		}
	}
	if err := os.Truncate(path, size); err != nil {
		return fmt.Errorf("grow %s: %w", path, err)
	}
	// A failed resize2fs leaves a larger file with the old file system in it,
	// which is still a valid image: no need to undo the truncate.
	if _, err := r.Run(ctx, "resize2fs", path); err != nil {
		return fmt.Errorf("grow %s: resize: %w", path, err)
	}
	return nil
}
