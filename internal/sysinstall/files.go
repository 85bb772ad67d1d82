package sysinstall

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
)

// SubordinateCount is the size of the range install gives the owner: one
// full 16-bit id space, what an unpacked Debian root needs.
const SubordinateCount = 65536

// addSubordinate gives the owner a range in /etc/subuid or /etc/subgid
// unless one is there already (by name or uid). It returns the line it
// added, "" when it added none. The range starts after every existing one.
func addSubordinate(path string, o Owner) (string, error) {
	b, err := readIfExists(path)
	if err != nil {
		return "", err
	}
	next := int64(100000)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(strings.TrimSpace(line), ":")
		if len(f) != 3 {
			continue
		}
		if f[0] == o.Name || f[0] == strconv.Itoa(o.UID) {
			return "", nil
		}
		start, err1 := strconv.ParseInt(f[1], 10, 64)
		count, err2 := strconv.ParseInt(f[2], 10, 64)
		if err1 == nil && err2 == nil && start+count > next {
			next = start + count
		}
	}
	if next+SubordinateCount > 1<<32-1 {
		return "", fmt.Errorf("%s: no room for a %d-id range after %d: %w", path, SubordinateCount, next, api.ErrInvalid)
	}
	line := fmt.Sprintf("%s:%d:%d", o.Name, next, SubordinateCount)
	out := string(b)
	if out != "" && !strings.HasSuffix(out, "\n") {
		out += "\n"
	}
	return line, writeFileAtomic(path, []byte(out+line+"\n"), modeOr(path, 0o644))
}

// removeLine drops exactly line from path (what install added, nothing else).
func removeLine(path, line string) error {
	b, err := readIfExists(path)
	if err != nil || b == nil {
		return err
	}
	var keep []string
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if strings.TrimRight(l, "\n") != line {
			keep = append(keep, l)
		}
	}
	return writeFileAtomic(path, []byte(strings.Join(keep, "")), modeOr(path, 0o644))
}

func modeOr(path string, def os.FileMode) os.FileMode {
	if st, err := os.Stat(path); err == nil {
		return st.Mode().Perm()
	}
	return def
}

func fileUID(st os.FileInfo) (int, bool) {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(s.Uid), true
	}
	return 0, false
}

// removeStateDir deletes the owner's state dir as root without following a
// symlink anywhere on the way: the home is the owner's, who could have
// pointed a component elsewhere. The parent is opened with
// RESOLVE_NO_SYMLINKS and the removal goes through that fd; the dir must
// be a real directory owned by the owner.
func removeStateDir(path string, uid int) error {
	parent, base := filepath.Dir(path), filepath.Base(path)
	fd, err := unix.Openat2(unix.AT_FDCWD, parent, &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS})
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("purge %s: open %s without symlinks: %w", path, parent, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstatat(fd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("purge %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || int(st.Uid) != uid {
		return fmt.Errorf("purge %s: not a directory owned by uid %d; left alone: %w", path, uid, api.ErrInvalid)
	}
	// /proc/self/fd/N is the parent already resolved; RemoveAll walks below
	// it with openat/unlinkat and never follows a symlink.
	if err := os.RemoveAll(fmt.Sprintf("/proc/self/fd/%d/%s", fd, base)); err != nil {
		return fmt.Errorf("purge %s: %w", path, err)
	}
	return nil
}
