package firecracker

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/banger-dev/banger/internal/vmm"
	"github.com/banger-dev/banger/internal/vmm/cgroup"
)

// Inside a jail, Firecracker sees only its chroot: the files the privileged
// side linked in and the run directory where it makes its sockets.
const (
	JailRunDir     = "/run"
	JailAPISocket  = JailRunDir + "/" + APISocket
	JailVsock      = JailRunDir + "/" + VsockSocket
	JailKernel     = "/vmlinux"
	JailInitrd     = "/initrd.img"
	JailConsoleLog = "console.log" // beside root/, outside the chroot
)

// Jail is one jailer invocation. The jailer (root) makes
// <ChrootBase>/<base name of Firecracker>/<ID>/root, creates /dev/kvm and
// /dev/net/tun there owned by UID/GID, joins NetNS when set, chroots, drops
// to UID/GID and execs Firecracker, which installs its own seccomp filters:
// banger never passes --no-seccomp or --seccomp-filter.
type Jail struct {
	Jailer      string // absolute path, from the privileged side's configuration
	Firecracker string // absolute path; the jailer wants "firecracker" in its name
	ChrootBase  string // absolute, root-owned
	ID          string
	UID, GID    int
	NetNS       string // optional: path of a network namespace to join
	// CgroupV2, when set, has the jailer put Firecracker in a cgroup v2
	// group with memory.max and cpu.max for MemoryMiB and VCPU.
	CgroupV2  bool
	MemoryMiB int
	VCPU      int
}

// Dir is the jail's directory: root/ and the console log.
func (j Jail) Dir() string {
	return filepath.Join(j.ChrootBase, filepath.Base(j.Firecracker), j.ID)
}

// Root is the chroot.
func (j Jail) Root() string { return filepath.Join(j.Dir(), "root") }

// HostPath is where path inside the chroot is on the host.
func (j Jail) HostPath(inJail string) string { return filepath.Join(j.Root(), inJail) }

// Args is the jailer's argv after its path: jailer options, then "--" and
// Firecracker's own arguments.
func (j Jail) Args() []string {
	a := []string{
		"--id", j.ID,
		"--exec-file", j.Firecracker,
		"--uid", strconv.Itoa(j.UID),
		"--gid", strconv.Itoa(j.GID),
		"--chroot-base-dir", j.ChrootBase,
	}
	if j.NetNS != "" {
		a = append(a, "--netns", j.NetNS)
	}
	if j.CgroupV2 {
		a = append(a, "--cgroup-version", "2",
			"--cgroup", "memory.max="+strconv.FormatInt(cgroup.MemoryMax(j.MemoryMiB), 10),
			"--cgroup", "cpu.max="+cgroup.CPUMax(j.VCPU))
	}
	return append(a, "--", "--api-sock", JailAPISocket)
}

// Check refuses a jail the jailer would refuse or banger never makes.
func (j Jail) Check() error {
	for what, p := range map[string]string{"jailer": j.Jailer, "firecracker": j.Firecracker, "chroot base": j.ChrootBase} {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return invalid("%s path %q: want a clean absolute path", what, p)
		}
	}
	if !strings.Contains(filepath.Base(j.Firecracker), "firecracker") {
		return invalid("firecracker binary %q: the jailer wants \"firecracker\" in its name", j.Firecracker)
	}
	if j.UID <= 0 || j.GID <= 0 {
		return invalid("jail uid/gid %d/%d: never root", j.UID, j.GID)
	}
	if j.ID == "" || len(j.ID) > 64 || strings.Trim(j.ID, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
		return invalid("jail id %q: want 1-64 letters, digits and hyphens", j.ID)
	}
	if n := len(j.HostPath(JailAPISocket)); n > maxSocketPath {
		return invalid("jail %q too long for a unix socket path (%d > %d)", j.Root(), n, maxSocketPath)
	}
	return nil
}

// JailLink is one host file the privileged side links into the chroot.
type JailLink struct {
	Src      string `json:"src"`      // host path, inside the owner's banger dirs
	Dst      string `json:"dst"`      // absolute path inside the chroot
	ReadOnly bool   `json:"readonly"` // opened read-only; Firecracker gets it read-only
}

