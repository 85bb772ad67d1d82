package daemon

import (
	"context"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/capability"
	"github.com/banger-dev/banger/internal/rpc"
)

// versioner is a capability whose `NAME@VERSION` may leave the version
// to its default.
type versioner interface{ EffectiveVersion(version string) string }

// capList is the registry with what each capability keeps cached on the
// host and which VMs use each entry (a VM uses the version it was created
// with until it is deleted).
func (dm *Daemon) capList(ctx context.Context, c *rpc.Call) (any, error) {
	out := []api.Capability{}
	if dm.d.Caps == nil {
		return out, nil
	}
	users, err := dm.d.Store.CapabilityUsers(ctx)
	if err != nil {
		return nil, err
	}
	for _, info := range dm.d.Caps.List() {
		ac := api.Capability{Name: info.Name, Summary: info.Summary, Needs: info.Needs, Port: info.Port,
			Version: info.Version, Versioned: info.Versioned}
		hook, err := dm.d.Caps.Lookup(info.Name)
		if err != nil {
			return nil, err
		}
		if cacher, ok := hook.(capability.Cacher); ok {
			files, err := cacher.Cached()
			if err != nil {
				return nil, err
			}
			for _, f := range files {
				e := api.CapCache{Package: f.Package, Version: f.Version, Integrity: f.Integrity, SHA256: f.SHA256,
					Size: f.Size, Path: f.Path, UsedBy: []string{}}
				for _, u := range users {
					if u.Name != info.Name {
						continue
					}
					v := u.Version
					if vr, ok := hook.(versioner); ok {
						v = vr.EffectiveVersion(v)
					}
					if v == f.Version {
						e.UsedBy = append(e.UsedBy, u.VMName)
					}
				}
				ac.Cached = append(ac.Cached, e)
			}
		}
		out = append(out, ac)
	}
	return out, nil
}
