package daemon

import (
	"context"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
)

// registerStats installs vm.stats.
func (dm *Daemon) registerStats(srv *rpc.Server) {
	srv.Handle(api.MethodVMStats, dm.vmStats)
}

func (dm *Daemon) vmStats(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.StatsParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	return dm.d.VMs.Stats(ctx, p.Name)
}
