package vmm

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/banger-dev/banger/internal/api"
)

// MaxSocketPath is the longest unix socket path (sun_path is 108 bytes with the NUL).
const MaxSocketPath = 107

// Limits bound what a Spec may ask of one VMM; beyond them the VMM or the
// guest kernel would fail with a less helpful message.
type Limits struct {
	MaxVCPU, MinMemoryMiB, MaxMemoryMiB, MaxDisks, MaxCmdline int
	Formats                                                   []string // disk formats the VMM takes; "" means raw
}

var (
	idRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	tapRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)
)

// Invalid returns an api.ErrInvalid error prefixed with the driver's name.
func Invalid(driver, format string, a ...any) error {
	return fmt.Errorf(driver+" spec: "+format+": %w", append(a, api.ErrInvalid)...)
}

// Validate checks what every driver needs of a Spec: a safe id, absolute
// paths without control characters, sizes in range, known disk formats,
// a NIC given as TAP + unicast MAC together. cmdline is the command line as
// the driver will pass it (it may add arguments of its own).
func Validate(driver string, s Spec, cmdline string, lim Limits) error {
	bad := func(format string, a ...any) error { return Invalid(driver, format, a...) }
	if !idRE.MatchString(s.ID) {
		return bad("bad vm id %q", s.ID)
	}
	if err := CheckPath(driver, "dir", s.Dir, true); err != nil {
		return err
	}
	if s.VCPU < 1 || s.VCPU > lim.MaxVCPU {
		return bad("vcpu %d out of range 1..%d", s.VCPU, lim.MaxVCPU)
	}
	if s.MemoryMiB < lim.MinMemoryMiB || s.MemoryMiB > lim.MaxMemoryMiB {
		return bad("memory %d MiB out of range %d..%d", s.MemoryMiB, lim.MinMemoryMiB, lim.MaxMemoryMiB)
	}
	if err := CheckPath(driver, "kernel", s.Kernel, true); err != nil {
		return err
	}
	if err := CheckPath(driver, "initrd", s.Initrd, false); err != nil {
		return err
	}
	if strings.ContainsRune(cmdline, 0) || strings.ContainsAny(cmdline, "\n\r") {
		return bad("kernel command line contains control characters")
	}
	if n := len(cmdline); n > lim.MaxCmdline {
		return bad("kernel command line too long (%d > %d)", n, lim.MaxCmdline)
	}
	if len(s.Disks) > lim.MaxDisks {
		return bad("%d disks, at most %d", len(s.Disks), lim.MaxDisks)
	}
	for i, d := range s.Disks {
		if err := CheckPath(driver, fmt.Sprintf("disk %d", i), d.Path, true); err != nil {
			return err
		}
		if d.Format != "" && !slices.Contains(lim.Formats, d.Format) {
			return bad("disk %d: format %q (want one of %s)", i, d.Format, strings.Join(lim.Formats, ", "))
		}
	}
	if (s.Tap == "") != (s.MAC == "") {
		return bad("tap and mac must be given together")
	}
	if s.Tap != "" {
		if !tapRE.MatchString(s.Tap) {
			return bad("bad tap name %q", s.Tap)
		}
		mac, err := net.ParseMAC(s.MAC)
		if err != nil || len(mac) != 6 {
			return bad("bad mac %q", s.MAC)
		}
		if mac[0]&1 != 0 {
			return bad("mac %q is multicast", s.MAC)
		}
	}
	if s.UID < 0 || s.GID < 0 {
		return bad("negative uid/gid")
	}
	return nil
}

// CheckPath requires p to be absolute and free of control characters.
func CheckPath(driver, what, p string, required bool) error {
	if p == "" {
		if required {
			return Invalid(driver, "%s path is empty", what)
		}
		return nil
	}
	if strings.ContainsRune(p, 0) || strings.ContainsAny(p, "\n\r") {
		return Invalid(driver, "%s path contains control characters", what)
	}
	if !filepath.IsAbs(p) {
		return Invalid(driver, "%s path %q is not absolute", what, p)
	}
	return nil
}

// CheckFiles reports a missing kernel, initrd or disk before a VMM is
// launched, as api.ErrNotFound, instead of a VMM that dies at once.
func CheckFiles(s Spec) error {
	for _, p := range []string{s.Kernel, s.Initrd} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("vm %s: %w: %w", s.ID, err, api.ErrNotFound)
		}
	}
	for _, dk := range s.Disks {
		if _, err := os.Stat(dk.Path); err != nil {
			return fmt.Errorf("vm %s: disk: %w: %w", s.ID, err, api.ErrNotFound)
		}
	}
	return nil
}
