package image

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
)

// AgentGuestPath is where Customize installs banger-agent in the guest.
const AgentGuestPath = "usr/local/bin/banger-agent"

// FirstBootGuestPath is a symlink to the agent; booted as init= it runs the
// agent's first-boot mode (agentinit.FirstBootPath).
const FirstBootGuestPath = "usr/local/bin/banger-firstboot"

// Files Customize writes, relative to the root of the tree.
const (
	sshdDropIn      = "etc/ssh/sshd_config.d/banger.conf"
	sshServiceDrop  = "etc/systemd/system/ssh.service.d/banger.conf"
	authorizedKeysD = "etc/ssh/authorized_keys.d"
	systemdEtc      = "etc/systemd/system"
)

// sshdConfig: sshd reads the first value of each keyword, and Debian's
// sshd_config includes sshd_config.d/*.conf at its top, so these win.
// The only host key is the per-VM one from the seed disk; no PAM saves ~0.3 s
// per connection under TCG; no DNS lookups of clients.
const sshdConfig = `# Written by banger. The host key and /etc/ssh/authorized_keys.d/root come
# from the per-VM seed disk, unpacked by /init before systemd starts.
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys.d/%u
UseDNS no
`

// sshServiceConfig starts sshd as soon as journald can take its logs instead of
// after sysinit/basic: /init has already mounted the disks, configured eth0 and
// unpacked the host key. Conflicts/Before shutdown.target restore the ordering
// that DefaultDependencies=no drops, so poweroff stops sshd cleanly. The
// "sshd -t" pre-check is one more slow exec under TCG; sshd checks again anyway.
const sshServiceConfig = `# Written by banger: start sshd early.
[Unit]
DefaultDependencies=no
After=systemd-journald.socket
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStartPre=
`

// sshNoRexec makes sshd serve each connection in a fork instead of re-exec'ing
// itself: one slow exec and dynamic link less per connection under TCG
// (~0.4 s off the first one). Only for an OpenSSH at /usr/sbin/sshd that
// still has -r, i.e. one without the sshd-session helper of 9.8+.
const sshNoRexec = `ExecStart=
ExecStart=/usr/sbin/sshd -D -r $SSHD_OPTS
`

// AgentUnit runs banger-agent's host channel (virtio-serial or vsock).
const AgentUnit = "banger-agent.service"

// agentUnit starts the agent as early as sshd (DefaultDependencies=no: /init
// mounted everything) and restarts it whatever way it dies, without the
// start limit: the daemon falls back to SSH only while it is down. A
// restart kills the agent alone (KillMode=process), not the sessions it
// started.
const agentUnit = `# Written by banger: the guest agent's channel to the host.
[Unit]
Description=banger guest agent
DefaultDependencies=no
After=systemd-journald.socket
Conflicts=shutdown.target
Before=shutdown.target
StartLimitIntervalSec=0

[Service]
ExecStart=/usr/local/bin/banger-agent serve
Restart=always
RestartSec=200ms
# Only the agent itself: the supervisors of "vm session" sessions (and their
# commands) must outlive an agent restart.
KillMode=process
`

const fstab = `# Written by banger. There is no udev in the guest: /init mounts the root file
# system (rw) and the work disk at /root before systemd starts, so nothing is
# listed here and systemd waits on no device unit.
`

const resolvConf = `# Written by banger. The per-VM seed disk provides the real resolver
# configuration; the build host's file must not leak into guests.
`

const hosts = `127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
`

// maskedUnits are slow or pointless in a banger guest: no udev, no real clock
// to sync, no periodic maintenance in a sandbox, no interactive first boot,
// no pseudo file systems nobody uses. Each costs an exec or a wait under TCG.
var maskedUnits = []string{
	"serial-getty@ttyS0.service", // waits 90 s for dev-ttyS0.device without udev
	"getty@tty1.service",
	"getty-static.service", // Debian: gettys on tty2-6 when logind is absent
	"systemd-timesyncd.service",
	"apt-daily.timer", "apt-daily.service",
	"apt-daily-upgrade.timer", "apt-daily-upgrade.service",
	"dpkg-db-backup.timer", "dpkg-db-backup.service",
	"man-db.timer", "man-db.service",
	"e2scrub_all.timer", "e2scrub_all.service", "e2scrub_reap.service",
	"fstrim.timer", "fstrim.service",
	"systemd-tmpfiles-clean.timer",
	"systemd-networkd-wait-online.service",
	"systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
	"remote-fs.target", "remote-fs-pre.target",
	"systemd-journal-flush.service", // the journal stays in /run: fine for sandboxes
	"systemd-remount-fs.service",    // /init mounted the root rw already
	"systemd-firstboot.service",     // would prompt on the console
	"systemd-machine-id-commit.service",
	"systemd-pstore.service",
	"systemd-hwdb-update.service", "systemd-journal-catalog-update.service",
	"ldconfig.service", "systemd-sysusers.service", "systemd-update-done.service",
	"systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
	"sys-kernel-config.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
	"sys-fs-fuse-connections.mount", "dev-hugepages.mount", "dev-mqueue.mount",
	"systemd-ask-password-console.path", "systemd-ask-password-wall.path",
	// The initramfs loads every module the guest needs; the root has none.
	"modprobe@.service", "systemd-modules-load.service", "kmod-static-nodes.service",
	// Each of these runs beside sshd at boot and costs 0.5-1 s of guest CPU
	// under TCG: devtmpfs already has the device nodes; the kernel seeds its
	// own RNG; the sysctl defaults only matter to unprivileged users.
	"systemd-tmpfiles-setup-dev.service", "systemd-random-seed.service", "systemd-sysctl.service",
}

