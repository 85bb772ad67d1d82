// Package paths is banger's on-disk layout, documented once. Every file name
// banger writes is a constant or a method here.
//
//	<state>/banger.db                 SQLite state
//	<state>/bangerd.sock              daemon RPC socket (0600)
//	<state>/bangerd.log[.1-3]         daemon JSON log, rotated at 10 MiB
//	<state>/bangerd.pid               daemon pid
//	<state>/ssh/id_ed25519            banger's client key
//	<state>/ssh/known_hosts           pinned guest host keys (0600, dir 0700)
//	<state>/ssh/config                OpenSSH `Host *.vm` block (banger ssh-config)
//	<state>/kernels/<name>/           vmlinuz, vmlinux, initramfs.img, config, kernel.json
//	<state>/images/<name>/            rootfs.ext4, image.json
//	<state>/vms/<id>/                 root.ext4, work.ext4, seed.img, qmp.sock,
//	                                  console.log, vmm.pid, handles.json
//	<state>/vms/<id>/console.sock     QEMU's serial console (the daemon reads it)
//	<state>/vms/<id>/console.log[.1]  serial console, written by the daemon, capped
//	<state>/vms/<id>/vmm.log          the VMM's own stdout/stderr, capped
//	<state>/vms/<id>/workspace.json   per-file manifest of the last workspace sync
//	<state>/vms/<id>/mem              guest RAM of a running QEMU VM (file-backed, shared)
//	<state>/snapshots/<id>/           state (device state), mem, root.img, work.img
//	<state>/snapshots/.tmp-<id>/      a snapshot being made (removed at daemon start)
//	<state>/sync.json                 host files copied into every VM (see internal/workspace)
//	<state>/cache/                    downloads keyed by content
//	<state>/cache/npm/<pkg>/<ver>-<h>/  a file out of a verified npm tarball + meta.json (capabilities)
//	<state>/vms/<id>/opencode.password  the VM's opencode server password (0600)
package paths

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
)

const (
	DBFile         = "banger.db"
	SocketFile     = "bangerd.sock"
	LogFile        = "bangerd.log"
	PIDFile        = "bangerd.pid"
	SSHDir         = "ssh"
	ClientKeyFile  = "id_ed25519"
	KnownHostsFile = "known_hosts"

	KernelFile    = "vmlinuz"
	InitrdFile    = "initramfs.img"
	ModulesDir    = "modules"
	KernelMeta    = "kernel.json"
	KernelConfig  = "config" // the kernel's build configuration, when known (Debian's boot/config-*, kernel import --config)
	RootfsFile    = "rootfs.ext4"
	ImageMeta     = "image.json"
	VMRootFile    = "root.ext4"
	VMWorkFile    = "work.ext4"
	VMSeedFile    = "seed.img"
	VMAPISocket   = "qmp.sock"
	VMConsoleLog  = "console.log"
	VMConsoleSock = "console.sock"
	VMAgentSock   = "agent.sock" // the guest agent's channel (QEMU's virtio-serial port)
	VMMemFile     = "mem"        // guest RAM of a running QEMU VM (memory-backend-file, shared); removed at teardown
	VMMLog        = "vmm.log"
	VMPIDFile     = "vmm.pid"
	VMHandlesFile = "handles.json"
	VMHostKeyFile = "ssh_host_ed25519_key"

	VMWorkspaceManifest = "workspace.json"
	SyncConfigFile      = "sync.json"
)

// EnvStateDir overrides the default state root (flag --state-dir wins).
const EnvStateDir = "BANGER_STATE_DIR"

// Layout resolves file locations under one state root.
type Layout struct{ Root string }

// Default returns the state root from the environment or ~/.local/state/banger.
// Only cmd/* calls this; packages receive a Layout.
func Default() (Layout, error) {
	if d := os.Getenv(EnvStateDir); d != "" {
		abs, err := filepath.Abs(d)
		if err != nil {
			return Layout{}, err
		}
		return Layout{Root: abs}, nil
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return Layout{Root: filepath.Join(d, "banger")}, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return Layout{}, fmt.Errorf("resolve home: %w", err)
	}
	return Layout{Root: filepath.Join(home, ".local", "state", "banger")}, nil
}

