package disk

import (
	"archive/tar"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// SeedFile is one file for the per-VM seed disk.
type SeedFile struct {
	Path string      // relative to the guest's root, e.g. "etc/hostname"
	Mode os.FileMode // permission bits only
	Data []byte
}

// MinSeedSize is the smallest seed disk: block devices smaller than this are
// awkward for some VMMs, and the tail is zeros (two zero blocks end a tar).
const MinSeedSize = 1 << 20

// maxSeedFile bounds one entry; a seed holds keys and small config files.
const maxSeedFile = 16 << 20

// WriteSeed writes files as a tar archive (ustar, owner 0:0, parent
// directories included) padded with zeros to a multiple of 512 bytes and at
// least MinSeedSize, at path. The file is attached raw as a virtio-blk disk and
// unpacked onto the root by the guest's /init. It holds a private host key, so
// it is created 0600, under a temporary name, and renamed into place.
func WriteSeed(dst string, files []SeedFile) error {
	clean := make([]SeedFile, 0, len(files))
	seen := map[string]bool{}
	dirs := map[string]bool{}
	for _, f := range files {
		p, err := seedPath(f.Path)
		if err != nil {
			return err
		}
		if f.Mode&^os.ModePerm != 0 {
			return fmt.Errorf("seed file %q: mode %v: only permission bits are allowed: %w", f.Path, f.Mode, api.ErrInvalid)
		}
		if len(f.Data) > maxSeedFile {
			return fmt.Errorf("seed file %q: %d bytes is too large: %w", f.Path, len(f.Data), api.ErrInvalid)
		}
		if seen[p] || dirs[p] {
			return fmt.Errorf("seed file %q: duplicate or also a directory: %w", f.Path, api.ErrInvalid)
		}
		seen[p] = true
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if seen[d] {
				return fmt.Errorf("seed file %q: parent %q is a file: %w", f.Path, d, api.ErrInvalid)
			}
			dirs[d] = true
		}
		clean = append(clean, SeedFile{Path: p, Mode: f.Mode, Data: f.Data})
	}
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	// Lexical order puts every parent before its children.
	sort.Strings(dirList)

	dir, base := filepath.Split(dst)
	if dir == "" {
		dir = "."
	}
	out, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write seed: %w", err)
	}
	tmp := out.Name()
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(tmp)
		}
	}()

	now := time.Now().Truncate(time.Second)
	tw := tar.NewWriter(out)
	hdr := func(name string, typ byte, mode os.FileMode, size int64) *tar.Header {
		return &tar.Header{
			Typeflag: typ, Name: name, Mode: int64(mode.Perm()), Size: size,
			Uid: 0, Gid: 0, Uname: "root", Gname: "root", ModTime: now,
			Format: tar.FormatUSTAR,
		}
	}
	for _, d := range dirList {
		if err := tw.WriteHeader(hdr(d+"/", tar.TypeDir, 0o755, 0)); err != nil {
			return fmt.Errorf("write seed: %s: %w", d, err)
		}
	}
	for _, f := range clean {
		if err := tw.WriteHeader(hdr(f.Path, tar.TypeReg, f.Mode, int64(len(f.Data)))); err != nil {
			return fmt.Errorf("write seed: %s: %w", f.Path, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return fmt.Errorf("write seed: %s: %w", f.Path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write seed: %w", err)
	}
	end, err := out.Seek(0, 1)
	if err != nil {
		return fmt.Errorf("write seed: %w", err)
	}
	size := max((end+511)/512*512, MinSeedSize)
	if err := out.Truncate(size); err != nil {
		return fmt.Errorf("write seed: %w", err)
	}
	if err := out.Chmod(0o600); err != nil {
		return fmt.Errorf("write seed: %w", err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("write seed: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("write seed: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("write seed: %w", err)
	}
	ok = true
	return nil
}

// seedPath validates a guest path: relative, clean, inside the root.
func seedPath(p string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("seed file %q: %s: %w", p, why, api.ErrInvalid)
	}
	switch {
	case p == "":
		return bad("empty path")
	case strings.HasPrefix(p, "/"):
		return bad("absolute path")
	case len(p) > 255:
		return bad("path too long for ustar")
	case strings.IndexFunc(p, func(r rune) bool { return r <= 0x20 || r >= 0x7f || r == '\\' }) >= 0:
		return bad("only printable ASCII without spaces is allowed")
	case path.Clean(p) != p:
		return bad("path is not clean")
	case p == "." || p == ".." || strings.HasPrefix(p, "../"):
		return bad("path leaves the root")
	}
	return p, nil
}
