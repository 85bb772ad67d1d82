package vmm

import (
	"context"
	"errors"
	"strings"
)

// HostChecker is a driver that can say, before anything of a VM exists,
// whether it can run one on this host (the Firecracker driver: its binary,
// a usable KVM, what it opens itself) and boot a given kernel. The VM
// service refuses a create or start it answers no to; doctor shows it.
type HostChecker interface {
	// CheckHost reports what stops the driver on this host now.
	CheckHost(ctx context.Context) HostStatus
	// CheckKernel reports whether the kernel file at path (a store row's
	// path) can boot under the driver: nil, an error naming what it lacks
	// and what to use instead, or one wrapping ErrUnchecked when that
	// cannot be told (its build configuration is not known).
	CheckKernel(path string) error
}

// HostStatus is a driver's answer for this host.
type HostStatus struct {
	// Binary is the VMM binary's path; "" when it is missing.
	Binary string
	// Checks are what the driver looked at, in order, passed or not.
	Checks []HostCheck
}

// HostCheck is one thing a driver needs of the host.
type HostCheck struct {
	Name   string // HostBinary, or what else was checked (e.g. "/dev/kvm")
	Detail string // what was found, when it passed
	// Err is why it failed, saying what to do (a missing binary's wraps
	// ErrNoVMM); nil: passed.
	Err error
}

// HostBinary names the check of the VMM's binary (Detail: its path).
const HostBinary = "binary"

// Problems are the errors of the checks that failed.
func (h HostStatus) Problems() []error {
	var out []error
	for _, c := range h.Checks {
		if c.Err != nil {
			out = append(out, c.Err)
		}
	}
	return out
}

// Err is nil when the driver can run VMs here, else a *HostError.
func (h HostStatus) Err(driver string) error {
	p := h.Problems()
	if len(p) == 0 {
		return nil
	}
	return &HostError{Driver: driver, Problems: p}
}

// HostError is a driver that cannot run VMs on this host, with every reason.
type HostError struct {
	Driver   string
	Problems []error
}

func (e *HostError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.Error()
	}
	return "vmm " + e.Driver + " cannot run vms on this host: " + strings.Join(parts, "; ")
}

func (e *HostError) Unwrap() []error { return e.Problems }

// ErrUnchecked marks a requirement that could not be checked (a kernel whose
// build configuration banger does not have): callers go ahead and say so.
var ErrUnchecked = errors.New("cannot be checked")
