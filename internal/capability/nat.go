package capability

import (
	"context"

	"github.com/banger-dev/banger/internal/api"
)

// NAT is the `nat` capability: the same as `vm create --nat` (masquerade the
// guest's traffic beyond the bridge), for those who list what a VM gets as
// capabilities. The firewall step of every start applies it; it has no
// hooks of its own.
type NAT struct{}

func (NAT) Info() Info {
	return Info{Name: "nat", Summary: "the guest reaches the networks beyond the host, masqueraded (the same as --nat); private ranges stay blocked unless --nat-private"}
}

func (NAT) Configure(p *api.CreateVMParams, version string) error {
	p.NAT = true
	return nil
}

func (NAT) Prepare(ctx context.Context, vm VM) error            { return nil }
func (NAT) PostStart(ctx context.Context, vm VM, g Guest) error { return nil }
func (NAT) Cleanup(ctx context.Context, vm VM) error            { return nil }
func (NAT) Connect(vm VM, host string) Connection               { return Connection{} }
