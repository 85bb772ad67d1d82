package image

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// writeTree creates files ("content"), dirs (trailing "/") and symlinks ("-> target").
func writeTree(t *testing.T, root string, spec map[string]string) {
	t.Helper()
	keys := make([]string, 0, len(spec))
	for k := range spec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := spec[k]
		p := filepath.Join(root, k)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasSuffix(k, "/"):
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(v, "-> "):
			if err := os.Symlink(strings.TrimPrefix(v, "-> "), p); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// listTree renders the tree below the given subdirectories as text: one line
// per entry with its mode and symlink target or content size.
func listTree(t *testing.T, root string, subdirs ...string) string {
	t.Helper()
	var lines []string
	for _, sub := range subdirs {
		err := filepath.WalkDir(filepath.Join(root, sub), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			fi, _ := d.Info()
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				target, _ := os.Readlink(p)
				lines = append(lines, fmt.Sprintf("%s -> %s", rel, target))
			case fi.IsDir():
				lines = append(lines, fmt.Sprintf("%s/ %04o", rel, fi.Mode().Perm()))
			default:
				lines = append(lines, fmt.Sprintf("%s %04o %d", rel, fi.Mode().Perm(), fi.Size()))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return strings.Join(lines, "\n")
}

func fakeRootfs(t *testing.T, outside string) string {
	t.Helper()
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"lib":                                "-> usr/lib",
		"usr/lib/systemd/system/ssh.service": "[Service]\nExecStartPre=/usr/sbin/sshd -t\n",
		"usr/lib/systemd/system/console-getty.service":              "[Service]\n",
		"usr/lib/systemd/system/serial-getty@.service":              "[Service]\n",
		"usr/lib/systemd/system-generators/systemd-fstab-generator": "ELF",
		"usr/lib/systemd/system-generators/systemd-getty-generator": "ELF",
		"usr/lib/systemd/system-environment-generators/50-env":      "ELF",
		"etc/systemd/system/getty.target.wants/getty@tty1.service":  "-> /lib/systemd/system/getty@.service",
		"etc/systemd/system/multi-user.target.wants/ssh.service":    "-> /lib/systemd/system/ssh.service",
		"etc/systemd/system/timers.target.wants/apt-daily.timer":    "-> /lib/systemd/system/apt-daily.timer",
		"etc/ssh/sshd_config":              "Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\n",
		"etc/ssh/ssh_config":               "Host *\n",
		"etc/ssh/moduli":                   "moduli",
		"etc/ssh/ssh_host_rsa_key":         "RSA",
		"etc/ssh/ssh_host_rsa_key.pub":     "RSA.pub",
		"etc/ssh/ssh_host_ecdsa_key":       "ECDSA",
		"etc/ssh/ssh_host_ecdsa_key.pub":   "ECDSA.pub",
		"etc/ssh/ssh_host_ed25519_key":     "ED",
		"etc/ssh/ssh_host_ed25519_key.pub": "ED.pub",
		"etc/machine-id":                   "0123456789abcdef0123456789abcdef\n",
		"etc/hostname":                     "buildhost\n",
		"etc/resolv.conf":                  "nameserver 10.255.255.53\n",
		// Hostile: symlinks pointing out of the tree must be replaced, never written through.
		"etc/fstab":                 "-> " + filepath.Join(outside, "host-fstab"),
		"etc/hosts":                 "-> ../../../../../../../../" + filepath.Join(outside, "host-hosts"),
		"root/.bashrc":              "bashrc",
		"root/.ssh/authorized_keys": "stale",
	})
	return root
}

func TestCustomize(t *testing.T) {
	outside := t.TempDir()
	for _, f := range []string{"host-fstab", "host-hosts"} {
		if err := os.WriteFile(filepath.Join(outside, f), []byte("host file\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root := fakeRootfs(t, outside)
	agent := filepath.Join(t.TempDir(), "banger-agent")
	if err := os.WriteFile(agent, []byte("#!agent\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Customize(root, agent); err != nil {
		t.Fatal(err)
	}

	want := `etc/ssh/ 0755
etc/ssh/authorized_keys.d/ 0755
etc/ssh/moduli 0644 6
etc/ssh/ssh_config 0644 7
etc/ssh/sshd_config 0644 49
etc/ssh/sshd_config.d/ 0755
etc/ssh/sshd_config.d/banger.conf 0644 N
etc/systemd/ 0755
etc/systemd/system/ 0755
etc/systemd/system/apt-daily-upgrade.service -> /dev/null
etc/systemd/system/apt-daily-upgrade.timer -> /dev/null
etc/systemd/system/apt-daily.service -> /dev/null
etc/systemd/system/apt-daily.timer -> /dev/null
etc/systemd/system/banger-agent.service 0644 N
etc/systemd/system/dev-hugepages.mount -> /dev/null
etc/systemd/system/dev-mqueue.mount -> /dev/null
etc/systemd/system/dpkg-db-backup.service -> /dev/null
etc/systemd/system/dpkg-db-backup.timer -> /dev/null
etc/systemd/system/e2scrub_all.service -> /dev/null
etc/systemd/system/e2scrub_all.timer -> /dev/null
etc/systemd/system/e2scrub_reap.service -> /dev/null
etc/systemd/system/fstrim.service -> /dev/null
etc/systemd/system/fstrim.timer -> /dev/null
etc/systemd/system/getty-static.service -> /dev/null
etc/systemd/system/getty.target.wants/ 0755
etc/systemd/system/getty.target.wants/console-getty.service -> /usr/lib/systemd/system/console-getty.service
etc/systemd/system/getty.target.wants/getty@tty1.service -> /lib/systemd/system/getty@.service
etc/systemd/system/getty@tty1.service -> /dev/null
etc/systemd/system/kmod-static-nodes.service -> /dev/null
etc/systemd/system/ldconfig.service -> /dev/null
etc/systemd/system/man-db.service -> /dev/null
etc/systemd/system/man-db.timer -> /dev/null
etc/systemd/system/modprobe@.service -> /dev/null
etc/systemd/system/multi-user.target.wants/ 0755
etc/systemd/system/multi-user.target.wants/ssh.service -> /lib/systemd/system/ssh.service
etc/systemd/system/proc-sys-fs-binfmt_misc.automount -> /dev/null
etc/systemd/system/proc-sys-fs-binfmt_misc.mount -> /dev/null
etc/systemd/system/remote-fs-pre.target -> /dev/null
etc/systemd/system/remote-fs.target -> /dev/null
etc/systemd/system/serial-getty@ttyS0.service -> /dev/null
etc/systemd/system/ssh.service.d/ 0755
etc/systemd/system/ssh.service.d/banger.conf 0644 N
etc/systemd/system/sys-fs-fuse-connections.mount -> /dev/null
etc/systemd/system/sys-kernel-config.mount -> /dev/null
etc/systemd/system/sys-kernel-debug.mount -> /dev/null
etc/systemd/system/sys-kernel-tracing.mount -> /dev/null
etc/systemd/system/sysinit.target.wants/ 0755
etc/systemd/system/sysinit.target.wants/banger-agent.service -> /etc/systemd/system/banger-agent.service
etc/systemd/system/systemd-ask-password-console.path -> /dev/null
etc/systemd/system/systemd-ask-password-wall.path -> /dev/null
etc/systemd/system/systemd-binfmt.service -> /dev/null
etc/systemd/system/systemd-firstboot.service -> /dev/null
etc/systemd/system/systemd-hwdb-update.service -> /dev/null
etc/systemd/system/systemd-journal-catalog-update.service -> /dev/null
etc/systemd/system/systemd-journal-flush.service -> /dev/null
etc/systemd/system/systemd-machine-id-commit.service -> /dev/null
etc/systemd/system/systemd-modules-load.service -> /dev/null
etc/systemd/system/systemd-networkd-wait-online.service -> /dev/null
etc/systemd/system/systemd-pstore.service -> /dev/null
etc/systemd/system/systemd-random-seed.service -> /dev/null
etc/systemd/system/systemd-remount-fs.service -> /dev/null
etc/systemd/system/systemd-sysctl.service -> /dev/null
etc/systemd/system/systemd-sysusers.service -> /dev/null
etc/systemd/system/systemd-timesyncd.service -> /dev/null
etc/systemd/system/systemd-tmpfiles-clean.timer -> /dev/null
etc/systemd/system/systemd-tmpfiles-setup-dev.service -> /dev/null
etc/systemd/system/systemd-update-done.service -> /dev/null
etc/systemd/system/systemd-update-utmp-runlevel.service -> /dev/null
etc/systemd/system/systemd-update-utmp.service -> /dev/null
etc/systemd/system/timers.target.wants/ 0755
etc/systemd/system/timers.target.wants/apt-daily.timer -> /lib/systemd/system/apt-daily.timer
etc/systemd/system-environment-generators/ 0755
etc/systemd/system-environment-generators/50-env -> /dev/null
etc/systemd/system-generators/ 0755
etc/systemd/system-generators/systemd-fstab-generator -> /dev/null
etc/systemd/system-generators/systemd-getty-generator -> /dev/null
root/ 0700
usr/local/bin/banger-agent 0755 8`
	got := listTree(t, root, "etc/ssh", "etc/systemd", "root", "usr/local/bin/banger-agent")
	// The drop-ins' sizes are not pinned; their text is checked below.
	normalize := func(s string) string { return confSize.ReplaceAllString(s, "$1 N") }
	if normalize(got) != want {
		t.Errorf("tree:\n%s\n\nwant:\n%s", normalize(got), want)
	}

	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, line := range []string{"UsePAM no", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
		"HostKey /etc/ssh/ssh_host_ed25519_key", "AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys.d/%u", "UseDNS no"} {
		if !strings.Contains(read("etc/ssh/sshd_config.d/banger.conf"), "\n"+line+"\n") {
			t.Errorf("sshd drop-in lacks %q", line)
		}
	}
	unit := read("etc/systemd/system/ssh.service.d/banger.conf")
	for _, line := range []string{"DefaultDependencies=no", "After=systemd-journald.socket", "Before=shutdown.target", "ExecStartPre="} {
		if !strings.Contains(unit, "\n"+line+"\n") {
			t.Errorf("ssh.service drop-in lacks %q", line)
		}
	}
	if s := read("etc/machine-id"); s != "" {
		t.Errorf("machine-id %q, want empty", s)
	}
	for _, f := range []string{"etc/fstab", "etc/resolv.conf"} {
		for _, l := range strings.Split(read(f), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				t.Errorf("%s has an entry: %q", f, l)
			}
		}
	}
	if s := read("etc/hostname"); s != "banger\n" {
		t.Errorf("hostname %q", s)
	}
	for _, f := range []string{"etc/fstab", "etc/hosts"} {
		if fi, err := os.Lstat(filepath.Join(root, f)); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("%s is not a regular file: %v", f, err)
		}
	}
	for _, f := range []string{"host-fstab", "host-hosts"} {
		if b, _ := os.ReadFile(filepath.Join(outside, f)); string(b) != "host file\n" {
			t.Errorf("Customize wrote through a symlink to %s: %q", f, b)
		}
	}

	// Idempotent: a second run yields the same tree.
	before := listTree(t, root, ".")
	if err := Customize(root, agent); err != nil {
		t.Fatal(err)
	}
	if after := listTree(t, root, "."); after != before {
		t.Errorf("second Customize changed the tree:\n%s\n---\n%s", before, after)
	}
}

var confSize = regexp.MustCompile(`(banger\.conf 0644|banger-agent\.service 0644) \d+`)

func TestCustomizeAddsInclude(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{"etc/ssh/sshd_config": "UsePAM yes\n"})
	if err := Customize(root, ""); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(root, "etc/ssh/sshd_config"))
	if string(b) != "Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\n" {
		t.Fatalf("sshd_config:\n%s", b)
	}
	// Adding the Include must not skip the ssh.service drop-in.
	if _, err := os.Stat(filepath.Join(root, sshServiceDrop)); err != nil {
		t.Fatalf("ssh.service drop-in missing after adding the Include: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(root, AgentGuestPath)); !os.IsNotExist(err) {
		t.Fatalf("agent installed without an agent path: %v", err)
	}
}

func TestCustomizeErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o644)
	if err := Customize(file, ""); err == nil {
		t.Error("customize of a file succeeded")
	}
	if err := Customize(filepath.Join(t.TempDir(), "missing"), ""); err == nil {
		t.Error("customize of a missing dir succeeded")
	}
	if err := Customize(t.TempDir(), filepath.Join(t.TempDir(), "no-agent")); err == nil {
		t.Error("customize with a missing agent succeeded")
	}
	if err := Customize(t.TempDir(), t.TempDir()); err == nil {
		t.Error("customize with a directory as agent succeeded")
	}
	// A directory where a file must go is an error, not something to delete.
	root := t.TempDir()
	writeTree(t, root, map[string]string{"etc/fstab/": ""})
	if err := Customize(root, ""); err == nil {
		t.Error("customize over a directory etc/fstab succeeded")
	}
}

func TestCustomizeSSHNoRexec(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  bool
	}{
		{"no sshd", map[string]string{}, false},
		{"openssh 9.2", map[string]string{"usr/sbin/sshd": "ELF"}, true},
		{"openssh 9.8+", map[string]string{"usr/sbin/sshd": "ELF", "usr/lib/openssh/sshd-session": "ELF"}, false},
		{"openssh 9.8+ libexec", map[string]string{"usr/sbin/sshd": "ELF", "usr/libexec/openssh/sshd-session": "ELF"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, tc.files)
			if err := Customize(root, ""); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(root, sshServiceDrop))
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Contains(string(b), "\nExecStart=\nExecStart=/usr/sbin/sshd -D -r $SSHD_OPTS\n")
			if got != tc.want {
				t.Errorf("-r override: %v, want %v:\n%s", got, tc.want, b)
			}
		})
	}
}
