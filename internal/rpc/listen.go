package rpc

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// maxSockPath is the usable length of sockaddr_un.sun_path on Linux.
const maxSockPath = 107

// Listen creates a unix socket at path with mode 0600.
//
// The socket is bound inside a fresh 0700 directory next to path, chmod'ed,
// then hard-linked into place, so it is never reachable by other users with
// a wider mode (no process-wide umask games) and an existing path is never
// clobbered: link fails if something appeared meanwhile. A stale socket at
// path (nothing answers) is removed first; a live one yields api.ErrBusy;
// a non-socket file is left alone and refused.
//
// Closing the returned listener removes path if it is still this socket.
func Listen(path string) (net.Listener, error) {
	if len(path) > maxSockPath {
		return nil, fmt.Errorf("%w: socket path %q longer than %d bytes", api.ErrInvalid, path, maxSockPath)
	}
	if err := clearStale(path); err != nil {
		return nil, err
	}
	tmpDir, err := os.MkdirTemp(filepath.Dir(path), ".s") // 0700
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	if len(tmp) > maxSockPath {
		return nil, fmt.Errorf("%w: socket directory %q too long for a unix socket", api.ErrInvalid, filepath.Dir(path))
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false) // the temp name goes with tmpDir; path is ours to remove
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Link(tmp, path); err != nil {
		ln.Close()
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%w: %s appeared while starting; another server is starting", api.ErrBusy, path)
		}
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return &listener{UnixListener: ln, path: path, fi: fi}, nil
}

// clearStale removes a socket file at path that no server answers on.
func clearStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%w: %s exists and is not a socket; refusing to replace it", api.ErrExists, path)
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	switch {
	case err == nil:
		conn.Close()
		return fmt.Errorf("%w: a server is already listening on %s", api.ErrBusy, path)
	case errors.Is(err, syscall.EAGAIN):
		// A full backlog means a live (overloaded) server.
		return fmt.Errorf("%w: a server is already listening on %s", api.ErrBusy, path)
	case errors.Is(err, syscall.ECONNREFUSED):
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale socket: %w", err)
		}
		return nil
	default:
		return fmt.Errorf("probe %s: %w", path, err)
	}
}

type listener struct {
	*net.UnixListener
	path string
	fi   fs.FileInfo

	closeOnce sync.Once // concurrent Close calls all wait for the unlink
	closeErr  error
}

func (l *listener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *listener) Close() error {
	l.closeOnce.Do(func() {
		l.closeErr = l.UnixListener.Close()
		// Only remove the path if it is still our socket, not a successor's.
		if cur, serr := os.Lstat(l.path); serr == nil && os.SameFile(cur, l.fi) {
			_ = os.Remove(l.path)
		}
	})
	return l.closeErr
}
