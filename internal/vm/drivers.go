package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmm"
)

// Each VM runs under the VMM its row names (vms.vmm, chosen at create:
// `vm create --vmm`, else Deps.Driver); every operation on it (start, find,
// signal, dial, snapshot) goes to that driver, whatever the daemon's
// default is now.

// driverNamed returns the driver called name; "" is the default one.
func (s *Service) driverNamed(name string) (vmm.Driver, error) {
	if name == "" || name == s.d.Driver.Name() {
		return s.d.Driver, nil
	}
	for _, d := range s.d.Drivers {
		if d.Name() == name {
			return d, nil
		}
	}
	return nil, fmt.Errorf("vmm %q: this daemon runs %s: %w", name, strings.Join(s.driverNames(), ", "), api.ErrInvalid)
}

// driverNames lists the VMMs a VM may ask for, the default first.
func (s *Service) driverNames() []string {
	names := []string{s.d.Driver.Name()}
	for _, d := range s.d.Drivers {
		if !slices.Contains(names, d.Name()) {
			names = append(names, d.Name())
		}
	}
	return names
}

// driverFor is the driver of v. A row naming a VMM this daemon lacks
// (written by another build or by hand) gets one that starts, finds and
// signals nothing and says why.
func (s *Service) driverFor(v store.VM) vmm.Driver {
	d, err := s.driverNamed(v.VMM)
	if err != nil {
		return missingDriver{name: v.VMM, err: err}
	}
	return d
}

// checkHost refuses, before anything of a VM exists, a driver that cannot
// run VMs on this host or boot the kernel at kernelPath (vmm.HostChecker).
func (s *Service) checkHost(ctx context.Context, d vmm.Driver, kernelName, kernelPath string) error {
	if err := hostErr(ctx, d); err != nil {
		return err
	}
	return s.checkKernel(ctx, d, kernelName, kernelPath)
}

// hostErr is why d cannot run VMs on this host (vmm.HostError), or nil.
func hostErr(ctx context.Context, d vmm.Driver) error {
	if c, ok := d.(vmm.HostChecker); ok {
		return c.CheckHost(ctx).Err(d.Name())
	}
	return nil
}

// checkKernel refuses a kernel d cannot boot; one whose fitness cannot be
// told (its build configuration is not known) goes ahead with a warning.
func (s *Service) checkKernel(ctx context.Context, d vmm.Driver, kernelName, kernelPath string) error {
	c, ok := d.(vmm.HostChecker)
	if !ok {
		return nil
	}
	if err := c.CheckKernel(kernelPath); errors.Is(err, vmm.ErrUnchecked) {
		s.d.Log.WarnContext(ctx, "kernel not checked for the vmm", "vmm", d.Name(), "kernel", kernelName, "err", err)
	} else if err != nil {
		return fmt.Errorf("vmm %s cannot boot kernel %q: %w", d.Name(), kernelName, err)
	}
	return nil
}

// missingDriver stands in for a VMM this daemon does not have.
type missingDriver struct {
	name string
	err  error
}

func (m missingDriver) Name() string { return m.name }
func (m missingDriver) Start(context.Context, vmm.Spec) (int, error) {
	return 0, m.err
}
func (m missingDriver) Find(vmm.Spec) (int, bool)                           { return 0, false }
func (m missingDriver) Shutdown(context.Context, int) error                 { return m.err }
func (m missingDriver) Kill(int) error                                      { return m.err }
func (m missingDriver) Alive(int) bool                                      { return false }
func (m missingDriver) DialAgent(context.Context, string) (net.Conn, error) { return nil, m.err }
