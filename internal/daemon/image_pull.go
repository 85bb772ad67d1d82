package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vm"
)

func (dm *Daemon) imagePull(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.ImagePullParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Ref == "" {
		return nil, fmt.Errorf("an image reference is required: %w", api.ErrInvalid)
	}
	var size int64
	if p.Size != "" {
		var err error
		if size, err = disk.ParseSize(p.Size); err != nil {
			return nil, err
		}
	}
	if p.KernelRef != "" {
		if _, err := dm.d.Store.GetKernel(ctx, p.KernelRef); err != nil {
			return nil, fmt.Errorf("kernel %q: %w", p.KernelRef, err)
		}
	}
	return detached(ctx, c, func(ctx context.Context, _ vm.Progress) (api.ImagePullResult, error) {
		res, err := dm.d.Images.Pull(ctx, image.PullOptions{Ref: p.Ref, Name: p.Name, Size: size, Insecure: p.Insecure},
			func(ev image.PullEvent) {
				_ = c.Event(api.Event{Stage: ev.Stage, Message: ev.Message, Current: ev.Current, Total: ev.Total})
			})
		if err != nil {
			return api.ImagePullResult{}, err
		}
		name := res.Info.Name
		if res.Unchanged {
			if img, err := dm.d.Store.GetImage(ctx, name); err == nil {
				return api.ImagePullResult{Image: pulledView(img, res.Info), Unchanged: true}, nil
			} else if !errors.Is(err, api.ErrNotFound) {
				return api.ImagePullResult{}, err
			}
			// On disk but not recorded (a crash between the two): record it now.
		}
		img := store.Image{Name: name, Source: res.Info.Source, Path: dm.d.Layout.Image(name) + "/" + paths.RootfsFile,
			KernelRef: p.KernelRef, SizeBytes: res.Info.Size}
		if err := dm.d.Store.CreateImage(ctx, &img); err != nil {
			if !res.Unchanged {
				_ = image.Remove(dm.d.Layout, name)
			}
			return api.ImagePullResult{}, err
		}
		return api.ImagePullResult{Image: pulledView(img, res.Info), Unchanged: res.Unchanged, Skipped: res.Skipped, SkippedCount: res.SkippedCount}, nil
	})
}

func pulledView(img store.Image, info image.Info) api.Image {
	v := imageView(img)
	v.Digest, v.FirstBoot = info.Digest, info.FirstBoot
	return v
}

// withImageMeta adds what the image's own record (image.json) knows.
func (dm *Daemon) withImageMeta(v api.Image) api.Image {
	if info, err := image.Load(dm.d.Layout, v.Name); err == nil {
		v.Digest, v.FirstBoot = info.Digest, info.FirstBoot
	}
	return v
}