// generatorDirs hold programs systemd execs at every boot and daemon-reload;
// each is a slow exec under TCG and none is useful here (fstab is empty,
// gettys are configured statically, there are no SysV scripts).
var generatorDirs = []struct{ src, mask string }{
	{"usr/lib/systemd/system-generators", "etc/systemd/system-generators"},
	{"lib/systemd/system-generators", "etc/systemd/system-generators"},
	{"usr/lib/systemd/system-environment-generators", "etc/systemd/system-environment-generators"},
	{"lib/systemd/system-environment-generators", "etc/systemd/system-environment-generators"},
}

// Customize prepares a root file system tree for banger: fast boot under TCG
// and identity from the per-VM seed disk. It removes every SSH host key,
// configures sshd and its unit, swaps the gettys for console-getty, masks
// slow units and all generators, empties machine-id, fstab and /root, and
// installs the agent from agentPath (skipped when empty). It only touches
// files inside dir (symlinks in the tree are never followed out of it), and
// running it twice gives the same tree.
func Customize(dir string, agentPath string) error {
	return customize(dir, agentPath, nil)
}

// customize is Customize keeping owners (the build's side table) true: what
// it removes or replaces is forgotten (new files are root's), what it chmods
// gets that mode.
func customize(dir, agentPath string, owners *Owners) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("customize: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("customize %s: not a directory", dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("customize: %w", err)
	}
	defer root.Close()
	c := customizer{root: root, owners: owners}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"ssh", c.ssh},
		{"units", c.units},
		{"generators", c.generators},
		{"identity", c.identity},
		{"root home", c.rootHome},
		{"agent", func() error { return c.agent(agentPath) }},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return fmt.Errorf("customize %s: %s: %w", dir, s.name, err)
		}
	}
	return nil
}

type customizer struct {
	root   *os.Root
	owners *Owners
}

// maxSSHDConfigBytes bounds the image's sshd_config, read to add an Include.
const maxSSHDConfigBytes = 1 << 20

func (c customizer) ssh() error {
	ents, err := c.readDir("etc/ssh")
	if err != nil {
		return err
	}
	// Keys generated at package install would be shared by every VM of the image.
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ssh_host_") && (strings.HasSuffix(e.Name(), "_key") || strings.HasSuffix(e.Name(), "_key.pub")) {
			if err := c.root.Remove(path.Join("etc/ssh", e.Name())); err != nil {
				return err
			}
			c.owners.forget(path.Join("etc/ssh", e.Name()))
		}
	}
	if err := c.root.MkdirAll(authorizedKeysD, 0o755); err != nil {
		return err
	}
	if err := c.root.Chmod(authorizedKeysD, 0o755); err != nil {
		return err
	}
	c.owners.setMode(authorizedKeysD, 0o755)
	if err := c.writeFile(sshdDropIn, []byte(sshdConfig), 0o644); err != nil {
		return err
	}
	// A config without the Include would ignore the drop-in: add it at the top.
	main, err := readImageFile(c.root, "etc/ssh/sshd_config", maxSSHDConfigBytes)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case !bytes.Contains(main, []byte("sshd_config.d/")):
		if err := c.writeFile("etc/ssh/sshd_config", append([]byte("Include /etc/ssh/sshd_config.d/*.conf\n"), main...), 0o644); err != nil {
			return err
		}
	}
	unit := sshServiceConfig
	if c.exists("usr/sbin/sshd") && !c.exists("usr/lib/openssh/sshd-session") && !c.exists("usr/libexec/openssh/sshd-session") && !c.exists("usr/libexec/sshd-session") {
		unit += sshNoRexec
	}
	return c.writeFile(sshServiceDrop, []byte(unit), 0o644)
}

// exists reports whether name is in the tree (a dangling symlink counts).
func (c customizer) exists(name string) bool {
	_, err := c.root.Lstat(name)
	return err == nil
}

