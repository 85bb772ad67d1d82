package vm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/store"
)

// How root disks are made (Deps.DiskClone, bangerd --disk-clone).
const (
	// DiskCloneAuto: FICLONE where the file system can, else a qcow2
	// overlay on the image's file when the VMM is QEMU, else a full copy.
	DiskCloneAuto = "auto"
	// DiskCloneCopy: FICLONE, else a full (hole-preserving) copy; never an
	// overlay. The method before overlays, kept as a benchmark baseline.
	DiskCloneCopy = "copy"
)

// ValidDiskClone reports whether m is a DiskClone value bangerd accepts.
func ValidDiskClone(m string) bool { return m == DiskCloneAuto || m == DiskCloneCopy }

// overlayDriver is the VMM that opens qcow2 (Firecracker takes raw only).
const overlayDriver = "qemu"

// makeRootDisk is the create step `root_disk`: v's root disk from img, its
// method, format and backing recorded in the row before anything else runs,
// so the row never points at a disk of another format and image rm sees the
// dependency from the start.
//
// A disk larger than the image (`--disk`) is a clone or full copy grown
// offline (e2fsck + truncate + resize2fs), which needs a raw file: growing
// a qcow2 overlay would need the guest to grow its file system itself.
func (s *Service) makeRootDisk(ctx context.Context, v *store.VM, img store.Image) error {
	grow := v.DiskBytes > img.SizeBytes
	overlay := !grow && s.overlays(v.VMM)
	src, err := filepath.Abs(img.Path)
	if err != nil {
		return err
	}
	m, format, err := disk.Layer(ctx, s.d.Runner, src, disk.FormatRaw, s.rootPath(*v), overlay)
	if err != nil {
		return err
	}
	v.CloneMethod, v.RootFormat, v.RootBacking = string(m), format, ""
	if m == disk.MethodQcow2 {
		v.RootBacking = src
		// image rm deletes the image's row, then its file, and refuses once
		// this VM's row (inserted before this step) exists. The row still
		// being there now therefore means the file stays.
		cur, err := s.d.Store.GetImage(ctx, img.Name)
		if err != nil && !errors.Is(err, api.ErrNotFound) {
			return err
		}
		if err != nil || filepath.Clean(cur.Path) != filepath.Clean(img.Path) {
			return fmt.Errorf("image %q was removed while vm %q was being created: %w", img.Name, v.Name, api.ErrNotFound)
		}
	}
	if err := s.d.Store.UpdateVM(ctx, v); err != nil {
		return err
	}
	if grow {
		return disk.Grow(ctx, s.d.Runner, s.rootPath(*v), v.DiskBytes)
	}
	return nil
}
