package agentinit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Logger writes "banger-init:" progress lines with the time since boot.
type Logger struct {
	W     io.Writer
	Debug bool
}

func (l *Logger) Printf(format string, args ...any) {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	fmt.Fprintf(l.W, "banger-init: [%d.%03d] %s\n", ts.Sec, ts.Nsec/1e6, fmt.Sprintf(format, args...))
}

// Debugf prints only with banger.debug on the command line.
func (l *Logger) Debugf(format string, args ...any) {
	if l.Debug {
		l.Printf(format, args...)
	}
}

// Run is init's whole job. It returns only on failure; on success the
// process has become the root file system's init.
func Run(log *Logger) error {
	if err := mountEarly(); err != nil {
		return err
	}
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("read /proc/cmdline: %w", err)
	}
	cmd, err := ParseCmdline(string(raw))
	if err != nil {
		return fmt.Errorf("kernel command line: %w", err)
	}
	log.Debug = log.Debug || cmd.Debug
	log.Debugf("cmdline: %s", strings.TrimSpace(string(raw)))

	if err := loadModuleList(log); err != nil {
		// Keep going: the disk scan below names what is really missing.
		log.Printf("module errors: %v", err)
	}

	if cmd.Net != nil {
		if cmd.Net.Hostname != "" {
			_ = unix.Sethostname([]byte(cmd.Net.Hostname))
		}
		if err := ConfigureNet(cmd.Net, 3*time.Second); err != nil {
			log.Printf("network: %v (continuing without it)", err)
		} else {
			log.Printf("%s configured: %s gw %s", cmd.Net.Device, cmd.Net.Addr, cmd.Net.Gateway)
		}
	}

	disks, err := waitDisks(log, 5*time.Second)
	if err != nil {
		return err
	}
	log.Printf("disks: root=%s work=%s seed=%s", disks[DiskRoot], orNone(disks[DiskWork]), orNone(disks[DiskSeed]))

	if err := os.MkdirAll(NewRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(disks[DiskRoot], NewRoot, "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount root %s: %w", disks[DiskRoot], err)
	}
	// The work disk goes on before the seed is unpacked so seed files under
	// root/ (e.g. root/.ssh/authorized_keys) land where the guest sees them.
	if dev := disks[DiskWork]; dev != "" {
		target := filepath.Join(NewRoot, "root")
		if err := mkdirNoFollow(NewRoot, "root", 0o700); err != nil {
			return fmt.Errorf("work disk mount point: %w", err)
		}
		if err := unix.Mount(dev, target, "ext4", unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
			return fmt.Errorf("mount work %s: %w", dev, err)
		}
		log.Printf("work disk %s mounted at /root", dev)
	}
	if dev := disks[DiskSeed]; dev != "" {
		if err := unpackSeedDevice(log, dev); err != nil {
			return err
		}
	}
	return switchRoot(log, cmd.Init)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func mountEarly() error {
	for _, m := range []struct {
		src, dst, typ string
		flags         uintptr
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID}, // as systemd mounts it
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		err := unix.Mount(m.src, m.dst, m.typ, m.flags, "")
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	return nil
}

func loadModuleList(log *Logger) error {
	f, err := os.Open(ModuleList)
	if errors.Is(err, os.ErrNotExist) {
		log.Debugf("no %s: nothing to load", ModuleList)
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	list, err := ReadModuleList(f)
	if err != nil {
		return err
	}
	err = LoadModules(list, log.Debugf)
	log.Printf("loaded %d modules", len(list))
	return err
}

// waitDisks polls until the root disk shows up: drivers may still be probing.
func waitDisks(log *Logger, wait time.Duration) (Disks, error) {
	deadline := time.Now().Add(wait)
	for {
		disks, err := ScanDisks("/sys/block", "/dev")
		if disks[DiskRoot] != "" {
			if err != nil {
				log.Printf("disk scan: %v", err)
			}
			return disks, nil
		}
		if time.Now().After(deadline) {
			names, _ := filepath.Glob("/sys/block/*")
			return nil, fmt.Errorf("no ext4 disk labelled %q among %v (scan error: %v)", LabelRoot, names, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func unpackSeedDevice(log *Logger, dev string) error {
	f, err := os.Open(dev)
	if err != nil {
		return fmt.Errorf("open seed %s: %w", dev, err)
	}
	defer f.Close()
	res, err := UnpackSeed(f, NewRoot)
	for _, r := range res.Refused {
		log.Printf("seed: refused %s", r)
	}
	if err != nil {
		return fmt.Errorf("seed %s: %w", dev, err)
	}
	log.Printf("seed %s unpacked: %d files, %d dirs, %d refused", dev, res.Files, res.Dirs, len(res.Refused))
	return nil
}

// mkdirNoFollow makes dir/name unless it exists as a directory; a symlink
// there is refused rather than followed.
func mkdirNoFollow(dir, name string, perm uint32) error {
	var st unix.Stat_t
	err := unix.Lstat(filepath.Join(dir, name), &st)
	if err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("%s/%s exists and is not a directory", dir, name)
		}
		return nil
	}
	return unix.Mkdir(filepath.Join(dir, name), perm)
}

// switchRoot moves the API file systems and /newroot over /, frees the
// initramfs files and execs init inside the new root.
func switchRoot(log *Logger, init string) error {
	// Free the initramfs copy of the agent and modules (they stay in RAM otherwise).
	if ents, err := os.ReadDir(ModuleDir); err == nil {
		for _, e := range ents {
			_ = os.Remove(filepath.Join(ModuleDir, e.Name()))
		}
	}
	if os.Getpid() == 1 {
		_ = os.Remove("/init")
	}
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		if err := mkdirNoFollow(NewRoot, m[1:], 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m, NewRoot+m, "", unix.MS_MOVE, ""); err != nil {
			log.Printf("move %s: %v; unmounting it", m, err)
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
	}
	if err := unix.Chdir(NewRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", NewRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	log.Printf("switch_root done, exec %s", init)
	err := unix.Exec(init, []string{init}, os.Environ())
	return fmt.Errorf("exec %s: %w", init, err)
}
