package daemon

import (
	"context"
	"fmt"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vm"
)

func (dm *Daemon) registerSnapshot(srv *rpc.Server) {
	srv.Handle(api.MethodVMPause, dm.vmPause)
	srv.Handle(api.MethodVMResume, dm.vmResume)
	srv.Handle(api.MethodVMSnapshot, dm.vmSnapshot)
	srv.Handle(api.MethodVMFork, dm.vmFork)
	srv.Handle(api.MethodSnapshotList, dm.snapshotList)
	srv.Handle(api.MethodSnapshotRm, dm.snapshotRm)
	srv.Handle(api.MethodImageWarm, dm.imageWarm)
}

func (dm *Daemon) vmPause(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	v, err := dm.d.VMs.Pause(context.WithoutCancel(ctx), n)
	if err != nil {
		return nil, err
	}
	return dm.d.VMs.View(v), nil
}

func (dm *Daemon) vmResume(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	v, err := dm.d.VMs.Resume(context.WithoutCancel(ctx), n)
	if err != nil {
		return nil, err
	}
	return dm.d.VMs.View(v), nil
}

func (dm *Daemon) vmSnapshot(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.SnapshotVMParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Name == "" || p.Snapshot == "" {
		return nil, fmt.Errorf("vm name and snapshot name are required: %w", api.ErrInvalid)
	}
	sn, err := detached(ctx, c, func(ctx context.Context, pr vm.Progress) (store.Snapshot, error) {
		return dm.d.VMs.Snapshot(ctx, p.Name, p.Snapshot, pr)
	})
	if err != nil {
		return nil, err
	}
	return dm.d.VMs.SnapshotView(ctx, sn), nil
}

func (dm *Daemon) vmFork(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.ForkParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Name == "" {
		return nil, fmt.Errorf("name is required: %w", api.ErrInvalid)
	}
	vms, err := detached(ctx, c, func(ctx context.Context, pr vm.Progress) ([]store.VM, error) {
		return dm.d.VMs.Fork(ctx, p, pr)
	})
	if len(vms) == 0 && err != nil {
		return nil, err
	}
	out := make([]api.VM, 0, len(vms))
	for _, v := range vms {
		out = append(out, dm.d.VMs.View(v))
	}
	if err != nil {
		// Some children exist: say which, and why the others do not.
		return nil, fmt.Errorf("forked %d of %d: %w", len(vms), p.Count, err)
	}
	return out, nil
}

func (dm *Daemon) snapshotList(ctx context.Context, c *rpc.Call) (any, error) {
	sns, err := dm.d.VMs.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Snapshot, 0, len(sns))
	for _, sn := range sns {
		out = append(out, dm.d.VMs.SnapshotView(ctx, sn))
	}
	return out, nil
}

func (dm *Daemon) snapshotRm(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	return nil, dm.d.VMs.DeleteSnapshot(context.WithoutCancel(ctx), n)
}

func (dm *Daemon) imageWarm(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.ImageWarmParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Image == "" {
		p.Image = vm.DefaultImage
	}
	sn, err := detached(ctx, c, func(ctx context.Context, pr vm.Progress) (store.Snapshot, error) {
		return dm.d.VMs.Warm(ctx, p.Image, pr)
	})
	if err != nil {
		return nil, err
	}
	return dm.d.VMs.SnapshotView(ctx, sn), nil
}
