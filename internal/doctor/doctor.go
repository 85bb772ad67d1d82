// Package doctor checks that the host can run banger VMs and says what is missing.
package doctor

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm/cgroup"
)

// Checker runs host checks.
type Checker struct {
	Runner system.Runner
	Layout paths.Layout
	Store  *store.Store
	// Accel reports the chosen accelerator and why (from the VMM driver's probe).
	Accel func(ctx context.Context) (string, string)
	// LookPath is system.LookPath in production.
	LookPath func(string) (string, error)
	// Privileged says how root-only operations are done and whether that
	// works now (in-process as root, or the helper answering).
	Privileged func(ctx context.Context) (ok bool, detail string)
	// Firecracker answers whether `vm create --vmm firecracker` can work
	// here (nil: not checked).
	Firecracker VMMHost
	// DefaultVMM is the daemon's (bangerd --vmm): another VMM's checks are
	// optional, they do not fail doctor.
	DefaultVMM string
}

// Binaries banger execs, and what needs them.
var binaries = []struct{ name, why string }{
	{"qemu-system-x86_64", "runs VMs (apt-get install qemu-system-x86)"},
	{"qemu-img", "makes copy-on-write root disks: qcow2 overlays on the image (apt-get install qemu-utils)"},
	{"mkfs.ext4", "builds root and work disks (e2fsprogs)"},
	{"e2fsck", "checks disks before resizing (e2fsprogs)"},
	{"resize2fs", "grows disks (e2fsprogs)"},
	{"debugfs", "fixes ownership in images (e2fsprogs)"},
	{"mmdebstrap", "builds the default image (apt-get install mmdebstrap)"},
	{"dpkg-deb", "unpacks kernel packages (dpkg)"},
	{"apt-get", "downloads the Debian kernel"},
}

// Run returns every check; it never fails as a whole.
func (c *Checker) Run(ctx context.Context) api.DoctorResult {
	var res api.DoctorResult
	add := func(name string, ok bool, detail string) {
		res.Checks = append(res.Checks, api.DoctorCheck{Name: name, OK: ok, Detail: detail})
	}
	for _, b := range binaries {
		p, err := c.LookPath(b.name)
		if err != nil {
			add(b.name, false, "missing: "+b.why)
			continue
		}
		add(b.name, true, p)
	}
	accel, why := c.Accel(ctx)
	res.Accel = accel
	add("accelerator", accel != "", fmt.Sprintf("%s: %s", accel, why))
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		add("/dev/net/tun", false, "missing: TAP devices unavailable")
	} else {
		add("/dev/net/tun", true, "present")
	}
	if c.Privileged != nil {
		ok, detail := c.Privileged(ctx)
		add("privileges", ok, detail)
	}
	add("vmm confinement", true, fmt.Sprintf("qemu runs as uid %d with -sandbox (seccomp filter, no_new_privs); `vm show --json` reports each VMM's", os.Geteuid()))
	add("vmm limits", true, cgroupNote())
	if st, err := os.Stat(c.Layout.Root); err != nil {
		add("state dir", false, err.Error())
	} else {
		add("state dir", st.Mode().Perm() == 0o700, fmt.Sprintf("%s (%s)", c.Layout.Root, st.Mode().Perm()))
	}
	ks, kerr := c.Store.ListKernels(ctx)
	if kerr != nil || len(ks) == 0 {
		add("kernel", false, "none imported: run `banger kernel import --debian`")
	} else {
		names := make([]string, 0, len(ks))
		for _, k := range ks {
			names = append(names, k.Name)
		}
		add("kernel", true, strings.Join(names, ", "))
	}
	if _, err := c.Store.GetImage(ctx, "default"); err != nil {
		add("image", false, "no `default` image: run `banger image build default`")
	} else {
		add("image", true, "default")
	}
	if uid := os.Geteuid(); uid != 0 {
		name := strconv.Itoa(uid)
		if u, err := user.LookupId(name); err == nil {
			name = u.Username
		}
		ok, detail := image.RootlessBuildReady(c.LookPath, "/etc/subuid", "/etc/subgid", name, uid)
		add("image build as owner", ok, detail)
	}
	res.VMM = c.DefaultVMM
	if c.Firecracker != nil {
		fc, checks := vmmSection(ctx, c.Firecracker, ks, c.DefaultVMM == c.Firecracker.Name())
		res.Firecracker = &fc
		res.Checks = append(res.Checks, checks...)
	}
	return res
}

// cgroupNote says whether bangerd limits each VMM's memory and CPU: only
// where cgroup v2 is delegated to it (internal/vmm/cgroup, the same test
// bangerd makes at start).
func cgroupNote() string {
	self, err := os.ReadFile(cgroup.SelfCgroupFile)
	if err != nil {
		return "no per-VM memory/CPU cgroup limits: " + err.Error()
	}
	m, err := cgroup.Detect(cgroup.DefaultMount, self)
	if err == nil {
		err = m.Own(os.Getpid())
	}
	if err != nil {
		return "no per-VM memory/CPU cgroup limits: " + err.Error()
	}
	return "per-VM memory/CPU limits in " + m.Dir + "/vm-<id> (memory.max = guest RAM + " +
		strconv.Itoa(cgroup.OverheadMiB) + " MiB, cpu.max = vcpus)"
}
