package kernel

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
)

// FilesSpec is a kernel given as files rather than as a package.
type FilesSpec struct {
	Kernel string // bzImage (vmlinuz) or ELF vmlinux
	// Initrd, when set, is used as is: it must follow banger's initramfs
	// contract (find the disks, unpack the seed, switch_root). Leave it empty
	// to have banger generate its own from Modules.
	Initrd string
	// Modules is a module directory (lib/modules/<version>) the generated
	// initramfs takes the virtio modules from; empty for a kernel with
	// virtio built in.
	Modules string
	// Config, when set, is the kernel's build configuration (.config),
	// kept beside it so doctor and vm create can check what it has built in.
	Config  string
	Version string // default: from the bzImage header, else the Modules directory name
	Source  string // recorded source; default "files:<kernel path>"
}

var versionRE = regexp.MustCompile(`^[0-9][0-9A-Za-z.+~_-]{0,127}$`)

// ImportFiles stores a kernel given as files (`kernel import --vmlinux`, and
// catalog entries), generating banger's initramfs unless an initrd is given.
func (i *Importer) ImportFiles(ctx context.Context, name string, spec FilesSpec, progress func(stage string)) (Info, error) {
	if progress == nil {
		progress = func(string) {}
	}
	if err := ValidName(name); err != nil {
		return Info{}, err
	}
	dest := i.Layout.Kernel(name)
	if _, err := os.Lstat(dest); err == nil {
		return Info{}, fmt.Errorf("kernel %q: %w", name, api.ErrExists)
	}
	if spec.Initrd != "" && spec.Modules != "" {
		return Info{}, fmt.Errorf("kernel %q: give an initrd or a modules directory, not both: %w", name, api.ErrInvalid)
	}
	for _, f := range []string{spec.Kernel, spec.Initrd, spec.Config} {
		if f == "" {
			continue
		}
		if st, err := os.Stat(f); err != nil || !st.Mode().IsRegular() {
			return Info{}, fmt.Errorf("kernel %q: %s is not a regular file: %w", name, f, api.ErrInvalid)
		}
	}
	if spec.Kernel == "" {
		return Info{}, fmt.Errorf("kernel %q: a kernel file is required: %w", name, api.ErrInvalid)
	}
	if spec.Modules != "" {
		if st, err := os.Stat(spec.Modules); err != nil || !st.IsDir() {
			return Info{}, fmt.Errorf("kernel %q: modules %s is not a directory: %w", name, spec.Modules, api.ErrInvalid)
		}
	}
	if spec.Initrd == "" {
		if err := checkStaticELF(i.AgentPath); err != nil {
			return Info{}, fmt.Errorf("agent binary: %w", err)
		}
	}
	version := spec.Version
	if version == "" {
		version = bzImageVersion(spec.Kernel)
	}
	if version == "" && spec.Modules != "" {
		version = filepath.Base(spec.Modules)
	}
	if version != "" && !versionRE.MatchString(version) {
		return Info{}, fmt.Errorf("kernel %q: bad version %q: %w", name, version, api.ErrInvalid)
	}
	source := spec.Source
	if source == "" {
		source = "files:" + spec.Kernel
	}

	for _, d := range []string{i.Layout.Tmp(), i.Layout.KernelsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return Info{}, err
		}
	}
	tmp, err := os.MkdirTemp(i.Layout.Tmp(), "kernel-"+name+"-")
	if err != nil {
		return Info{}, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Info{}, err
	}
	progress("copy")
	sum, err := copyFile(spec.Kernel, filepath.Join(out, paths.KernelFile), 0o644)
	if err != nil {
		return Info{}, err
	}
	progress("vmlinux")
	hasVmlinux := true
	if err := i.extractVmlinux(ctx, spec.Kernel, filepath.Join(out, VmlinuxFile), tmp); err != nil {
		i.log().WarnContext(ctx, "no uncompressed vmlinux", "err", err)
		hasVmlinux = false
	}
	if spec.Config != "" {
		progress("config")
		if err := storeConfig(spec.Config, out); err != nil {
			return Info{}, fmt.Errorf("kernel %q: %w", name, err)
		}
	}
	var mods []Module
	if spec.Initrd != "" {
		progress("initrd")
		if _, err := copyFile(spec.Initrd, filepath.Join(out, paths.InitrdFile), 0o644); err != nil {
			return Info{}, err
		}
	} else {
		if spec.Modules != "" {
			progress("modules")
			if mods, err = i.resolveModulesIn(ctx, spec.Modules, filepath.Join(tmp, "ko")); err != nil {
				return Info{}, err
			}
		}
		progress("initramfs")
		if err := i.writeInitramfs(filepath.Join(out, paths.InitrdFile), mods); err != nil {
			return Info{}, err
		}
	}
	progress("finalize")
	info := Info{Name: name, Version: version, Source: source,
		Kernel: filepath.Join(dest, paths.KernelFile), Initrd: filepath.Join(dest, paths.InitrdFile),
		SHA256: sum, Modules: make([]string, 0, len(mods)), Imported: time.Now().UTC().Truncate(time.Second)}
	for _, m := range mods {
		info.Modules = append(info.Modules, m.Name)
	}
	if hasVmlinux {
		info.Vmlinux = filepath.Join(dest, VmlinuxFile)
	}
	if spec.Config != "" {
		info.Config = filepath.Join(dest, paths.KernelConfig)
	}
	if err := writeMeta(out, info); err != nil {
		return Info{}, err
	}
	if err := commit(ctx, out, dest, name); err != nil {
		return Info{}, err
	}
	i.log().InfoContext(ctx, "kernel imported", "name", name, "version", version, "source", source, "modules", len(mods))
	return info, nil
}

// commit moves a fully built kernel dir into place. rename(2) of a directory
// onto an existing non-empty one fails, so a concurrent import of the same
// name loses cleanly here.
func commit(ctx context.Context, out, dest, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Rename(out, dest); err != nil {
		if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("kernel %q: %w", name, api.ErrExists)
		}
		return fmt.Errorf("store kernel %q: %w", name, err)
	}
	return nil
}

func writeMeta(dir string, info Info) error {
	meta, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, paths.KernelMeta), append(meta, '\n'), 0o644)
}

// SetSource rewrites the recorded source of a stored kernel.
func SetSource(layout paths.Layout, name, source string) (Info, error) {
	info, err := Load(layout, name)
	if err != nil {
		return Info{}, err
	}
	info.Source = source
	return info, writeMeta(layout.Kernel(name), info)
}

// bzImageVersion reads the version string the x86 boot protocol header
// points at (kernel_version at 0x20E, relative to 0x200); "" when absent.
func bzImageVersion(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	hdr := make([]byte, 64<<10)
	n, _ := io.ReadFull(f, hdr)
	hdr = hdr[:n]
	if len(hdr) < 0x210 || string(hdr[0x202:0x206]) != "HdrS" {
		return ""
	}
	off := int(binary.LittleEndian.Uint16(hdr[0x20E:])) + 0x200
	if off <= 0x200 || off >= len(hdr) {
		return ""
	}
	s := hdr[off:]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	if f := bytes.Fields(s); len(f) > 0 && versionRE.Match(f[0]) {
		return string(f[0])
	}
	return ""
}
