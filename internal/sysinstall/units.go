// Package sysinstall is `banger system install|status|restart|uninstall`:
// the two systemd units (the root helper and the owner's bangerd), the
// install metadata, the installed binaries and the owner's subordinate id
// ranges. Every path it touches is a constant below, resolved under
// Paths.Root ("/" in production, a temp dir in tests); every command goes
// through a system.Runner.
//
//	/usr/local/lib/banger/{banger,bangerd,banger-agent}  root-owned copies the units run
//	/usr/local/bin/banger                 symlink to the copy, made only when absent
//	/etc/systemd/system/banger-helper.service  the helper, root
//	/etc/systemd/system/bangerd.service   bangerd, as the owner
//	/etc/banger/install.json              Metadata (0644: the owner's status reads it)
//	/etc/subuid, /etc/subgid              a range for the owner, only when it had none
//	/run/banger/helper.sock               the helper's socket (RuntimeDirectory=banger)
//	<owner home>/.local/state/banger      the owner's state, bangerd.sock included
package sysinstall

import (
	"fmt"
	"strings"

	"github.com/banger-dev/banger/internal/paths"
)

// Installed layout, absolute paths on the host.
const (
	BinDir       = "/usr/local/lib/banger"
	LinkPath     = "/usr/local/bin/banger"
	UnitDir      = "/etc/systemd/system"
	EtcDir       = "/etc/banger"
	MetaFile     = "/etc/banger/install.json"
	RunDir       = "/run/banger"
	HelperSocket = RunDir + "/helper.sock"
	SubUIDFile   = "/etc/subuid"
	SubGIDFile   = "/etc/subgid"
	// SystemdRunDir exists only when systemd is PID 1 (sd_booted(3)).
	SystemdRunDir = "/run/systemd/system"

	HelperUnit = "banger-helper.service"
	DaemonUnit = "bangerd.service"
)

// Binaries are the programs install copies into BinDir.
var Binaries = []string{"banger", "bangerd", "banger-agent"}

// Units in start order (the helper first: bangerd asks it for the DNS port).
var Units = []string{HelperUnit, DaemonUnit}

// Owner is the user whose bangerd the install runs.
type Owner struct {
	Name string `json:"name"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
	Home string `json:"home"`
}

// quoteArg quotes one ExecStart= argument for systemd's parser when it
// needs it (spaces, quotes, backslashes, specifiers, variables).
func quoteArg(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\%$;") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `%`, `%%`, `$`, `$$`)
	return `"` + r.Replace(s) + `"`
}

// unitPath quotes a path for a path-list setting (ReadWritePaths=).
func unitPath(s string) string {
	if !strings.ContainsAny(s, " \t\"'\\%$;") {
		return s
	}
	return quoteArg(s)
}

// RenderHelperUnit is banger-helper.service. It runs as root with only the
// capabilities its verbs use:
//   - CAP_NET_ADMIN: bridge and TAP links (netlink), TUNSETIFF/TUNSETOWNER,
//     nftables, neighbour flush;
//   - CAP_NET_BIND_SERVICE: the gateway's port 53 it binds for bangerd;
//   - CAP_CHOWN: its socket is chowned to the owner.
//
// No CAP_DAC_OVERRIDE: everything it opens (/dev/net/tun, /proc/sys/net/...,
// /run/banger) is root's own. No CAP_NET_RAW: no packet sockets. The file
// system is read-only but for /run/banger (RuntimeDirectory) and
// /proc/sys/net (ip_forward; IPv6 off on the bridge and TAPs), which
// ProtectKernelTunables= would otherwise make read-only. Devices: only
// /dev/net/tun, named by its number (char 10:200): systemd resolves a path
// when the unit starts and drops it if the node is not there yet (tun not
// loaded), which would leave no device allowed. Address families: unix (its socket, D-Bus for resolvectl),
// netlink (links, nftables) and inet (the DNS sockets it binds and hands
// over).
func RenderHelperUnit(binDir string, o Owner) string {
	return fmt.Sprintf(`# Written by banger system install; removed by banger system uninstall.
[Unit]
Description=banger privileged helper (bridge, TAPs, firewall) for %[1]s
Documentation=https://github.com/banger-dev/banger#system-install

[Service]
Type=simple
ExecStart=%[2]s system helper --owner %[1]s --socket %[3]s
Restart=on-failure
RestartSec=2
RuntimeDirectory=banger
RuntimeDirectoryMode=0755
UMask=0077
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_CHOWN
AmbientCapabilities=
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ReadWritePaths=/proc/sys/net
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
DevicePolicy=closed
DeviceAllow=/dev/char/10:200 rw
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service

[Install]
WantedBy=multi-user.target
`, o.Name, quoteArg(binDir+"/banger"), quoteArg(HelperSocket))
}

// RenderDaemonUnit is bangerd.service, run as the owner on the owner's
// state dir, so the owner's CLI finds it at <state>/bangerd.sock and never
// starts a second one. Its hardening is what image builds leave possible:
// rootless mmdebstrap (unshare mode) runs the setuid newuidmap/newgidmap
// and mounts a fresh /proc in its user namespace, so
//   - NoNewPrivileges= stays off and the bounding set keeps CAP_SETUID and
//     CAP_SETGID (all newuidmap needs; nothing else can be gained through a
//     setuid binary);
//   - no seccomp-based setting (SystemCallFilter=, RestrictNamespaces=,
//     RestrictAddressFamilies=, LockPersonality=, ProtectKernelModules=, ...):
//     for a non-root unit each implies NoNewPrivileges=;
//   - no ProtectKernelTunables=/ProtectControlGroups=/ProtectProc=: their
//     over-mounts make /proc and /sys "not fully visible", and the kernel
//     then refuses proc/sysfs mounts in a user namespace;
//   - no MemoryDenyWriteExecute=: QEMU's TCG generates code.
//
// The VMMs confine themselves (QEMU -sandbox, no_new_privs). What remains:
// the whole file system read-only but the state dir, a private /tmp.
// KillMode=process: the VMMs are bangerd's children but outlive it, as
// they do without systemd (a restarted bangerd adopts them).
func RenderDaemonUnit(binDir string, o Owner, stateDir string) string {
	return fmt.Sprintf(`# Written by banger system install; removed by banger system uninstall.
[Unit]
Description=banger daemon for %[1]s (VM orchestration, runs as the owner)
Documentation=https://github.com/banger-dev/banger#system-install
Wants=%[5]s
After=%[5]s

[Service]
Type=simple
User=%[1]s
Group=%[2]d
ExecStart=%[3]s --state-dir %[4]s --log-file %[6]s --helper %[7]s
Restart=on-failure
RestartSec=2
KillMode=process
UMask=0077
CapabilityBoundingSet=CAP_SETUID CAP_SETGID
AmbientCapabilities=
ProtectSystem=strict
ReadWritePaths=%[8]s
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
`, o.Name, o.GID, quoteArg(binDir+"/bangerd"), quoteArg(stateDir), HelperUnit,
		quoteArg(paths.Layout{Root: stateDir}.Log()), quoteArg(HelperSocket), unitPath(stateDir))
}
