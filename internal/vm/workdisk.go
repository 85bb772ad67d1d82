package vm

import (
	"context"
	"fmt"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/store"
)

// checkWorkGrow validates `vm set --work-disk SIZE` for the stopped VM v and
// returns the new size in bytes, or 0 when SIZE is the current size. The work
// disk only grows, and only a raw one: resize2fs works on the file itself,
// and a VM restored from a snapshot onto a qcow2 overlay has no raw file to
// give it.
func (s *Service) checkWorkGrow(ctx context.Context, v store.VM, want string) (int64, error) {
	size, err := disk.ParseSize(want)
	if err != nil {
		return 0, fmt.Errorf("vm %q: work disk: %w", v.Name, err)
	}
	switch {
	case size%1024 != 0:
		return 0, fmt.Errorf("vm %q: work disk %d bytes: must be a multiple of 1 KiB: %w", v.Name, size, api.ErrInvalid)
	case size < v.WorkDiskBytes:
		return 0, fmt.Errorf("vm %q: work disk %s is smaller than its current %s (a work disk only grows): %w",
			v.Name, disk.FormatSize(size), disk.FormatSize(v.WorkDiskBytes), api.ErrInvalid)
	case size == v.WorkDiskBytes:
		return 0, nil
	}
	st, err := s.d.Store.SnapshotState(ctx, v.ID)
	if err != nil {
		return 0, err
	}
	if f := formatOr(st.WorkFormat); f != disk.FormatRaw {
		return 0, fmt.Errorf("vm %q: its work disk is a %s overlay (the vm was restored from a snapshot); only a raw work disk can grow: %w",
			v.Name, f, api.ErrInvalid)
	}
	return size, nil
}

// growWork grows the stopped VM's work disk to size (the caller holds the
// VM's lock) with disk.GrowCopy: checked, extended and resized on a clone
// that replaces the disk only once it checks clean, so a failure leaves the
// guest's files as they were. What a daemon killed during an earlier grow
// left next to the disk goes first.
func (s *Service) growWork(ctx context.Context, v store.VM, size int64) error {
	path := s.workPath(v)
	if err := disk.RemoveTemps(path); err != nil {
		return fmt.Errorf("vm %q: work disk: %w", v.Name, err)
	}
	if err := disk.GrowCopy(ctx, s.d.Runner, path, size); err != nil {
		return fmt.Errorf("vm %q: work disk: %w", v.Name, err)
	}
	return nil
}
