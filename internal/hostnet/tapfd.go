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
	link, err := m.ownTap(ctx, name, "open")
	if err != nil {
		return nil, err
	}
	if link == nil {
		return nil, fmt.Errorf("tap %s: %w", name, api.ErrNotFound)
	}
	return attachTap(name)
}

// attachTap opens a queue of the persistent TAP name. TUNSETIFF attaches by
// name and, as root, creates a fresh non-persistent TAP when the name is
// gone (a delete racing the lookup): the flags read back tell, and such a
// device is closed (which removes it) and reported as ErrNotFound.
func attachTap(name string) (*os.File, error) {
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
	got, err := unix.NewIfreq(name)
	if err == nil {
		err = unix.IoctlIfreq(fd, unix.TUNGETIFF, got)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNGETIFF: %w", name, err)
	}
	if f := got.Uint16(); f&unix.IFF_PERSIST == 0 || f&(unix.IFF_TAP|unix.IFF_TUN) != unix.IFF_TAP {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: not a persistent tap (gone before attaching): %w", name, api.ErrNotFound)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}
