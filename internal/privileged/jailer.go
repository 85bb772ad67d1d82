package privileged

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
)

// JailerConfig is the privileged side's own configuration for launching
// Firecracker's jailer: root-owned binaries at fixed paths, a root-owned
// chroot base, and the owner's banger directory (the only place files
// linked into a jail may come from). None of it comes from a request.
type JailerConfig struct {
	Jailer      string
	Firecracker string
	ChrootBase  string
	OwnerDir    string
	GID         int  // the owner's primary group
	CgroupV2    bool // let the jailer set memory.max/cpu.max (cgroup v2 host)
}

// Limits of a launch request, as the Firecracker driver's.
const (
	maxJailVCPU   = 32
	minJailMemMiB = 32
	maxJailMemMiB = 1 << 20
	maxJailLinks  = 18 // kernel, initrd, 16 disks
)

// JailRequest checks a launch_jailer request: a VM id, the owner's uid,
// sizes in the driver's range, and links with clean absolute sources and
// the destinations banger's layout uses (kernel, initrd, disk<N>).
func (r Rules) JailRequest(q firecracker.JailRequest) error {
	if err := r.VMID(q.ID); err != nil {
		return err
	}
	if q.UID != r.Owner {
		return refuse("jail uid %d: the helper serves uid %d only", q.UID, r.Owner)
	}
	if q.VCPU < 1 || q.VCPU > maxJailVCPU {
		return refuse("jail vcpu %d: want 1..%d", q.VCPU, maxJailVCPU)
	}
	if q.MemoryMiB < minJailMemMiB || q.MemoryMiB > maxJailMemMiB {
		return refuse("jail memory %d MiB: want %d..%d", q.MemoryMiB, minJailMemMiB, maxJailMemMiB)
	}
	if len(q.Links) == 0 || len(q.Links) > maxJailLinks {
		return refuse("jail links: %d, want 1..%d", len(q.Links), maxJailLinks)
	}
	seen := map[string]bool{}
	for i, l := range q.Links {
		if !filepath.IsAbs(l.Src) || filepath.Clean(l.Src) != l.Src {
			return refuse("jail link %q: want a clean absolute path", l.Src)
		}
		if !validJailDst(l.Dst, len(q.Links)) || seen[l.Dst] {
			return refuse("jail link destination %q: not banger's jail layout", l.Dst)
		}
		if i == 0 && l.Dst != firecracker.JailKernel {
			return refuse("jail link destination %q: the kernel comes first", l.Dst)
		}
		seen[l.Dst] = true
	}
	return nil
}

func validJailDst(dst string, n int) bool {
	if dst == firecracker.JailKernel || dst == firecracker.JailInitrd {
		return true
	}
	for i := range n {
		if dst == firecracker.JailDiskName(i) {
			return true
		}
	}
	return false
}

// LaunchJailer prepares the jail of one VM and starts the jailer, which
// execs Firecracker as the owner inside it. Each source is opened beneath
// the owner's banger directory with no symlink followed, must be a regular
// file the owner owns, and is hard-linked into the root-owned chroot by
// its fd: the owner can only hand Firecracker files it could open itself.
func (l *Local) LaunchJailer(ctx context.Context, q firecracker.JailRequest) (firecracker.JailResult, error) {
	c := l.Jail
	if c == nil {
		return firecracker.JailResult{}, refuse("launch_jailer: no jailer configured on the privileged side")
	}
	if c.OwnerDir == "" || !filepath.IsAbs(c.OwnerDir) {
		return firecracker.JailResult{}, fmt.Errorf("jailer config: owner dir %q: want an absolute path", c.OwnerDir)
	}
	j := firecracker.Jail{Jailer: c.Jailer, Firecracker: c.Firecracker, ChrootBase: c.ChrootBase,
		ID: q.ID, UID: q.UID, GID: c.GID, CgroupV2: c.CgroupV2, MemoryMiB: q.MemoryMiB, VCPU: q.VCPU}
	if err := j.Check(); err != nil {
		return firecracker.JailResult{}, err
	}
	if err := prepareJail(j, c.OwnerDir, q.Links); err != nil {
		_ = os.RemoveAll(j.Dir())
		return firecracker.JailResult{}, fmt.Errorf("vm %s: jail: %w", q.ID, err)
	}
	pid, err := l.Runner.Start(ctx, system.ProcSpec{
		Path: c.Jailer, Args: j.Args(), Dir: "/",
		Stdout: filepath.Join(j.Dir(), firecracker.JailConsoleLog),
	})
	if err != nil {
		_ = os.RemoveAll(j.Dir())
		return firecracker.JailResult{}, fmt.Errorf("vm %s: start jailer: %w", q.ID, err)
	}
	l.log().InfoContext(ctx, "jailer started", "vm", q.ID, "pid", pid, "uid", q.UID, "jail", j.Dir())
	return firecracker.JailResult{PID: pid, Dir: j.Dir()}, nil
}

