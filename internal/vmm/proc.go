package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

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

// ErrNotVMM: the process at a pid is not the VMM it was recorded as (the pid
// was reused by something else); it was not signalled.
var ErrNotVMM = errors.New("process is not the expected vmm")

// KillProcess sends SIGKILL to pid, if it is the process match recognises,
// without waiting; a missing process is success. See SignalProcess.
func KillProcess(pid int, match func(args []string) bool) error {
	return SignalProcess(pid, unix.SIGKILL, match)
}

// TerminateProcess sends SIGTERM to pid, if match recognises it; a missing
// process is success.
func TerminateProcess(pid int, match func(args []string) bool) error {
	return SignalProcess(pid, unix.SIGTERM, match)
}

// SignalProcess signals pid through a pidfd, never by bare pid: the process
// is pinned first (pidfd_open), its argv read from /proc, the pidfd checked
// to be still live (so that argv was the pinned process's, not a successor's),
// and only a process match accepts gets sig, through the same pidfd. A
// process that is gone (or a zombie) is success; one match refuses is left
// alone and reported with ErrNotVMM.
func SignalProcess(pid int, sig unix.Signal, match func(args []string) bool) error {
	if pid <= 0 {
		return fmt.Errorf("signal pid %d: %w", pid, errInvalidPID)
	}
	if match == nil {
		return fmt.Errorf("signal pid %d: no identity to check: %w", pid, ErrNotVMM)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	args, aerr := ProcessArgs(pid)
	if err := unix.PidfdSendSignal(fd, 0, nil, 0); errors.Is(err, unix.ESRCH) {
		return nil // exited meanwhile: the argv may be a successor's
	} else if err != nil {
		return fmt.Errorf("signal pid %d: %w", pid, err)
	}
	if !ProcessAlive(pid) {
		return nil // a zombie: already dead, argv empty
	}
	if aerr != nil || len(args) == 0 || !match(args) {
		return fmt.Errorf("pid %d runs %q: not signalled: %w", pid, truncate(strings.Join(args, " "), 200), ErrNotVMM)
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal pid %d: %w", pid, err)
	}
	return nil
}

// Registry remembers, for every pid a driver started or found, how to
// recognise that process again (its argv), so Kill and Shutdown never signal
// a process that merely reuses the pid. The zero value is ready to use.
type Registry struct {
	mu sync.Mutex
	m  map[int]func(args []string) bool
}

// Remember records match as the identity of pid.
func (r *Registry) Remember(pid int, match func(args []string) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[int]func([]string) bool{}
	}
	r.m[pid] = match
}

// Signal sends sig to pid if it is still the process recorded for it; a pid
// the driver never started or found is refused (ErrNotVMM).
func (r *Registry) Signal(pid int, sig unix.Signal) error {
	if pid <= 0 {
		return fmt.Errorf("signal pid %d: %w", pid, errInvalidPID)
	}
	r.mu.Lock()
	match := r.m[pid]
	r.mu.Unlock()
	if match == nil {
		if !ProcessAlive(pid) {
			return nil
		}
		return fmt.Errorf("pid %d was not started or found by this driver: not signalled: %w", pid, ErrNotVMM)
	}
	return SignalProcess(pid, sig, match)
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
