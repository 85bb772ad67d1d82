package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/logfile"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmm"
)

// Handles are what is true now about a running VM. They are kept in memory
// and in the VM's handles.json scratch file; every datum is also derivable
// (pid from the VMM's pid file + cmdline, TAP from the row), so a lost or
// corrupt file never leaks anything.
type Handles struct {
	PID int    `json:"pid"`
	Tap string `json:"tap"`
}

// consoleAttacher is a driver that copies the console of a running VMM
// itself (qemu: from its console socket) and can resume that after a
// daemon restart.
type consoleAttacher interface {
	AttachConsole(vmm.Spec) error
}

func (s *Service) handlesPath(v store.VM) string { return filepath.Join(v.Dir, paths.VMHandlesFile) }

func (s *Service) writeHandles(v store.VM, h *Handles) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	tmp := s.handlesPath(v) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.handlesPath(v))
}

func (s *Service) removeHandles(v store.VM) { _ = os.Remove(s.handlesPath(v)) }

// readHandles returns the scratch file's contents; a corrupt file is an error
// the caller logs and then ignores in favour of rediscovery.
func (s *Service) readHandles(v store.VM) (*Handles, error) {
	b, err := os.ReadFile(s.handlesPath(v))
	if err != nil {
		return nil, err
	}
	var h Handles
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("corrupt %s: %w", s.handlesPath(v), err)
	}
	if h.PID < 0 {
		return nil, fmt.Errorf("corrupt %s: negative pid", s.handlesPath(v))
	}
	return &h, nil
}

// Reconcile runs at daemon start: VMs whose VMM is alive are adopted, the
// rest are torn down with whatever handles can be found and marked stopped.
func (s *Service) Reconcile(ctx context.Context) error {
	vms, err := s.d.Store.ListVMs(ctx)
	if err != nil {
		return err
	}
	var errs []error
	adopted := map[string]bool{}
	for i := range vms {
		v := vms[i]
		if v.State != StateRunning && v.State != StateCreating && v.State != StateError {
			continue
		}
		drv := s.driverFor(v)
		spec, serr := s.spec(v)
		pid, alive := 0, false
		if serr == nil {
			pid, alive = drv.Find(spec)
		}
		if h, err := s.readHandles(v); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.d.Log.WarnContext(ctx, "ignoring handles file", "vm", v.Name, "err", err)
		} else if h != nil && !alive && h.PID > 0 && drv.Alive(h.PID) && serr == nil {
			// The pid file is gone but the scratch file names a live pid: only
			// trust it if that process is this VM's VMM (Find checks cmdline).
			s.d.Log.WarnContext(ctx, "handles pid alive but not matched to vm; ignoring", "vm", v.Name, "pid", h.PID)
		}
		if alive && v.State == StateRunning {
			h := &Handles{PID: pid, Tap: v.Tap}
			s.setHandle(v.ID, h)
			if err := s.writeHandles(v, h); err != nil {
				s.d.Log.WarnContext(ctx, "rewrite handles", "vm", v.Name, "err", err)
			}
			go s.monitor(v.ID, pid, drv)
			// Copy the serial console again (the previous daemon's copy died
			// with it); without it the VM runs on with no console log.
			if c, ok := drv.(consoleAttacher); ok {
				if err := c.AttachConsole(spec); err != nil {
					s.d.Log.WarnContext(ctx, "reattach console", "vm", v.Name, "err", err)
				}
			}
			s.resumeInterrupted(ctx, v, spec)
			s.d.Log.InfoContext(ctx, "adopted running vm", "vm", v.Name, "pid", pid)
			adopted[v.ID] = true
			continue
		}
		state, msg := StateStopped, ""
		switch {
		case v.State == StateCreating:
			state, msg = StateError, "daemon stopped while the vm was being created"
		case v.State == StateError:
			state, msg = StateError, v.LastError
		case !alive:
			msg = "vmm was not running when the daemon started"
		}
		if alive {
			s.setHandle(v.ID, &Handles{PID: pid, Tap: v.Tap})
		}
		if err := s.teardown(ctx, &v, state, msg); err != nil {
			errs = append(errs, fmt.Errorf("reconcile vm %q: %w", v.Name, err))
		}
		s.d.Log.InfoContext(ctx, "reconciled vm", "vm", v.Name, "state", state)
	}
	if err := s.reconcileSnapshots(ctx); err != nil {
		errs = append(errs, fmt.Errorf("reconcile snapshots: %w", err))
	}
	if err := s.reconcileNet(ctx); err != nil {
		errs = append(errs, fmt.Errorf("reconcile network: %w", err))
	}
	if s.d.Limits != nil {
		// Groups of VMMs that are gone (a daemon killed before teardown).
		if err := s.d.Limits.Prune(adopted); err != nil {
			errs = append(errs, fmt.Errorf("reconcile vmm cgroups: %w", err))
		}
	}
	return errors.Join(errs...)
}

// removeLimits deletes the VM's cgroup; its VMM is gone.
func (s *Service) removeLimits(v store.VM) error {
	if s.d.Limits == nil {
		return nil
	}
	if err := s.d.Limits.Remove(v.ID); err != nil {
		return fmt.Errorf("vm %q: %w", v.Name, err)
	}
	return nil
}

// Running reports whether the VM's VMM is alive now.
func (s *Service) Running(v store.VM) bool {
	h := s.handle(v.ID)
	return h != nil && s.driverFor(v).Alive(h.PID)
}

// Logs returns the tail of the VM's serial console (console.log and its
// rotated predecessor; the driver caps them, see qemu.ConsoleMaxBytes).
func (s *Service) Logs(ctx context.Context, name string, n int64) (string, []byte, error) {
	v, err := s.Get(ctx, name)
	if err != nil {
		return "", nil, err
	}
	p := s.consolePath(v)
	if n <= 0 || n > 4<<20 {
		n = 4 << 20
	}
	b, err := logfile.Tail(p, n)
	if errors.Is(err, os.ErrNotExist) {
		return p, nil, fmt.Errorf("vm %q has no console log yet: %w", v.Name, api.ErrNotFound)
	}
	return p, b, err
}
