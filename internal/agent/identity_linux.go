package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// IdentityConfig places the identity operation.
type IdentityConfig struct {
	// Root is the directory holding etc/ and var/lib/dbus/; default "/".
	Root string
	// OS changes the kernel's state and reloads sshd; nil is the running
	// kernel (netlink, settimeofday(2), RNDADDENTROPY, sethostname(2), SIGHUP
	// to the sshd of Root/run/sshd.pid).
	OS IdentityOS
}

func (c IdentityConfig) root() string {
	if c.Root != "" {
		return c.Root
	}
	return "/"
}

func (c IdentityConfig) os() IdentityOS {
	if c.OS != nil {
		return c.OS
	}
	return newKernelIdentity(c.root())
}

// IdentityOS is what re-identifying a guest changes besides its files.
type IdentityOS interface {
	// SetClock steps the wall clock to t.
	SetClock(t time.Time) error
	// AddEntropy mixes seed into the kernel RNG, credited, and has the
	// CRNG reseed from it now.
	AddEntropy(seed []byte) error
	// SetMAC sets the interface's hardware address.
	SetMAC(ifname string, mac net.HardwareAddr) error
	// SetAddress makes addr the interface's only IPv4 address and the link up.
	SetAddress(ifname string, addr netip.Prefix) error
	// SetDefaultRoute makes gw the only IPv4 default gateway on the interface.
	SetDefaultRoute(ifname string, gw netip.Addr) error
	// FlushNeighbours drops the interface's learned neighbour entries.
	FlushNeighbours(ifname string) error
	// Announce sends a gratuitous ARP for addr from the interface's MAC.
	Announce(ifname string, addr netip.Addr) error
	// SetHostname sets the kernel's host name.
	SetHostname(name string) error
	// ReloadSSHD makes a running sshd read its host keys again and returns
	// once it listens again; no sshd running is no error.
	ReloadSSHD(ctx context.Context) error
}

// Guest files the identity operation writes, relative to the root.
const (
	etcDir          = "etc"
	sshDir          = "ssh" // in etc
	hostnameFile    = "hostname"
	hostsFile       = "hosts"
	machineIDFile   = "machine-id"
	hostKeyFile     = "ssh_host_ed25519_key"
	hostKeyPubFile  = "ssh_host_ed25519_key.pub"
	maxHostsFile    = 1 << 20
	hostnameLoopIP  = "127.0.1.1"
	etcMachineIDAbs = "/etc/machine-id"
)

var dbusDir = []string{"var", "lib", "dbus"}

// reidentify applies id: validated in full first, then clock, RNG, network,
// hostname, machine ID and SSH host key, in that order. It returns once all
// of it is done; an error names the step.
func (s *Server) reidentify(ctx context.Context, in *Identity) error {
	if in == nil {
		return fmt.Errorf("identity: %w: no identity in the request", ErrInvalidIdentity)
	}
	id, err := in.check()
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	s.identityMu.Lock()
	defer s.identityMu.Unlock()
	sys := s.Identity.os()
	// Directories and the current /etc/hosts are read before anything
	// changes, so a guest whose layout is refused is left as it was.
	f, err := prepareIdentityFiles(s.Identity.root(), id)
	if err != nil {
		return fmt.Errorf("identity files: %w", err)
	}
	defer f.close()
	steps := []struct {
		name string
		do   func() error
	}{
		{"clock", func() error { return sys.SetClock(id.Time) }},
		{"rng", func() error {
			err := sys.AddEntropy(id.Seed)
			clear(id.Seed)
			return err
		}},
		{"mac", func() error { return sys.SetMAC(id.Interface, id.mac) }},
		{"address", func() error { return sys.SetAddress(id.Interface, id.addr) }},
		{"route", func() error { return sys.SetDefaultRoute(id.Interface, id.gw) }},
		{"neighbours", func() error { return sys.FlushNeighbours(id.Interface) }},
		{"announce", func() error { return sys.Announce(id.Interface, id.addr.Addr()) }},
		{"hostname", func() error {
			if err := sys.SetHostname(id.Hostname); err != nil {
				return err
			}
			return writeFileAt(f.etc, hostnameFile, []byte(id.Hostname+"\n"), 0o644)
		}},
		{"hosts", func() error { return writeFileAt(f.etc, hostsFile, f.hosts, 0o644) }},
		{"machine-id", f.writeMachineID},
		{"ssh host key", f.writeHostKey},
		{"sshd", func() error { return sys.ReloadSSHD(ctx) }},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			return fmt.Errorf("identity %s: %w", st.name, err)
		}
	}
	orDiscard(s.Log).Info("agent: re-identified", "hostname", id.Hostname, "address", id.addr, "mac", id.mac)
	return nil
}