func (l Layout) DB() string                { return filepath.Join(l.Root, DBFile) }
func (l Layout) Socket() string            { return filepath.Join(l.Root, SocketFile) }
func (l Layout) Log() string               { return filepath.Join(l.Root, LogFile) }
func (l Layout) PID() string               { return filepath.Join(l.Root, PIDFile) }
func (l Layout) SSHDir() string            { return filepath.Join(l.Root, SSHDir) }
func (l Layout) ClientKey() string         { return filepath.Join(l.Root, SSHDir, ClientKeyFile) }
func (l Layout) KnownHosts() string        { return filepath.Join(l.Root, SSHDir, KnownHostsFile) }
func (l Layout) KernelsDir() string        { return filepath.Join(l.Root, "kernels") }
func (l Layout) Kernel(name string) string { return filepath.Join(l.Root, "kernels", name) }
func (l Layout) ImagesDir() string         { return filepath.Join(l.Root, "images") }
func (l Layout) Image(name string) string  { return filepath.Join(l.Root, "images", name) }
func (l Layout) VMsDir() string            { return filepath.Join(l.Root, "vms") }
func (l Layout) VM(id string) string       { return filepath.Join(l.Root, "vms", id) }
func (l Layout) SnapshotsDir() string      { return filepath.Join(l.Root, "snapshots") }
func (l Layout) Snapshot(id string) string { return filepath.Join(l.Root, "snapshots", id) }
func (l Layout) Cache() string             { return filepath.Join(l.Root, "cache") }
func (l Layout) Tmp() string               { return filepath.Join(l.Root, "tmp") }
func (l Layout) SyncConfig() string        { return filepath.Join(l.Root, SyncConfigFile) }

// Ensure creates the root and its private subdirectories (0700). Nothing
// is followed through a symlink: each directory is opened O_NOFOLLOW and
// chmodded through its fd. The root must belong to the calling uid and not
// be writable by group or others (someone else could have planted files or
// links in it); a subdirectory must belong to the calling uid too.
func (l Layout) Ensure() error {
	if err := os.MkdirAll(l.Root, 0o700); err != nil {
		return err
	}
	root, err := openPrivateDir(unix.AT_FDCWD, l.Root, l.Root, true)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	for _, name := range []string{SSHDir, "kernels", "images", "vms", "snapshots", "cache", "tmp"} {
		p := filepath.Join(l.Root, name)
		if err := unix.Mkdirat(root, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%s: %w", p, err)
		}
		fd, err := openPrivateDir(root, name, p, false)
		if err != nil {
			return err
		}
		unix.Close(fd)
	}
	return nil
}

// openPrivateDir opens name (relative to at) as a directory without
// following a symlink, checks its owner (and, for the root, that group and
// others cannot write it) and sets 0700 through the fd.
func openPrivateDir(at int, name, shown string, isRoot bool) (int, error) {
	fd, err := unix.Openat(at, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return -1, fmt.Errorf("%s is a symlink or not a directory; banger uses no symlink here (give the real path): %w", shown, api.ErrInvalid)
	}
	if err != nil {
		return -1, fmt.Errorf("%s: %w", shown, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %w", shown, err)
	}
	euid := os.Geteuid()
	switch {
	case int(st.Uid) != euid:
		unix.Close(fd)
		return -1, fmt.Errorf("%s is owned by uid %d, not by this process's uid %d: %w", shown, st.Uid, euid, api.ErrInvalid)
	case isRoot && st.Mode&0o022 != 0:
		unix.Close(fd)
		return -1, fmt.Errorf("%s is writable by group or others (mode %#o); make it 0700: %w", shown, st.Mode&0o777, api.ErrInvalid)
	}
	if st.Mode&0o777 != 0o700 {
		if err := unix.Fchmod(fd, 0o700); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("%s: %w", shown, err)
		}
	}
	return fd, nil
}
