package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/agentinit"
)

// kernelIdentity is the IdentityOS of the running guest: syscalls and
// netlink, no programs run.
type kernelIdentity struct {
	sshd sshdReloader
}

func newKernelIdentity(root string) *kernelIdentity {
	return &kernelIdentity{sshd: sshdReloader{PidFile: filepath.Join(root, "run", "sshd.pid"), Proc: "/proc"}}
}

func (*kernelIdentity) SetClock(t time.Time) error {
	tv := unix.NsecToTimeval(t.UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("settimeofday: %w", err)
	}
	return nil
}

// AddEntropy credits seed to the input pool (RNDADDENTROPY), then forces the
// CRNG to reseed from it (RNDRESEEDCRNG): left alone it reseeds only every
// minute, and until then a restored guest and its siblings would draw the
// same getrandom(2) bytes as their parent.
func (*kernelIdentity) AddEntropy(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(seed))
	defer clear(info)
	binary.NativeEndian.PutUint32(info[0:], uint32(8*len(seed))) // bits credited
	binary.NativeEndian.PutUint32(info[4:], uint32(len(seed)))   // bytes
	copy(info[8:], seed)
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var addErr, reseedErr unix.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, addErr = unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0])))
		if addErr == 0 {
			_, _, reseedErr = unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDRESEEDCRNG, 0)
		}
	}); err != nil {
		return err
	}
	if addErr != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", addErr)
	}
	if reseedErr != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", reseedErr)
	}
	return nil
}

func (*kernelIdentity) SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	return nil
}

// SetMAC changes the address of the running link (virtio-net, veth and most
// drivers allow it live); a driver that refuses while up (EBUSY) gets the
// link down for the change and up again.
func (*kernelIdentity) SetMAC(ifname string, mac net.HardwareAddr) error {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifname, err)
	}
	if bytes.Equal(link.Attrs().HardwareAddr, mac) {
		return nil
	}
	err = netlink.LinkSetHardwareAddr(link, mac)
	if errors.Is(err, unix.EBUSY) {
		if derr := netlink.LinkSetDown(link); derr != nil {
			return fmt.Errorf("link %s down for the mac change: %w", ifname, derr)
		}
		err = netlink.LinkSetHardwareAddr(link, mac)
		if uerr := netlink.LinkSetUp(link); err == nil && uerr != nil {
			err = fmt.Errorf("link %s up after the mac change: %w", ifname, uerr)
		}
	}
	if err != nil {
		return fmt.Errorf("set %s on %s: %w", mac, ifname, err)
	}
	return nil
}

// SetAddress removes every other IPv4 address before adding addr: with
// promote_secondaries off, deleting an old primary would also take a new
// address of the same subnet with it.
func (*kernelIdentity) SetAddress(ifname string, addr netip.Prefix) error {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifname, err)
	}
	want := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(addr.Addr().AsSlice()), Mask: net.CIDRMask(addr.Bits(), 32)}}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", ifname, err)
	}
	for _, a := range addrs {
		if a.IPNet.String() == want.IPNet.String() {
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove %s from %s: %w", a.IPNet, ifname, err)
		}
	}
	if err := netlink.AddrReplace(link, want); err != nil {
		return fmt.Errorf("add %s to %s: %w", addr, ifname, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("link %s up: %w", ifname, err)
	}
	return nil
}

// SetDefaultRoute puts the default route via gw and removes other default
// routes of the link in the main table.
func (*kernelIdentity) SetDefaultRoute(ifname string, gw netip.Addr) error {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifname, err)
	}
	gwIP := net.IP(gw.AsSlice())
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Gw:        gwIP,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("default route via %s: %w", gw, err)
	}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: link.Attrs().Index, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", ifname, err)
	}
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && !r.Gw.Equal(gwIP) {
			if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("remove default route via %s: %w", r.Gw, err)
			}
		}
	}
	return nil
}

// FlushNeighbours deletes the link's learned neighbour entries (IPv4 and
// IPv6), as `ip neigh flush dev` does: permanent and no-ARP ones stay.
func (*kernelIdentity) FlushNeighbours(ifname string) error {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifname, err)
	}
	neighs, err := retryDump(func() ([]netlink.Neigh, error) { return netlink.NeighList(link.Attrs().Index, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", ifname, err)
	}
	for _, n := range neighs {
		if n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 || n.IP == nil {
			continue
		}
		if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove neighbour %s: %w", n.IP, err)
		}
	}
	return nil
}