// identityFiles are the directories the identity operation writes in, opened
// without following a symlink, and the new contents.
type identityFiles struct {
	id     identity
	etc    int // etc
	ssh    int // etc/ssh; -1 when missing (created when written)
	dbus   int // var/lib/dbus; -1 when missing or not to be written
	hosts  []byte
	dbusID bool // var/lib/dbus/machine-id is to be rewritten
}

func prepareIdentityFiles(root string, id identity) (_ *identityFiles, err error) {
	f := &identityFiles{id: id, etc: -1, ssh: -1, dbus: -1}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	rootfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open root %s: %w", root, err)
	}
	defer unix.Close(rootfd)
	if f.etc, err = openDirNoFollow(rootfd, etcDir); err != nil {
		return nil, fmt.Errorf("%s: %w", etcDir, err)
	}
	f.ssh, err = openDirNoFollow(f.etc, sshDir)
	if errors.Is(err, unix.ENOENT) {
		f.ssh, err = -1, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", etcDir, sshDir, err)
	}
	old, err := readHosts(f.etc)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", etcDir, hostsFile, err)
	}
	f.hosts = rewriteHosts(old, id.Hostname)
	f.dbus, f.dbusID, err = dbusMachineID(rootfd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path.Join(dbusDir...), err)
	}
	return f, nil
}

func (f *identityFiles) close() {
	for _, fd := range []int{f.etc, f.ssh, f.dbus} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	f.etc, f.ssh, f.dbus = -1, -1, -1
}

func (f *identityFiles) writeMachineID() error {
	data := []byte(f.id.MachineID + "\n")
	if err := writeFileAt(f.etc, machineIDFile, data, 0o444); err != nil {
		return fmt.Errorf("%s/%s: %w", etcDir, machineIDFile, err)
	}
	if f.dbusID {
		if err := writeFileAt(f.dbus, machineIDFile, data, 0o444); err != nil {
			return fmt.Errorf("%s/%s: %w", path.Join(dbusDir...), machineIDFile, err)
		}
	}
	return nil
}

func (f *identityFiles) writeHostKey() error {
	if f.ssh < 0 {
		if err := unix.Mkdirat(f.etc, sshDir, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create %s/%s: %w", etcDir, sshDir, err)
		}
		fd, err := openDirNoFollow(f.etc, sshDir)
		if err != nil {
			return fmt.Errorf("%s/%s: %w", etcDir, sshDir, err)
		}
		f.ssh = fd
	}
	pub := f.id.HostKeyPub
	if len(pub) > 0 && pub[len(pub)-1] != '\n' {
		pub = append(pub[:len(pub):len(pub)], '\n')
	}
	// The private half first: a crash between the two leaves a key whose
	// public file is stale, which sshd ignores (it derives the public key).
	if err := writeFileAt(f.ssh, hostKeyFile, f.id.HostKey, 0o600); err != nil {
		return fmt.Errorf("%s: %w", hostKeyFile, err)
	}
	if err := writeFileAt(f.ssh, hostKeyPubFile, pub, 0o644); err != nil {
		return fmt.Errorf("%s: %w", hostKeyPubFile, err)
	}
	return nil
}

// openDirNoFollow opens the directory name in dirfd; a symlink there is an
// error, never followed.
func openDirNoFollow(dirfd int, name string) (int, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return -1, fmt.Errorf("a symlink or not a directory, not following it (%w)", err)
	}
	return fd, err
}

