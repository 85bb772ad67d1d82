package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Process helpers shared by the drivers: every VMM is a plain child process
// found again through its pid file and /proc.

// ProcessAlive reports whether pid exists and is not a zombie.
func ProcessAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := unix.Kill(pid, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the ")" that closes the command name.
	i := bytes.LastIndexByte(st, ')')
	if i < 0 || i+2 >= len(st) {
		return false
	}
	switch st[i+2] {
	case 'Z', 'X', 'x':
		return false
	}
	return true
}

// KillProcess sends SIGKILL to pid without waiting; a missing process is success.
func KillProcess(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("kill pid %d: %w", pid, errInvalidPID)
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill pid %d: %w", pid, err)
	}
	return nil
}

// TerminateProcess sends SIGTERM to pid; a missing process is success.
func TerminateProcess(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("terminate pid %d: %w", pid, errInvalidPID)
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("terminate pid %d: %w", pid, err)
	}
	return nil
}

var errInvalidPID = errors.New("invalid pid")

// ProcessArgs returns the argv of pid from /proc/<pid>/cmdline.
func ProcessArgs(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\x00"), nil
}

// ReadPIDFile parses a pid file: one positive decimal number, optional newline.
func ReadPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 || len(s) > 10 {
		return 0, fmt.Errorf("pid file %s: bad content %q", path, truncate(s, 32))
	}
	return pid, nil
}

// FindProcess rediscovers a live process whose argv satisfies match (drivers
// look for an absolute path inside the VM dir, so a reused pid running
// something else never matches). It tries pidFile first and falls back to a
// /proc scan, so a VMM whose pid file was lost is still found.
func FindProcess(pidFile string, match func(args []string) bool) (int, bool) {
	if pid, err := ReadPIDFile(pidFile); err == nil && processMatches(pid, match) {
		return pid, true
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, false
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if processMatches(pid, match) {
			return pid, true
		}
	}
	return 0, false
}

// HasArgPair reports whether args contains flag immediately followed by value.
func HasArgPair(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}

func processMatches(pid int, match func([]string) bool) bool {
	if !ProcessAlive(pid) {
		return false
	}
	args, err := ProcessArgs(pid)
	if err != nil || len(args) == 0 {
		return false
	}
	return match(args)
}

// TailFile returns up to max bytes from the end of path, starting at a line
// boundary where possible. Errors yield "".
func TailFile(path string, max int64) string {
	f, err := os.Open(filepath.Clean(path))
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - max
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	n, _ := f.ReadAt(buf, off)
	buf = buf[:n]
	if off > 0 {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 && i+1 < len(buf) {
			buf = buf[i+1:]
		}
	}
	return strings.TrimSpace(string(buf))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
