package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/kernel"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
)

// ReconcileArtifacts resolves what an interrupted image or kernel commit (or
// removal) left, so that every name can be rebuilt or removed again:
//
//   - staging and trash directories are deleted;
//   - a complete directory (metadata and files present) without a row is
//     adopted: its row is recreated from the metadata;
//   - an incomplete directory without a row is deleted, unless a VM or a
//     snapshot depends on it (store.CheckImageUnused: its file may back
//     their qcow2 root disks);
//   - a row whose directory is missing is deleted, unless a VM still names
//     it (then it is reported and kept: `vm show` must not point at nothing,
//     and `rm` refuses it for the same reason); a row whose directory is
//     there but incomplete is only reported (`rm` removes it).
//
// Call it at daemon start, before serving: one daemon owns a state dir and no
// build or import is running yet.
func (dm *Daemon) ReconcileArtifacts(ctx context.Context) error {
	log := dm.log()
	var errs []error
	if gone, err := image.RemoveStaleStaging(dm.d.Layout); err != nil || len(gone) > 0 {
		log.Info("stale image staging removed", "dirs", gone, "err", err)
		errs = append(errs, err)
	}
	if gone, err := kernel.RemoveStale(dm.d.Layout); err != nil || len(gone) > 0 {
		log.Info("stale kernel staging removed", "dirs", gone, "err", err)
		errs = append(errs, err)
	}
	vms, err := dm.d.Store.ListVMs(ctx)
	if err != nil {
		return err
	}
	errs = append(errs, dm.reconcileImages(ctx, log, vms), dm.reconcileKernels(ctx, log, vms))
	return errors.Join(errs...)
}

func (dm *Daemon) log() *slog.Logger {
	if dm.d.Log != nil {
		return dm.d.Log
	}
	return slog.New(slog.DiscardHandler)
}

// dirNames lists the subdirectories of dir that valid names the check accepts.
func dirNames(dir string, valid func(string) error) (map[string]bool, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, e := range ents {
		if e.IsDir() && valid(e.Name()) == nil {
			out[e.Name()] = true
		}
	}
	return out, nil
}

func (dm *Daemon) reconcileImages(ctx context.Context, log *slog.Logger, vms []store.VM) error {
	l := dm.d.Layout
	dirs, err := dirNames(l.ImagesDir(), image.ValidateName)
	if err != nil {
		return err
	}
	rows, err := dm.d.Store.ListImages(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rows {
		_, lerr := image.Load(l, r.Name)
		delete(dirs, r.Name)
		if lerr == nil {
			continue
		}
		if _, err := os.Lstat(l.Image(r.Name)); err == nil {
			// Files with a row but incomplete: never deleted behind the
			// user's back; `image rm` removes them.
			log.Warn("image directory incomplete; remove it with `banger image rm`", "image", r.Name, "err", lerr)
			continue
		}
		if user := usedBy(vms, func(v store.VM) bool { return v.Image == r.Name }); user != "" {
			log.Warn("image files missing or incomplete; kept because a vm uses it", "image", r.Name, "vm", user, "err", lerr)
			continue
		}
		log.Warn("image files missing or incomplete; record removed", "image", r.Name, "err", lerr)
		if err := dm.d.Store.DeleteImage(ctx, r.Name); err != nil {
			errs = append(errs, err)
		}
		if err := image.Remove(l, r.Name); err != nil && !errors.Is(err, api.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	for name := range dirs {
		info, lerr := image.Load(l, name)
		if lerr != nil {
			// A file that a VM's root disk reads through stays, complete or not.
			if err := dm.d.Store.CheckImageUnused(ctx, name, filepath.Join(l.Image(name), paths.RootfsFile)); err != nil {
				log.Warn("incomplete image directory kept", "image", name, "err", lerr, "reason", err)
				continue
			}
			log.Warn("incomplete image directory removed", "image", name, "err", lerr)
			if err := image.Remove(l, name); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		img := store.Image{Name: name, Source: info.Source, Path: filepath.Join(l.Image(name), paths.RootfsFile), SizeBytes: info.Size}
		if err := dm.d.Store.CreateImage(ctx, &img); err != nil {
			errs = append(errs, fmt.Errorf("adopt image %q: %w", name, err))
			continue
		}
		log.Info("image directory without a record adopted", "image", name, "source", info.Source)
	}
	return errors.Join(errs...)
}

// kernelComplete loads a kernel directory's metadata and checks its files.
func kernelComplete(l paths.Layout, name string) (kernel.Info, error) {
	info, err := kernel.Load(l, name)
	if err != nil {
		return info, err
	}
	for _, f := range []string{info.Kernel, info.Vmlinux, info.Initrd} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return info, fmt.Errorf("kernel %q: %w", name, err)
		}
	}
	if info.Kernel == "" {
		return info, fmt.Errorf("kernel %q: no kernel file recorded: %w", name, api.ErrNotFound)
	}
	return info, nil
}

func (dm *Daemon) reconcileKernels(ctx context.Context, log *slog.Logger, vms []store.VM) error {
	l := dm.d.Layout
	dirs, err := dirNames(l.KernelsDir(), kernel.ValidName)
	if err != nil {
		return err
	}
	rows, err := dm.d.Store.ListKernels(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rows {
		_, lerr := kernelComplete(l, r.Name)
		delete(dirs, r.Name)
		if lerr == nil {
			continue
		}
		if _, err := os.Lstat(l.Kernel(r.Name)); err == nil {
			// Files with a row but incomplete: never deleted behind the
			// user's back; `kernel rm` removes them.
			log.Warn("kernel directory incomplete; remove it with `banger kernel rm`", "kernel", r.Name, "err", lerr)
			continue
		}
		if user := usedBy(vms, func(v store.VM) bool { return v.Kernel == r.Name }); user != "" {
			log.Warn("kernel files missing or incomplete; kept because a vm uses it", "kernel", r.Name, "vm", user, "err", lerr)
			continue
		}
		log.Warn("kernel files missing or incomplete; record removed", "kernel", r.Name, "err", lerr)
		if err := dm.d.Store.DeleteKernel(ctx, r.Name); err != nil {
			errs = append(errs, err)
		}
		if err := kernel.Remove(l, r.Name); err != nil && !errors.Is(err, api.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	for name := range dirs {
		info, lerr := kernelComplete(l, name)
		if lerr != nil {
			log.Warn("incomplete kernel directory removed", "kernel", name, "err", lerr)
			if err := kernel.Remove(l, name); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		info.Name = name
		path := info.Kernel
		if info.Vmlinux != "" {
			path = info.Vmlinux
		}
		k := store.Kernel{Name: name, Version: info.Version, Source: info.Source, Path: path, Initrd: info.Initrd, SHA256: info.SHA256}
		if err := dm.d.Store.CreateKernel(ctx, &k); err != nil {
			errs = append(errs, fmt.Errorf("adopt kernel %q: %w", name, err))
			continue
		}
		log.Info("kernel directory without a record adopted", "kernel", name, "source", info.Source)
	}
	return errors.Join(errs...)
}

func usedBy(vms []store.VM, uses func(store.VM) bool) string {
	for _, v := range vms {
		if uses(v) {
			return v.Name
		}
	}
	return ""
}
