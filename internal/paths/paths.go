// Package paths is banger's on-disk layout, documented once. Every file name
// banger writes is a constant or a method here.
//
//	<state>/banger.db                 SQLite state
//	<state>/bangerd.sock              daemon RPC socket (0600)
//	<state>/bangerd.log               daemon JSON log
//	<state>/bangerd.pid               daemon pid
//	<state>/ssh/id_ed25519            banger's client key
//	<state>/ssh/known_hosts           pinned guest host keys (0600, dir 0700)
//	<state>/ssh/config                OpenSSH `Host *.vm` block (banger ssh-config)
//	<state>/kernels/<name>/           vmlinuz, initramfs.img, modules/, kernel.json
//	<state>/images/<name>/            rootfs.ext4, image.json
//	<state>/vms/<id>/                 root.ext4, work.ext4, seed.img, qmp.sock,
//	                                  console.log, vmm.pid, handles.json
//	<state>/vms/<id>/workspace.json   per-file manifest of the last workspace sync
//	<state>/sync.json                 host files copied into every VM (see internal/workspace)
//	<state>/cache/                    downloads keyed by content
package paths

import (
	"fmt"
	"os"
	"path/filepath"
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
	RootfsFile    = "rootfs.ext4"
	ImageMeta     = "image.json"
	VMRootFile    = "root.ext4"
	VMWorkFile    = "work.ext4"
	VMSeedFile    = "seed.img"
	VMAPISocket   = "qmp.sock"
	VMConsoleLog  = "console.log"
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
func (l Layout) Cache() string             { return filepath.Join(l.Root, "cache") }
func (l Layout) Tmp() string               { return filepath.Join(l.Root, "tmp") }
func (l Layout) SyncConfig() string        { return filepath.Join(l.Root, SyncConfigFile) }

// Ensure creates the root and its private subdirectories.
func (l Layout) Ensure() error {
	for _, d := range []string{l.Root, l.SSHDir(), l.KernelsDir(), l.ImagesDir(), l.VMsDir(), l.Cache(), l.Tmp()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return err
		}
	}
	return nil
}
