package agentinit

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/tarsafe"
)

// MaxSeedBytes bounds the file data one seed may write: a seed carries
// identity (keys, hostname), never bulk data.
const MaxSeedBytes = 64 << 20

// SeedResult counts what UnpackSeed did.
type SeedResult struct {
	Files, Dirs int
	Refused     []string // "name: reason" per refused entry
}

// UnpackSeed extracts the per-VM seed tar into root. Only regular files and
// directories are accepted; names must be relative without "..", and no
// symlink is ever followed (each path component is opened with O_NOFOLLOW
// relative to its parent, so a symlink in the root image cannot redirect a
// write outside root). An existing non-directory at a file's place (e.g. a
// symlink) is replaced, not written through. Files get the tar's permission
// bits and owner root. Bad entries are refused and reported; a corrupt
// archive is an error.
func UnpackSeed(r io.Reader, root string) (SeedResult, error) {
	var res SeedResult
	rootfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return res, fmt.Errorf("open %s: %w", root, err)
	}
	defer unix.Close(rootfd)
	tr := tar.NewReader(r)
	budget := int64(MaxSeedBytes)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return res, nil
		}
		if err != nil {
			return res, fmt.Errorf("read seed tar: %w", err)
		}
		refuse := func(why string) { res.Refused = append(res.Refused, fmt.Sprintf("%q: %s", hdr.Name, why)) }
		parts, err := seedPath(hdr.Name)
		if err != nil {
			refuse(err.Error())
			continue
		}
		mode := uint32(hdr.Mode) & 0o7777
		switch hdr.Typeflag {
		case tar.TypeDir:
			if len(parts) == 0 {
				continue // "./"
			}
			fd, err := openDirPath(rootfd, parts)
			if err != nil {
				refuse(err.Error())
				continue
			}
			err = setOwnerMode(fd, mode)
			unix.Close(fd)
			if err != nil {
				refuse(err.Error())
				continue
			}
			res.Dirs++
		case tar.TypeReg:
			if len(parts) == 0 {
				refuse("empty file name")
				continue
			}
			if tarsafe.IsSparse(hdr) {
				// Sparse entries expand to far more than the archive holds.
				refuse("sparse files not allowed")
				continue
			}
			if hdr.Size > budget {
				refuse(fmt.Sprintf("size %d exceeds the remaining seed budget of %d bytes", hdr.Size, budget))
				continue
			}
			budget -= hdr.Size
			if err := writeSeedFile(rootfd, parts, mode, hdr.Size, tr); err != nil {
				refuse(err.Error())
				continue
			}
			res.Files++
		default:
			refuse(fmt.Sprintf("entry type %q not allowed (regular files and directories only)", hdr.Typeflag))
		}
	}
}

// seedPath splits a tar name into safe components.
func seedPath(name string) ([]string, error) {
	if strings.ContainsRune(name, 0) {
		return nil, errors.New("NUL in name")
	}
	if strings.HasPrefix(name, "/") {
		return nil, errors.New("absolute path")
	}
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
			continue
		case "..":
			return nil, errors.New("'..' in path")
		}
		parts = append(parts, p)
	}
	return parts, nil
}

// openDirPath opens (creating as needed) the directory parts under dirfd
// without following symlinks.
func openDirPath(dirfd int, parts []string) (int, error) {
	fd, err := unix.Dup(dirfd)
	if err != nil {
		return -1, err
	}
	for _, p := range parts {
		next, err := unix.Openat(fd, p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			if err = unix.Mkdirat(fd, p, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = unix.Openat(fd, p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err == nil {
					err = setOwnerMode(next, 0o755)
				}
			}
		}
		unix.Close(fd)
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return -1, fmt.Errorf("path component %q is a symlink or not a directory", p)
			}
			return -1, fmt.Errorf("open %q: %w", p, err)
		}
		fd = next
	}
	return fd, nil
}

func writeSeedFile(rootfd int, parts []string, mode uint32, size int64, r io.Reader) error {
	dir, base := parts[:len(parts)-1], parts[len(parts)-1]
	dfd, err := openDirPath(rootfd, dir)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return errors.New("a directory exists at this path")
		}
		// Replace, never write through, whatever is there (symlinks included).
		if err := unix.Unlinkat(dfd, base, 0); err != nil {
			return fmt.Errorf("replace: %w", err)
		}
	}
	fd, err := unix.Openat(dfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	f := os.NewFile(uintptr(fd), base)
	defer f.Close()
	if _, err := io.CopyN(f, r, size); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	// Owner before mode: chown clears setuid/setgid bits.
	return setOwnerMode(fd, mode)
}

func setOwnerMode(fd int, mode uint32) error {
	if os.Geteuid() == 0 {
		if err := unix.Fchown(fd, 0, 0); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}
