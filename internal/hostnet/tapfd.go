package hostnet

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
)

// OpenTap opens a queue of the existing TAP name and returns it. Opening
// /dev/net/tun needs root where the node is 0600 (these hosts), so the
// privileged side opens it and the VMM inherits the fd (QEMU -netdev
// tap,fd=N) and needs no privilege itself. A missing TAP is ErrNotFound:
// TUNSETIFF would otherwise create a new, non-persistent one.
func (m *Manager) OpenTap(ctx context.Context, name string) (*os.File, error) {
	link, err := ownTap(ctx, name, "open")
	if err != nil {
		return nil, err
	}
	if link == nil {
		return nil, fmt.Errorf("tap %s: %w", name, api.ErrNotFound)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %s: open /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(tapFlags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETIFF: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}
