package daemon

import (
	"context"
	"fmt"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vm"
)

// registerNet installs the host-networking methods: vm.set, vm.ports.
func (dm *Daemon) registerNet(srv *rpc.Server) {
	srv.Handle(api.MethodVMSet, dm.vmSet)
	srv.Handle(api.MethodVMPorts, dm.vmPorts)
}

func (dm *Daemon) vmSet(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.SetVMParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Name == "" {
		return nil, fmt.Errorf("name is required: %w", api.ErrInvalid)
	}
	// Detached: growing a work disk copies it and may take a while; a
	// client that hangs up does not undo it, a daemon shutdown does.
	v, err := detached(ctx, c, func(ctx context.Context, _ vm.Progress) (store.VM, error) {
		return dm.d.VMs.Set(ctx, p)
	})
	if err != nil {
		return nil, err
	}
	return dm.d.VMs.View(v), nil
}

func (dm *Daemon) vmPorts(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	return dm.d.VMs.Ports(ctx, n)
}
