package privileged

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/rpc"
)

// Listen makes the helper's socket: its directory root-owned and 0755 (the
// owner must traverse it), the socket 0600 and owned by the owner, so no
// one else can connect; SO_PEERCRED still checks every connection (root
// can connect to anything).
func Listen(path string, owner int) (net.Listener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("helper socket %q: want an absolute path", path)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("helper socket dir: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return nil, fmt.Errorf("helper socket dir: %w", err)
	}
	// A directory others could write to would let them swap the socket.
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Uid != 0 || st.Mode&0o022 != 0 {
		return nil, fmt.Errorf("helper socket dir %s: must be a root-owned directory not writable by group or others", dir)
	}
	ln, err := rpc.Listen(path)
	if err != nil {
		return nil, err
	}
	if err := os.Lchown(path, owner, 0); err != nil {
		ln.Close()
		return nil, fmt.Errorf("helper socket: chown to uid %d: %w", owner, err)
	}
	return ln, nil
}

// ServeListener serves ln until ctx is done.
func (s *Server) ServeListener(ctx context.Context, ln net.Listener) error {
	s.log.InfoContext(ctx, "banger helper listening", "socket", ln.Addr().String(), "owner_uid", s.rules.Owner,
		"subnet", s.rules.Subnet.String(), "pid", os.Getpid())
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			s.log.Warn("helper accept", "err", err)
			continue
		}
		conn, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			continue
		}
		select {
		case s.sem <- struct{}{}:
			go func() {
				defer func() { <-s.sem }()
				s.ServeConn(ctx, conn)
			}()
		default:
			s.log.Warn("helper busy; connection closed", "max", maxConns)
			conn.Close()
		}
	}
}
