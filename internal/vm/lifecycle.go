package vm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/logfile"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmm"
)

// Start boots a stopped VM and waits until it answers SSH.
func (s *Service) Start(ctx context.Context, name string, progress Progress) (store.VM, error) {
	v, err := s.Get(ctx, name)
	if err != nil {
		return store.VM{}, err
	}
	unlock := s.lock(v.ID)
	defer unlock()
	if v, err = s.Get(ctx, v.ID); err != nil {
		return store.VM{}, err
	}
	if h := s.handle(v.ID); h != nil && s.driverFor(v).Alive(h.PID) {
		return v, fmt.Errorf("vm %q is already running: %w", v.Name, api.ErrBusy)
	}
	if v.State == StateCreating {
		return v, fmt.Errorf("vm %q is still being created: %w", v.Name, api.ErrBusy)
	}
	if err := s.start(ctx, &v, s.defaultBootTimeout(v), progress); err != nil {
		return v, fmt.Errorf("start vm %q: %w", v.Name, err)
	}
	return v, nil
}

// start runs the start pipeline. The caller holds the VM lock.
func (s *Service) start(ctx context.Context, v *store.VM, bootTimeout time.Duration, progress Progress) error {
	return s.startWith(ctx, v, bootTimeout, progress, nil)
}

// startWith is start; with from set, the VMM restores that snapshot instead
// of booting, and the guest agent re-identifies the guest before readiness.
func (s *Service) startWith(ctx context.Context, v *store.VM, bootTimeout time.Duration, progress Progress, from *restoreFrom) error {
	h := &Handles{Tap: v.Tap}
	drv := s.driverFor(*v)
	spec, err := s.spec(*v)
	if err != nil {
		return err
	}
	// A VMM that cannot run here (its binary gone, KVM unusable) is
	// refused before the pipeline claims a TAP.
	if err := s.checkHost(ctx, drv, v.Kernel, spec.Kernel); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.stopped, v.ID)
	s.mu.Unlock()
	if err := s.d.Store.SetStopReason(ctx, v.ID, "", time.Time{}); err != nil {
		return err
	}
	// vmmLive is set by the vmm_launch undo when the VMM would not die: the
	// TAP and rules undos then keep both (see teardown).
	vmmLive := false
	steps := []step{
		{name: "seed", do: func(ctx context.Context) error { return s.writeSeed(*v) }},
		{name: "tap", do: func(ctx context.Context) error {
			if err := s.d.Net.EnsureBridge(ctx); err != nil {
				return err
			}
			if err := s.acquireTap(ctx, v); err != nil {
				return err
			}
			h.Tap, spec.Tap = v.Tap, v.Tap
			// A reused IP may have a stale neighbour entry with an old MAC.
			if ip, err := netip.ParseAddr(v.GuestIP); err == nil {
				_ = s.d.Net.FlushNeigh(ctx, ip)
			}
			return nil
		}, undo: func(ctx context.Context) error {
			// The nat undo (which runs first) removed the TAP's rules; the
			// failure path persists the cleared claim.
			if vmmLive {
				return fmt.Errorf("tap %s kept until the vmm is gone", v.Tap)
			}
			return s.releaseTap(ctx, v)
		}},
		{name: "nat", do: func(ctx context.Context) error { return s.applyFirewall(ctx, *v) },
			undo: func(ctx context.Context) error {
				if vmmLive {
					return fmt.Errorf("rules of tap %s kept until the vmm is gone", v.Tap)
				}
				return s.removeFirewall(ctx, *v)
			}},
		{name: "vmm_launch", do: func(ctx context.Context) error {
			_ = logfile.Remove(s.consolePath(*v)) // the log shows this boot only
			tapf, err := s.d.Net.OpenTap(ctx, v.Tap)
			if err != nil {
				return fmt.Errorf("open tap %s: %w", v.Tap, err)
			}
			spec.TapFile = tapf
			var pid int
			if from != nil {
				var sn vmm.Snapshotter
				if sn, err = snapshotter(drv); err == nil {
					pid, err = sn.Restore(ctx, spec, s.d.Layout.Snapshot(from.snap.ID), from.meta)
				}
			} else {
				pid, err = drv.Start(ctx, spec)
			}
			// The VMM holds its own copy now (or never will).
			spec.TapFile = nil
			tapf.Close()
			if err != nil {
				return err
			}
			h.PID = pid
			s.setHandle(v.ID, h)
			if s.d.Limits != nil {
				// Right after launch, before the guest has run for long;
				// a VMM that cannot be limited is not kept (undo kills it).
				if err := s.d.Limits.Place(v.ID, pid, spec.MemoryMiB, spec.VCPU); err != nil {
					return fmt.Errorf("vmm limits: %w", err)
				}
			}
			v.State = StateRunning
			if from != nil {
				// Not running until it is re-identified: a daemon that dies
				// in between leaves a row reconcile tears down, never a
				// guest answering with its parent's identity.
				v.State = StateCreating
			}
			v.LastError = ""
			if err := s.writeHandles(*v, h); err != nil {
				return err
			}
			if s.d.AfterStep != nil {
				// The window inside this step: a live VMM, a row not yet running.
				s.d.AfterStep(stepVMMStarted)
			}
			if err := s.d.Store.UpdateVM(ctx, v); err != nil {
				return err
			}
			go s.monitor(v.ID, pid, drv)
			return nil
		}, undo: func(ctx context.Context) error {
			s.mu.Lock()
			s.stopped[v.ID] = true
			s.mu.Unlock()
			s.d.Guest.Drop(v.ID)
			if h.PID == 0 {
				if pid, ok := drv.Find(spec); ok {
					h.PID = pid
				}
			}
			var err error
			if h.PID != 0 {
				err = s.killAndWait(drv, h.PID)
				vmmLive = err != nil && drv.Alive(h.PID)
			}
			s.setHandle(v.ID, nil)
			if s.d.AfterStop != nil {
				s.d.AfterStop(v.ID)
			}
			s.removeHandles(*v)
			return errors.Join(err, s.removeLimits(*v))
		}},
		{name: "wait_ready", do: func(ctx context.Context) error {
			wctx, cancel := context.WithTimeout(ctx, bootTimeout)
			defer cancel()
			err := s.d.Guest.WaitReady(wctx, s.target(*v), 250*time.Millisecond)
			if err != nil && !drv.Alive(h.PID) {
				return fmt.Errorf("vmm exited during boot: %w\nconsole tail:\n%s", err, s.consoleTail(*v, 2048))
			}
			if err != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				return fmt.Errorf("guest did not answer ssh within %s: %w\nconsole tail:\n%s", bootTimeout, err, s.consoleTail(*v, 2048))
			}
			return err
		}},
	}
	if from != nil {
		// Right after the restore, before anything waits on the guest's
		// network: it still has its parent's address and name.
		reid := step{name: "reidentify", do: func(ctx context.Context) error {
			rctx, cancel := context.WithTimeout(ctx, bootTimeout)
			defer cancel()
			if err := s.reidentify(rctx, *v); err != nil {
				return fmt.Errorf("restored guest: %w", err)
			}
			v.State = StateRunning
			return s.d.Store.UpdateVM(ctx, v)
		}}
		steps = append(steps[:len(steps)-1], reid, steps[len(steps)-1])
	}
	capPre, capPost, err := s.capSteps(ctx, v, progress)
	if err != nil {
		return err
	}
	steps = append(capPre, steps...)
	if s.d.AfterStart != nil {
		// Before the capabilities start: the files it syncs (sync.json)
		// may be their configuration or credentials.
		steps = append(steps, step{name: "post_start", do: func(ctx context.Context) error {
			hctx, cancel := context.WithTimeout(ctx, afterStartTimeout)
			defer cancel()
			s.d.AfterStart(hctx, *v)
			return nil
		}})
	}
	steps = append(steps, capPost...)
	err = runSteps(ctx, s.d.Log, s.hookSteps(steps), progress.stage)
	if err != nil {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		defer cancel()
		v.State = StateError
		v.LastError = firstLine(err.Error())
		if uerr := s.d.Store.UpdateVM(uctx, v); uerr != nil {
			err = errors.Join(err, uerr)
		}
		return err
	}
	progress.stage("ready")
	return nil
}