// JailDiskName is where disk i appears inside the chroot.
func JailDiskName(i int) string { return "/disk" + strconv.Itoa(i) + ".img" }

// JailLayout maps s onto a chroot: the links to make, and s as Firecracker
// sees it from inside (paths rewritten, Dir the chroot's run directory).
func JailLayout(s vmm.Spec) ([]JailLink, vmm.Spec) {
	in := s
	in.Dir = JailRunDir
	links := []JailLink{{Src: s.Kernel, Dst: JailKernel, ReadOnly: true}}
	in.Kernel = JailKernel
	if s.Initrd != "" {
		links = append(links, JailLink{Src: s.Initrd, Dst: JailInitrd, ReadOnly: true})
		in.Initrd = JailInitrd
	}
	in.Disks = make([]vmm.Disk, len(s.Disks))
	for i, d := range s.Disks {
		links = append(links, JailLink{Src: d.Path, Dst: JailDiskName(i), ReadOnly: d.ReadOnly})
		in.Disks[i] = d
		in.Disks[i].Path = JailDiskName(i)
	}
	return links, in
}

// JailRequest is what the daemon asks the privileged side for: launch the
// jailer for one VM. The binaries, the chroot base and the gid are the
// privileged side's own configuration, never part of the request.
type JailRequest struct {
	ID        string     `json:"id"`
	UID       int        `json:"uid"`
	VCPU      int        `json:"vcpu"`
	MemoryMiB int        `json:"memory_mib"`
	Links     []JailLink `json:"links"`
}

// JailResult is a launched jail: Firecracker's pid (the jailer execs it)
// and the jail's directory on the host.
type JailResult struct {
	PID int    `json:"pid"`
	Dir string `json:"dir"`
}

// Launcher starts the jailer as root: privileged.Local in the all-in-one
// mode, privileged.Client through the helper otherwise.
type Launcher interface {
	LaunchJailer(ctx context.Context, req JailRequest) (JailResult, error)
}

// jailFiles are the files of a jailed VM as the daemon sees them (sockets
// in the chroot, pid file in the VM dir) and as Firecracker sees them.
func jailFiles(s vmm.Spec, dir string) (host, inJail files) {
	root := filepath.Join(dir, "root")
	host = files{
		sock:    filepath.Join(root, JailAPISocket),
		vsock:   filepath.Join(root, JailVsock),
		pid:     filepath.Join(s.Dir, "vmm.pid"),
		console: filepath.Join(dir, JailConsoleLog),
	}
	inJail = host
	inJail.sock, inJail.vsock = JailAPISocket, JailVsock
	return host, inJail
}

// isJailedFirecrackerOf recognises a jailed Firecracker: the jailer passes
// it "--id <id>", and banger's "--api-sock" inside the chroot.
func isJailedFirecrackerOf(id string) func([]string) bool {
	return func(args []string) bool {
		return vmm.HasArgPair(args, "--id", id) && vmm.HasArgPair(args, "--api-sock", JailAPISocket)
	}
}

// startJailed launches s through the jailer and configures it over the
// API socket inside the chroot.
func (d *Driver) startJailed(ctx context.Context, s vmm.Spec) (int, error) {
	links, in := JailLayout(s)
	res, err := d.Jailer.LaunchJailer(ctx, JailRequest{ID: s.ID, UID: s.UID, VCPU: s.VCPU, MemoryMiB: s.MemoryMiB, Links: links})
	if err != nil {
		return 0, fmt.Errorf("vm %s: launch jailer: %w", s.ID, err)
	}
	host, inJail := jailFiles(s, res.Dir)
	d.procs.Remember(res.PID, isJailedFirecrackerOf(s.ID))
	if err := d.bringUp(ctx, res.PID, host, d.config(in, inJail)); err != nil {
		return 0, d.abort(res.PID, host, s.ID, err)
	}
	d.watchConsole(host.console, res.PID)
	return res.PID, nil
}