// prepareJail makes a fresh <dir>/root (root-owned; its run/ owned by the
// VM's uid for Firecracker's sockets), the console log the jailer's output
// goes to (readable by the owner), and the links.
func prepareJail(j firecracker.Jail, ownerDir string, links []firecracker.JailLink) error {
	if err := os.RemoveAll(j.Dir()); err != nil {
		return fmt.Errorf("remove stale jail: %w", err)
	}
	run := j.HostPath(firecracker.JailRunDir)
	if err := os.MkdirAll(run, 0o755); err != nil {
		return err
	}
	if err := os.Chown(run, j.UID, j.GID); err != nil {
		return err
	}
	if err := os.Chmod(run, 0o700); err != nil {
		return err
	}
	con := filepath.Join(j.Dir(), firecracker.JailConsoleLog)
	fd, err := os.OpenFile(con, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, 0o640)
	if err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	cerr := fd.Chown(j.UID, j.GID)
	if err := errors.Join(cerr, fd.Close()); err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	base, err := os.Open(ownerDir)
	if err != nil {
		return fmt.Errorf("owner dir: %w", err)
	}
	defer base.Close()
	for _, lk := range links {
		if err := linkInto(base, ownerDir, j, lk); err != nil {
			return err
		}
	}
	return nil
}

// ErrOutsideOwnerDir is wrapped when a link source is not beneath the owner's banger dir.
var ErrOutsideOwnerDir = errors.New("outside the owner's banger directory")

func linkInto(base *os.File, ownerDir string, j firecracker.Jail, lk firecracker.JailLink) error {
	rel, err := filepath.Rel(ownerDir, lk.Src)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return refuse("jail link %s: %v", lk.Src, ErrOutsideOwnerDir)
	}
	// O_NONBLOCK: a FIFO planted at the source must not hang the helper; it
	// is refused as not regular below.
	flags := uint64(unix.O_RDWR | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK)
	if lk.ReadOnly {
		flags = unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK
	}
	fd, err := unix.Openat2(int(base.Fd()), rel, &unix.OpenHow{Flags: flags,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV})
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return refuse("jail link %s: a symlink or mount on the way (%v)", lk.Src, err)
		}
		return fmt.Errorf("jail link %s: %w", lk.Src, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("jail link %s: %w", lk.Src, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return refuse("jail link %s: not a regular file", lk.Src)
	}
	if int(st.Uid) != j.UID {
		return refuse("jail link %s: owned by uid %d, not the VM's owner %d", lk.Src, st.Uid, j.UID)
	}
	dst := j.HostPath(lk.Dst)
	// AT_EMPTY_PATH links the very inode opened above (CAP_DAC_READ_SEARCH).
	if err := unix.Linkat(fd, "", unix.AT_FDCWD, dst, unix.AT_EMPTY_PATH); err != nil {
		if errors.Is(err, unix.EXDEV) {
			return fmt.Errorf("jail link %s: the chroot base %s must be on the same filesystem as %s: %w",
				lk.Src, j.ChrootBase, ownerDir, err)
		}
		return fmt.Errorf("jail link %s: %w", lk.Src, err)
	}
	return nil
}