// afterStartTimeout bounds the post-start hook.
const afterStartTimeout = 60 * time.Second

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func (s *Service) consoleTail(v store.VM, n int64) string {
	b, err := logfile.Tail(s.consolePath(v), n)
	if err != nil {
		return "(no console log: " + err.Error() + ")"
	}
	return string(b)
}

// killAndWait SIGKILLs the VMM and waits (bounded) for it to disappear so
// its disks and TAP are free for the next start.
func (s *Service) killAndWait(drv vmm.Driver, pid int) error {
	if err := drv.Kill(pid); err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for drv.Alive(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("vmm pid %d still alive after SIGKILL", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// Stop shuts a VM down gracefully: sync over SSH, ask for poweroff, then kill
// the VMM. An unreachable guest is killed after ~2 s. With force, skip the sync.
func (s *Service) Stop(ctx context.Context, name string, force bool) (store.VM, error) {
	return s.stop(ctx, name, force, 0)
}

// stop is Stop; idle > 0 is the idle check's stop, made only if the VM is
// still idle once its lock is held, and recorded as the stop reason.
func (s *Service) stop(ctx context.Context, name string, force bool, idle time.Duration) (store.VM, error) {
	v, err := s.Get(ctx, name)
	if err != nil {
		return store.VM{}, err
	}
	unlock := s.lock(v.ID)
	defer unlock()
	if v, err = s.Get(ctx, v.ID); err != nil {
		return store.VM{}, err
	}
	if idle > 0 && !s.stillIdle(v.ID, idle) {
		return v, fmt.Errorf("vm %q was used meanwhile; not stopped for idleness: %w", v.Name, api.ErrBusy)
	}
	h := s.handle(v.ID)
	drv := s.driverFor(v)
	if h == nil || !drv.Alive(h.PID) {
		if v.State == StateRunning || v.State == StateError {
			// Already dead: make sure nothing is left and record it.
			err := s.teardown(ctx, &v, StateStopped, "")
			return v, err
		}
		return v, fmt.Errorf("vm %q: %w", v.Name, api.ErrNotRunning)
	}
	s.mu.Lock()
	s.stopped[v.ID] = true
	s.mu.Unlock()
	if !force && s.paused(ctx, v) {
		// A paused guest cannot sync or power off: let it run first.
		if sn, err := snapshotter(drv); err == nil {
			if spec, err := s.spec(v); err == nil {
				_ = sn.Resume(ctx, spec)
			}
		}
	}
	if !force {
		// Shutdown reaches the guest within ~2 s or fails; once reached,
		// sync gets the time it needs, since it is what makes written
		// data durable on the host's file.
		sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := s.d.Guest.Shutdown(sctx, s.target(v))
		cancel()
		if err != nil {
			s.d.Log.WarnContext(ctx, "graceful stop failed, killing", "vm", v.Name, "err", err)
		} else {
			// The guest has synced; give poweroff a moment, then kill regardless.
			deadline := time.Now().Add(1500 * time.Millisecond)
			for drv.Alive(h.PID) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	err = s.teardown(ctx, &v, StateStopped, "")
	if idle > 0 && err == nil {
		err = s.d.Store.SetStopReason(ctx, v.ID, "idle for "+fmtDuration(idle), s.now())
	}
	return v, err
}

// teardown kills the VMM (if alive), releases the TAP and handles, and records state.
func (s *Service) teardown(ctx context.Context, v *store.VM, state, lastErr string) error {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	var errs []error
	s.d.Guest.Drop(v.ID)
	drv := s.driverFor(*v)
	h := s.handle(v.ID)
	pid := 0
	if h != nil {
		pid = h.PID
	} else if spec, err := s.spec(*v); err == nil {
		if p, ok := drv.Find(spec); ok {
			pid = p
		}
	}
	vmmGone := true
	if pid != 0 && drv.Alive(pid) {
		if err := s.killAndWait(drv, pid); err != nil {
			errs = append(errs, err)
			vmmGone = !drv.Alive(pid)
		}
	}
	// Rules first, then the TAP back to the pool; the row keeps naming the
	// TAP (the claim) unless both succeeded, so a retry finds it. A VMM
	// that may still run keeps both: its guest stays guarded, and no other
	// VM is handed a TAP it holds (TUNSETIFF: device busy).
	if !vmmGone {
		errs = append(errs, fmt.Errorf("tap %s and its rules kept until the vmm is gone", v.Tap))
		state, lastErr = StateError, fmt.Sprintf("vmm pid %d did not die; stop or delete again", pid)
	} else if err := s.removeFirewall(uctx, *v); err != nil {
		errs = append(errs, err)
	} else if err := s.releaseTap(uctx, v); err != nil {
		errs = append(errs, err)
	}
	s.setHandle(v.ID, nil)
	if s.d.AfterStop != nil {
		s.d.AfterStop(v.ID)
	}
	s.removeHandles(*v)
	s.removeMem(*v)
	if err := s.removeLimits(*v); err != nil {
		errs = append(errs, err)
	}
	if err := s.d.Store.SetPaused(uctx, v.ID, false); err != nil && !errors.Is(err, api.ErrNotFound) {
		errs = append(errs, err)
	}
	v.State = state
	v.LastError = lastErr
	if err := s.d.Store.UpdateVM(uctx, v); err != nil {
		errs = append(errs, err)
	}
	s.endSessions(uctx, *v) // sessions.go: they show as ended, not gone
	if err := s.capTeardown(uctx, *v); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Kill stops a VM at once, without syncing.
func (s *Service) Kill(ctx context.Context, name string) (store.VM, error) {
	return s.Stop(ctx, name, true)
}

// Restart is stop (graceful) then start.
func (s *Service) Restart(ctx context.Context, name string, progress Progress) (store.VM, error) {
	if _, err := s.Stop(ctx, name, false); err != nil && !errors.Is(err, api.ErrNotRunning) {
		return store.VM{}, err
	}
	return s.Start(ctx, name, progress)
}

// Delete removes a VM: its process, TAP, disks, pins and row. A running VM
// is refused unless force.
func (s *Service) Delete(ctx context.Context, name string, force bool) error {
	v, err := s.Get(ctx, name)
	if err != nil {
		return err
	}
	unlock := s.lock(v.ID)
	defer unlock()
	// Tear down what the row says now: another operation may have changed
	// it (started the VM, claimed a TAP) while we waited for the lock.
	if v, err = s.Get(ctx, v.ID); err != nil {
		return err
	}
	if h := s.handle(v.ID); h != nil && s.driverFor(v).Alive(h.PID) {
		if !force {
			return fmt.Errorf("vm %q is running (stop it or use --force): %w", v.Name, api.ErrBusy)
		}
		s.mu.Lock()
		s.stopped[v.ID] = true
		s.mu.Unlock()
	}
	var errs []error
	if err := s.teardown(ctx, &v, StateStopped, ""); err != nil {
		errs = append(errs, err)
	}
	if err := s.d.KnownHosts.Remove(v.GuestIP, v.Name+".vm"); err != nil {
		errs = append(errs, fmt.Errorf("remove known_hosts pin: %w", err))
	}
	if err := os.RemoveAll(v.Dir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("delete vm %q: %w", v.Name, errors.Join(errs...))
	}
	origin, _ := s.d.Store.SnapshotState(ctx, v.ID)
	if err := s.d.Store.DeleteVM(ctx, v.ID); err != nil {
		return fmt.Errorf("delete vm %q: %w", v.Name, err)
	}
	s.releaseAutoSnapshot(ctx, origin.OriginSnapshot)
	s.mu.Lock()
	delete(s.locks, v.ID)
	delete(s.stopped, v.ID)
	delete(s.capEnv, v.ID)
	s.mu.Unlock()
	return nil
}

// monitor notices a VMM that died on its own (crash, kill -9, guest poweroff)
// and tears down what it held; drv is the VM's driver.
func (s *Service) monitor(id string, pid int, drv vmm.Driver) {
	for {
		time.Sleep(500 * time.Millisecond)
		h := s.handle(id)
		if h == nil || h.PID != pid {
			return // stopped or restarted through the service
		}
		if drv.Alive(pid) {
			continue
		}
		unlock := s.lock(id)
		h = s.handle(id)
		if h == nil || h.PID != pid {
			unlock()
			return
		}
		ctx := context.Background()
		v, err := s.d.Store.GetVM(ctx, id)
		if err == nil {
			s.mu.Lock()
			expected := s.stopped[id]
			s.mu.Unlock()
			state, msg := StateStopped, ""
			if !expected {
				msg = "vmm exited unexpectedly"
				s.d.Log.Warn("vmm exited", "vm", v.Name, "pid", pid)
			}
			if err := s.teardown(ctx, &v, state, msg); err != nil {
				s.d.Log.Error("teardown after vmm exit", "vm", v.Name, "err", err)
			}
		} else {
			s.setHandle(id, nil)
			if s.d.AfterStop != nil {
				s.d.AfterStop(id)
			}
		}
		unlock()
		return
	}
}
