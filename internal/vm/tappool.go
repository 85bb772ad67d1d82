package vm

import (
	"context"
	"errors"
	"fmt"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/store"
)

// TAP pool. TAPs named hostnet.PoolTapName(n) are reused across VMs. The
// VM row's Tap column is the claim: a VM holds exactly the TAP its row names
// (the store's unique index keeps two rows from naming the same one), it is
// written before the TAP is used and cleared only after the TAP's rules are
// gone and the TAP is back in the pool. So a crash at any point leaves a row
// naming the TAP, and teardown or reconcile find it there, never in memory
// or handles.json. A pooled TAP named by no row is idle.
const (
	// poolPrecreate TAPs are made at the first VM start, not at daemon
	// start (a daemon used only for downloads never touches host links).
	poolPrecreate = 2
	// poolIdleMax idle TAPs are kept; a release beyond that deletes the TAP.
	poolIdleMax = 4
)

// claimedTaps returns TAP name → VM id for every row naming a TAP.
func (s *Service) claimedTaps(ctx context.Context) (map[string]string, error) {
	vms, err := s.d.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, v := range vms {
		if v.Tap != "" {
			out[v.Tap] = v.ID
		}
	}
	return out, nil
}

// acquireTap is the `tap` start step: pick an idle pooled TAP (or make the
// next one), record it in the row, then set it up for the VMM's uid. The
// caller holds the VM lock.
func (s *Service) acquireTap(ctx context.Context, v *store.VM) error {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	if v.Tap != "" {
		// A claim left over (legacy per-VM TAP or an unfinished teardown).
		if err := s.removeFirewall(ctx, *v); err != nil {
			return err
		}
		if err := s.releaseTapLocked(ctx, v); err != nil {
			return err
		}
	}
	existing, err := s.d.Net.PoolTaps(ctx)
	if err != nil {
		return err
	}
	claimed, err := s.claimedTaps(ctx)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	name := ""
	for _, t := range existing {
		have[t] = true
		if name == "" && claimed[t] == "" {
			name = t
		}
	}
	next := func() string {
		for n := 0; ; n++ {
			if t := hostnet.PoolTapName(n); !have[t] && claimed[t] == "" {
				have[t] = true
				return t
			}
		}
	}
	if name == "" {
		name = next()
	}
	v.Tap = name
	if err := s.d.Store.UpdateVM(ctx, v); err != nil {
		v.Tap = ""
		return fmt.Errorf("record tap %s: %w", name, err)
	}
	if err := s.d.Net.CreateTap(ctx, name, s.d.UID); err != nil {
		return err
	}
	if len(existing) == 0 {
		// First use of the pool: a few spares so the next starts only reown one.
		for i := 1; i < poolPrecreate; i++ {
			t := next()
			if err := s.d.Net.CreateTap(ctx, t, s.d.UID); err != nil {
				s.d.Log.WarnContext(ctx, "precreate pooled tap", "tap", t, "err", err)
				break
			}
			if err := s.d.Net.ReleaseTap(ctx, t); err != nil {
				s.d.Log.WarnContext(ctx, "precreate pooled tap", "tap", t, "err", err)
			}
		}
	}
	return nil
}

// releaseTap returns the VM's TAP to the pool (or deletes it: a legacy
// per-VM TAP, or one beyond poolIdleMax idle) and clears v.Tap; the caller
// removes the TAP's rules first and persists the row after.
func (s *Service) releaseTap(ctx context.Context, v *store.VM) error {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	return s.releaseTapLocked(ctx, v)
}

func (s *Service) releaseTapLocked(ctx context.Context, v *store.VM) error {
	name := v.Tap
	if name == "" {
		return nil
	}
	if _, ok := hostnet.PoolTapIndex(name); !ok {
		if err := s.d.Net.DeleteTap(ctx, name); err != nil {
			return fmt.Errorf("delete tap %s: %w", name, err)
		}
		v.Tap = ""
		return nil
	}
	existing, err := s.d.Net.PoolTaps(ctx)
	if err != nil {
		return err
	}
	claimed, err := s.claimedTaps(ctx)
	if err != nil {
		return err
	}
	idle := 0
	for _, t := range existing {
		if t != name && claimed[t] == "" {
			idle++
		}
	}
	if idle >= poolIdleMax {
		err = s.d.Net.DeleteTap(ctx, name)
	} else {
		err = s.d.Net.ReleaseTap(ctx, name)
	}
	if err != nil {
		return fmt.Errorf("release tap %s: %w", name, err)
	}
	v.Tap = ""
	return nil
}

// trimPool deletes idle pooled TAPs beyond poolIdleMax and brings the kept
// idle ones down (a daemon crash may have left one up). Run by reconcile.
func (s *Service) trimPool(ctx context.Context) error {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	existing, err := s.d.Net.PoolTaps(ctx)
	if err != nil || len(existing) == 0 {
		return err
	}
	claimed, err := s.claimedTaps(ctx)
	if err != nil {
		return err
	}
	var errs []error
	idle := 0
	for _, t := range existing {
		if claimed[t] != "" {
			continue
		}
		idle++
		if idle > poolIdleMax {
			err = s.d.Net.DeleteTap(ctx, t)
		} else {
			err = s.d.Net.ReleaseTap(ctx, t)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Pool lists the pooled TAPs that exist and who holds each.
func (s *Service) Pool(ctx context.Context) ([]api.PoolTap, error) {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	existing, err := s.d.Net.PoolTaps(ctx)
	if err != nil {
		return nil, err
	}
	vms, err := s.d.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	by := map[string]string{}
	for _, v := range vms {
		if v.Tap != "" {
			by[v.Tap] = v.Name
		}
	}
	out := make([]api.PoolTap, 0, len(existing))
	for _, t := range existing {
		out = append(out, api.PoolTap{Name: t, VM: by[t]})
	}
	return out, nil
}