// readHosts reads etc/hosts; missing or a symlink (which is replaced, not
// followed) reads as empty.
func readHosts(etc int) ([]byte, error) {
	fd, err := unix.Openat(etc, hostsFile, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	file := os.NewFile(uintptr(fd), hostsFile)
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	b, err := io.ReadAll(io.LimitReader(file, maxHostsFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxHostsFile {
		return nil, fmt.Errorf("over %d bytes", maxHostsFile)
	}
	return b, nil
}

// rewriteHosts gives /etc/hosts one "127.0.1.1 name" line in place of any
// earlier ones, keeping every other line; an empty file becomes the one a
// cold boot writes.
func rewriteHosts(old []byte, name string) []byte {
	own := hostnameLoopIP + "\t" + name + "\n"
	if len(strings.TrimSpace(string(old))) == 0 {
		return []byte("127.0.0.1\tlocalhost\n" + own + "::1\tlocalhost ip6-localhost ip6-loopback\n")
	}
	var out []string
	at := -1 // where own goes: the first 127.0.1.1 line, else after 127.0.0.1
	after := -1
	for _, l := range strings.SplitAfter(string(old), "\n") {
		if l == "" {
			continue
		}
		if !strings.HasSuffix(l, "\n") {
			l += "\n"
		}
		switch f := strings.Fields(l); {
		case len(f) > 0 && f[0] == hostnameLoopIP:
			if at < 0 {
				at = len(out)
				out = append(out, own)
			}
			continue
		case len(f) > 0 && f[0] == "127.0.0.1" && after < 0:
			after = len(out) + 1
		}
		out = append(out, l)
	}
	if at < 0 {
		if after < 0 {
			after = len(out)
		}
		out = append(out[:after], append([]string{own}, out[after:]...)...)
	}
	return []byte(strings.Join(out, ""))
}

// dbusMachineID opens var/lib/dbus and says whether its machine-id is to be
// rewritten: a regular file is; a symlink to /etc/machine-id (Debian's
// layout) is not, any other symlink is replaced; a missing one stays missing.
// A var/lib/dbus reached through a symlink is refused.
func dbusMachineID(rootfd int) (fd int, write bool, err error) {
	fd, err = unix.Dup(rootfd)
	if err != nil {
		return -1, false, err
	}
	unix.CloseOnExec(fd)
	for _, d := range dbusDir {
		next, err := openDirNoFollow(fd, d)
		unix.Close(fd)
		if errors.Is(err, unix.ENOENT) {
			return -1, false, nil
		}
		if err != nil {
			return -1, false, err
		}
		fd = next
	}
	var st unix.Stat_t
	err = unix.Fstatat(fd, machineIDFile, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		unix.Close(fd)
		return -1, false, nil
	case err != nil:
		unix.Close(fd)
		return -1, false, err
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		buf := make([]byte, 4096)
		n, err := unix.Readlinkat(fd, machineIDFile, buf)
		if err == nil {
			target := string(buf[:n])
			if !path.IsAbs(target) {
				target = path.Join("/"+path.Join(dbusDir...), target)
			}
			if path.Clean(target) == etcMachineIDAbs {
				unix.Close(fd)
				return -1, false, nil
			}
		}
	}
	return fd, true, nil
}

// writeFileAt replaces name in dirfd with data: a new file beside it,
// renamed over it. A symlink at name is replaced, not followed. Where name is
// a mount point (rename gives EBUSY), it is rewritten in place instead.
// Nothing is fsynced: every file the identity writes is written again from
// the VM's seed disk at each cold boot, so a guest crash before writeback
// loses nothing, and a restore is not kept waiting for a dozen flushes.
func writeFileAt(dirfd int, name string, data []byte, mode uint32) error {
	var rb [8]byte
	_, _ = rand.Read(rb[:])
	tmp := "." + name + ".banger-" + hex.EncodeToString(rb[:])
	fd, err := unix.Openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	if err := fillFile(fd, tmp, data, mode); err != nil {
		_ = unix.Unlinkat(dirfd, tmp, 0)
		return err
	}
	err = unix.Renameat(dirfd, tmp, dirfd, name)
	if errors.Is(err, unix.EBUSY) {
		_ = unix.Unlinkat(dirfd, tmp, 0)
		return writeInPlace(dirfd, name, data)
	}
	if err != nil {
		_ = unix.Unlinkat(dirfd, tmp, 0)
		return fmt.Errorf("rename %s to %s: %w", tmp, name, err)
	}
	return nil
}

// fillFile writes data to the new file fd with exactly mode and closes it.
func fillFile(fd int, name string, data []byte, mode uint32) error {
	f := os.NewFile(uintptr(fd), name)
	_, err := f.Write(data)
	if err == nil {
		err = unix.Fchmod(fd, mode) // whatever the umask
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

func writeInPlace(dirfd int, name string, data []byte) error {
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("rewrite mount point %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("rewrite mount point %s: %w", name, err)
	}
	return nil
}