// Announce broadcasts a gratuitous ARP, as a cold boot does: the host may
// hold a neighbour entry for the address with another guest's MAC.
func (*kernelIdentity) Announce(ifname string, addr netip.Addr) error {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifname, err)
	}
	return agentinit.SendGratuitousARP(link.Attrs().Index, link.Attrs().HardwareAddr, addr)
}

func (k *kernelIdentity) ReloadSSHD(ctx context.Context) error { return k.sshd.reload(ctx) }

// retryDump repeats a netlink dump the kernel interrupted (the list changed
// meanwhile; the result may be partial).
func retryDump[T any](list func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 4 {
			return v, err
		}
	}
}

// sshdReloader has sshd re-read its host keys the way `systemctl reload ssh`
// does on Debian (ExecReload=kill -HUP $MAINPID): on SIGHUP, sshd closes its
// listening sockets and re-executes itself under the same PID, reading its
// configuration and host keys afresh (and starting with a fresh RNG state,
// not the parent snapshot's). Connections already open keep their sshd. It
// is done when the process no longer listens on the sockets it had.
type sshdReloader struct {
	PidFile string // sshd's PidFile, /run/sshd.pid
	Proc    string // /proc
	// Signal sends SIGHUP; nil is kill(2).
	Signal  func(pid int) error
	Timeout time.Duration // for sshd to listen again; default 10 s
}

const maxPidFile = 64

func (r sshdReloader) reload(ctx context.Context) error {
	pid, err := r.pid()
	if err != nil || pid == 0 {
		return err
	}
	before, err := r.listening(pid)
	if errors.Is(err, os.ErrNotExist) {
		return nil // exited meanwhile: it reads the new key when it starts
	}
	if err != nil {
		return fmt.Errorf("sshd (pid %d) sockets: %w", pid, err)
	}
	signal := r.Signal
	if signal == nil {
		signal = func(pid int) error { return unix.Kill(pid, unix.SIGHUP) }
	}
	if err := signal(pid); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		return fmt.Errorf("SIGHUP to sshd (pid %d): %w", pid, err)
	}
	if len(before) == 0 {
		return nil // not listening itself (inherited sockets): nothing to wait for
	}
	timeout := r.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		now, err := r.listening(pid)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("sshd (pid %d) exited on SIGHUP: check sshd -t", pid)
		}
		// Done once the old listeners are closed: sshd took the signal and
		// re-executes. A client meanwhile is refused (never served with the
		// old key) until the new sshd listens; the host's SSH dial already
		// waits out a refusal, and the re-exec costs ~0.5 s under TCG that
		// no restore should wait for.
		if err == nil && !overlaps(before, now) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sshd (pid %d) still on its old sockets %s after SIGHUP: %w", pid, timeout, ctx.Err())
		case <-tick.C:
		}
	}
}

// pid is the running sshd's PID from the pid file; 0 when there is none,
// or the PID is not an sshd (a stale file).
func (r sshdReloader) pid() (int, error) {
	f, err := os.Open(r.PidFile)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("sshd pid file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPidFile+1))
	if err != nil {
		return 0, fmt.Errorf("sshd pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if len(b) > maxPidFile || err != nil || pid <= 1 {
		return 0, fmt.Errorf("sshd pid file %s: not a PID: %q", r.PidFile, printable(string(b), maxPidFile))
	}
	comm, err := os.ReadFile(filepath.Join(r.Proc, strconv.Itoa(pid), "comm"))
	if err != nil || strings.TrimSpace(string(comm)) != "sshd" {
		return 0, nil
	}
	return pid, nil
}

// listening is the set of inodes of the TCP sockets pid listens on; an error
// wrapping os.ErrNotExist when the process is gone.
func (r sshdReloader) listening(pid int) (map[uint64]bool, error) {
	dir := filepath.Join(r.Proc, strconv.Itoa(pid))
	ents, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return nil, err
	}
	own := map[uint64]bool{}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, "fd", e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if s, ok := strings.CutPrefix(l, "socket:["); ok {
			if ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil {
				own[ino] = true
			}
		}
	}
	set := map[uint64]bool{}
	for _, name := range []string{"tcp", "tcp6"} {
		f, err := os.Open(filepath.Join(dir, "net", name))
		if errors.Is(err, os.ErrNotExist) && name == "tcp6" {
			continue // no IPv6
		}
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			fl := strings.Fields(sc.Text())
			if len(fl) < 10 || fl[3] != "0A" { // TCP_LISTEN
				continue
			}
			if ino, err := strconv.ParseUint(fl[9], 10, 64); err == nil && own[ino] {
				set[ino] = true
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return set, nil
}

func overlaps(a, b map[uint64]bool) bool {
	for k := range a {
		if b[k] {
			return true
		}
	}
	return false
}
