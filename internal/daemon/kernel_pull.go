package daemon

import (
	"context"
	"fmt"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/kernel"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vm"
)

func (dm *Daemon) kernelPull(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.KernelPullParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Entry == "" || p.Catalog == "" {
		return nil, fmt.Errorf("a kernel name and a catalog URL (--catalog or BANGER_KERNEL_CATALOG) are required: %w", api.ErrInvalid)
	}
	name := p.Name
	if name == "" {
		name = p.Entry
	}
	if _, err := dm.d.Store.GetKernel(ctx, name); err == nil {
		return nil, fmt.Errorf("kernel %q: %w", name, api.ErrExists)
	}
	return detached(ctx, c, func(ctx context.Context, _ vm.Progress) (api.Kernel, error) {
		pl := &kernel.Puller{Importer: dm.d.Kernels, Insecure: p.Insecure}
		info, err := pl.Pull(ctx, p.Catalog, p.Entry, name, func(ev kernel.PullProgress) {
			_ = c.Event(api.Event{Stage: ev.Stage, Message: ev.Message, Current: ev.Current, Total: ev.Total})
		})
		if err != nil {
			return api.Kernel{}, err
		}
		return dm.recordKernel(ctx, info)
	})
}

func (dm *Daemon) kernelImportFiles(ctx context.Context, c *rpc.Call, p api.KernelImportParams) (any, error) {
	if p.Debian || p.Deb != "" {
		return nil, fmt.Errorf("--vmlinux excludes --debian and --deb: %w", api.ErrInvalid)
	}
	name := p.Name
	if name == "" {
		return nil, fmt.Errorf("--name is required with --vmlinux: %w", api.ErrInvalid)
	}
	if _, err := dm.d.Store.GetKernel(ctx, name); err == nil {
		return nil, fmt.Errorf("kernel %q: %w", name, api.ErrExists)
	}
	return detached(ctx, c, func(ctx context.Context, pr vm.Progress) (api.Kernel, error) {
		info, err := dm.d.Kernels.ImportFiles(ctx, name, kernel.FilesSpec{Kernel: p.Vmlinux, Initrd: p.Initrd, Modules: p.Modules, Config: p.Config},
			func(stage string) { pr(stage, "") })
		if err != nil {
			return api.Kernel{}, err
		}
		return dm.recordKernel(ctx, info)
	})
}

// recordKernel stores a kernel's row; the files go if that fails.
func (dm *Daemon) recordKernel(ctx context.Context, info kernel.Info) (api.Kernel, error) {
	// As kernel import does: boot the uncompressed vmlinux when there is one.
	path := info.Kernel
	if info.Vmlinux != "" {
		path = info.Vmlinux
	}
	k := store.Kernel{Name: info.Name, Version: info.Version, Source: info.Source, Path: path, Initrd: info.Initrd, SHA256: info.SHA256}
	if err := dm.d.Store.CreateKernel(ctx, &k); err != nil {
		_ = kernel.Remove(dm.d.Layout, info.Name)
		return api.Kernel{}, err
	}
	return kernelView(k), nil
}