func (c customizer) units() error {
	for _, u := range maskedUnits {
		if err := c.symlink("/dev/null", path.Join(systemdEtc, u)); err != nil {
			return err
		}
	}
	// console-getty on /dev/console (ttyS0 via console=) needs no device unit.
	for _, d := range []string{"usr/lib/systemd/system", "lib/systemd/system"} {
		if _, err := c.root.Stat(path.Join(d, "console-getty.service")); err == nil {
			return c.symlink("/"+d+"/console-getty.service", path.Join(systemdEtc, "getty.target.wants/console-getty.service"))
		}
	}
	return nil
}

func (c customizer) generators() error {
	masked := map[string]bool{}
	for _, g := range generatorDirs {
		ents, err := c.readDir(g.src)
		if err != nil {
			return err
		}
		for _, e := range ents {
			key := g.mask + "/" + e.Name()
			if masked[key] {
				continue // lib -> usr/lib lists the same directory twice
			}
			masked[key] = true
			if err := c.symlink("/dev/null", key); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c customizer) identity() error {
	// Empty, not absent: the seed fills it before systemd starts, and an image
	// must never carry an id that all its VMs would share.
	if err := c.writeFile("etc/machine-id", nil, 0o444); err != nil {
		return err
	}
	if fi, err := c.root.Lstat("var/lib/dbus/machine-id"); err == nil && fi.Mode().IsRegular() {
		if err := c.root.Remove("var/lib/dbus/machine-id"); err != nil {
			return err
		}
		c.owners.forget("var/lib/dbus/machine-id")
	}
	// mmdebstrap copies these from the build host; the seed provides the real ones.
	if err := c.writeFile("etc/hostname", []byte("banger\n"), 0o644); err != nil {
		return err
	}
	if err := c.writeFile("etc/hosts", []byte(hosts), 0o644); err != nil {
		return err
	}
	if err := c.writeFile("etc/resolv.conf", []byte(resolvConf), 0o644); err != nil {
		return err
	}
	return c.writeFile("etc/fstab", []byte(fstab), 0o644)
}

// rootHome leaves /root as an empty mount point for the work disk: anything
// in it would be hidden under the mount anyway (dotfiles live in /etc/skel).
func (c customizer) rootHome() error {
	if fi, err := c.root.Lstat("root"); err == nil && !fi.IsDir() {
		if err := c.root.Remove("root"); err != nil {
			return err
		}
		c.owners.forget("root")
	}
	if err := c.root.MkdirAll("root", 0o700); err != nil {
		return err
	}
	if err := c.root.Chmod("root", 0o700); err != nil {
		return err
	}
	c.owners.setMode("root", 0o700)
	ents, err := c.readDir("root")
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := c.root.RemoveAll(path.Join("root", e.Name())); err != nil {
			return err
		}
		c.owners.forget(path.Join("root", e.Name()))
	}
	return nil
}

func (c customizer) agent(agentPath string) error {
	if agentPath == "" {
		return nil
	}
	in, err := os.Open(agentPath)
	if err != nil {
		return err
	}
	defer in.Close()
	if st, err := in.Stat(); err != nil {
		return err
	} else if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", agentPath)
	}
	if err := c.prepare(AgentGuestPath); err != nil {
		return err
	}
	out, err := c.root.OpenFile(AgentGuestPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := c.root.Chmod(AgentGuestPath, 0o755); err != nil {
		return err
	}
	// The init= of images without systemd: the agent's first-boot mode.
	if err := c.symlink(path.Base(AgentGuestPath), FirstBootGuestPath); err != nil {
		return err
	}
	if err := c.writeFile(path.Join(systemdEtc, AgentUnit), []byte(agentUnit), 0o644); err != nil {
		return err
	}
	return c.symlink("/"+path.Join(systemdEtc, AgentUnit), path.Join(systemdEtc, "sysinit.target.wants", AgentUnit))
}

// readDir lists a directory of the tree; a missing one is empty.
func (c customizer) readDir(name string) ([]fs.DirEntry, error) {
	f, err := c.root.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ents, err := f.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	return ents, nil
}

// prepare creates name's parent and removes whatever is at name, so a new
// file or symlink is created there rather than written through an old symlink.
func (c customizer) prepare(name string) error {
	if err := c.root.MkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	fi, err := c.root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.IsDir():
		return fmt.Errorf("%s is a directory", name)
	}
	c.owners.forget(name)
	return c.root.Remove(name)
}

func (c customizer) writeFile(name string, data []byte, mode os.FileMode) error {
	if err := c.prepare(name); err != nil {
		return err
	}
	if err := c.root.WriteFile(name, data, mode); err != nil {
		return err
	}
	return c.root.Chmod(name, mode) // undo the umask
}

func (c customizer) symlink(target, name string) error {
	if err := c.prepare(name); err != nil {
		return err
	}
	return c.root.Symlink(target, name)
}
