package agentinit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/system"
)

// FirstBootPath is the init= of VMs whose image lacks systemd or sshd: a
// symlink to banger-agent that Customize installs; the agent picks its
// first-boot mode from that name.
const FirstBootPath = "/usr/local/bin/banger-firstboot"

// systemdPaths and sshdPaths are where an image keeps them (merged /usr or not).
var (
	systemdPaths = []string{"/lib/systemd/systemd", "/usr/lib/systemd/systemd"}
	sshdPaths    = []string{"/usr/sbin/sshd", "/sbin/sshd"}
)

// InstallPlan is how one family of distributions gets systemd and sshd.
type InstallPlan struct {
	Family   string     // what matched: "debian", "alpine", "fedora", "arch", "suse"
	Commands [][]string // run in order; each must exit 0
	Env      []string
}

// installPlans are the command tables. Only apt is exercised end to end; the
// others follow each distribution's documented non-interactive install.
var installPlans = map[string]InstallPlan{
	"debian": {Family: "debian", Env: []string{"DEBIAN_FRONTEND=noninteractive"}, Commands: [][]string{
		{"apt-get", "-q", "-o", "Acquire::Languages=none", "update"},
		{"apt-get", "-q", "-y", "--no-install-recommends", "-o", "Dpkg::Options::=--force-confold", "-o", "Dpkg::Options::=--force-unsafe-io", "install", "systemd-sysv", "openssh-server"},
	}},
	"fedora": {Family: "fedora", Commands: [][]string{
		{"dnf", "-y", "install", "systemd", "openssh-server"},
		{"systemctl", "enable", "sshd.service"},
	}},
	"arch": {Family: "arch", Commands: [][]string{
		{"pacman", "-Sy", "--noconfirm", "--needed", "systemd", "systemd-sysvcompat", "openssh"},
		{"systemctl", "enable", "sshd.service"},
	}},
	"suse": {Family: "suse", Commands: [][]string{
		{"zypper", "--non-interactive", "install", "systemd", "systemd-sysvinit", "openssh-server"},
		{"systemctl", "enable", "sshd.service"},
	}},
	// Alpine ships no systemd: the plan installs what exists there (OpenRC
	// and OpenSSH) and first boot then execs /sbin/init.
	"alpine": {Family: "alpine", Commands: [][]string{
		{"apk", "add", "--no-cache", "openrc", "openssh"},
		{"rc-update", "add", "sshd", "default"},
	}},
}

// familyOf maps os-release IDs onto a plan.
var familyOf = map[string]string{
	"debian": "debian", "ubuntu": "debian", "raspbian": "debian", "linuxmint": "debian",
	"fedora": "fedora", "rhel": "fedora", "centos": "fedora", "rocky": "fedora", "almalinux": "fedora", "amzn": "fedora",
	"arch": "arch", "archlinux": "arch", "manjaro": "arch",
	"suse": "suse", "opensuse": "suse", "opensuse-leap": "suse", "opensuse-tumbleweed": "suse", "sles": "suse",
	"alpine": "alpine",
}

// PlanFor picks the install plan from an os-release file: ID first, then
// each ID_LIKE word in order.
func PlanFor(osRelease string) (InstallPlan, error) {
	kv := ParseOSRelease(osRelease)
	ids := append([]string{kv["ID"]}, strings.Fields(kv["ID_LIKE"])...)
	for _, id := range ids {
		if fam, ok := familyOf[strings.ToLower(id)]; ok {
			return installPlans[fam], nil
		}
	}
	return InstallPlan{}, fmt.Errorf("no package manager known for ID=%q ID_LIKE=%q", kv["ID"], kv["ID_LIKE"])
}

// ParseOSRelease reads KEY=value lines, unquoting values.
func ParseOSRelease(s string) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		out[strings.TrimSpace(k)] = v
	}
	return out
}

// Streamer runs a command with the caller's stdio (system.Exec in the guest).
type Streamer interface {
	Stream(ctx context.Context, spec system.StreamSpec) (int, error)
}

// FirstBoot is init for images without an init system. It runs as PID 1
// after banger's initramfs switched to the image's root (so /proc, /sys, /dev
// are mounted and eth0 is configured from ip=): it mounts /run, execs
// systemd when the image has it and sshd, and otherwise installs both with
// the image's package manager first. It returns only on failure.
func FirstBoot(log *Logger, run Streamer, console io.Writer) error {
	if err := mountAPI(); err != nil {
		return err
	}
	_ = os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if init := firstExisting(systemdPaths); init != "" && firstExisting(sshdPaths) != "" {
		return execInit(log, init)
	}
	raw, err := os.ReadFile("/etc/os-release")
	if errors.Is(err, os.ErrNotExist) {
		raw, err = os.ReadFile("/usr/lib/os-release")
	}
	if err != nil {
		return fmt.Errorf("first boot: no os-release: %w", err)
	}
	plan, err := PlanFor(string(raw))
	if err != nil {
		return fmt.Errorf("first boot: %w", err)
	}
	log.Printf("first boot: installing systemd and sshd (%s)", plan.Family)
	if err := RunPlan(context.Background(), run, plan, console, log); err != nil {
		return err
	}
	if init := firstExisting(systemdPaths); init != "" {
		return execInit(log, init)
	}
	if plan.Family == "alpine" {
		return execInit(log, "/sbin/init")
	}
	return fmt.Errorf("first boot: systemd still missing after the install")
}

// RunPlan runs a plan's commands in order, their output on console.
func RunPlan(ctx context.Context, run Streamer, plan InstallPlan, console io.Writer, log *Logger) error {
	for _, c := range plan.Commands {
		log.Printf("first boot: %s", strings.Join(c, " "))
		code, err := run.Stream(ctx, system.StreamSpec{Name: c[0], Args: c[1:], Env: plan.Env, Stdout: console, Stderr: console})
		if err != nil {
			return fmt.Errorf("first boot: %s: %w", c[0], err)
		}
		if code != 0 {
			return fmt.Errorf("first boot: %s exited %d", strings.Join(c, " "), code)
		}
	}
	return nil
}

func mountAPI() error {
	for _, m := range []struct {
		src, dst, typ, data string
		flags               uintptr
	}{
		{"proc", "/proc", "proc", "", unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV},
		{"sysfs", "/sys", "sysfs", "", unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV},
		{"devtmpfs", "/dev", "devtmpfs", "", unix.MS_NOSUID},
		{"tmpfs", "/run", "tmpfs", "mode=0755", unix.MS_NOSUID | unix.MS_NODEV},
	} {
		if mounted(m.dst) {
			continue
		}
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dst, m.typ, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	return nil
}

// mounted reports whether dir is a mount point (its device differs from its parent's).
func mounted(dir string) bool {
	var st, pst unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(dir+"/..", &pst) != nil {
		return false
	}
	return st.Dev != pst.Dev
}

func firstExisting(paths []string) string {
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

func execInit(log *Logger, init string) error {
	log.Printf("first boot: exec %s", init)
	err := unix.Exec(init, []string{init}, os.Environ())
	return fmt.Errorf("exec %s: %w", init, err)
}
