// Package kernel imports guest kernels (Debian cloud kernel packages) into
// banger's kernel store and generates the initramfs that loads the virtio
// modules a modular distro kernel needs, with banger-agent as /init.
package kernel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/agentinit"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
)

// MetaPackage is the Debian meta package that depends on the current cloud kernel.
const MetaPackage = "linux-image-cloud-amd64"

// WantedModules are the modules a QEMU microvm / Firecracker guest needs
// before it can mount its root disk and reach the host. Their dependencies
// are added automatically; built-in ones are skipped.
var WantedModules = []string{
	"virtio", "virtio_ring", "virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net",
	"vsock", "vmw_vsock_virtio_transport", "virtio_console", "virtio_rng",
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidName reports whether name is usable as a kernel name.
func ValidName(name string) error {
	if !nameRE.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("kernel name %q: must match %s: %w", name, nameRE, api.ErrInvalid)
	}
	return nil
}

// Importer turns kernel packages into entries of the kernel store.
type Importer struct {
	Runner    system.Runner
	Layout    paths.Layout
	Log       *slog.Logger
	AgentPath string // static banger-agent; becomes /init in the initramfs
}

// Info is the metadata of a stored kernel (kernel.json).
type Info struct {
	Name     string    `json:"name"`
	Version  string    `json:"version"`
	Source   string    `json:"source"`
	Kernel   string    `json:"kernel"`
	Initrd   string    `json:"initrd"`
	Vmlinux  string    `json:"vmlinux,omitempty"` // uncompressed ELF; empty when it could not be extracted
	Config   string    `json:"config,omitempty"`  // build configuration (paths.KernelConfig); empty when not known
	SHA256   string    `json:"sha256"`
	Modules  []string  `json:"modules"`
	Imported time.Time `json:"imported"`
}

func (i *Importer) log() *slog.Logger {
	if i.Log != nil {
		return i.Log
	}
	return slog.New(slog.DiscardHandler)
}

var versionedRE = regexp.MustCompile(`^linux-image-[0-9][0-9a-z.+~-]*-cloud-amd64$`)

// DownloadDebian resolves the cloud kernel meta package to its versioned
// package and fetches that .deb into dir with apt-get download.
func (i *Importer) DownloadDebian(ctx context.Context, dir string) (string, error) {
	out, err := i.Runner.Run(ctx, "apt-cache", "depends", MetaPackage)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", MetaPackage, err)
	}
	pkg := ""
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || strings.TrimLeft(k, "|") != "Depends" {
			continue
		}
		if v = strings.TrimSpace(v); versionedRE.MatchString(v) {
			pkg = v
			break
		}
	}
	if pkg == "" {
		return "", fmt.Errorf("resolve %s: no linux-image-*-cloud-amd64 dependency in apt-cache output: %w", MetaPackage, api.ErrNotFound)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	i.log().InfoContext(ctx, "downloading kernel package", "package", pkg, "dir", dir)
	// apt-get download writes into the working directory; env -C sets it
	// without a shell.
	if _, err := i.Runner.Run(ctx, "env", "-C", dir, "apt-get", "download", pkg); err != nil {
		return "", fmt.Errorf("download %s: %w", pkg, err)
	}
	matches, err := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if err != nil {
		return "", err
	}
	if len(matches) == 0 {
		return "", fmt.Errorf("download %s: no .deb appeared in %s", pkg, dir)
	}
	// Several versions may be cached; the newest file is the one just fetched.
	sort.Slice(matches, func(a, b int) bool {
		sa, _ := os.Stat(matches[a])
		sb, _ := os.Stat(matches[b])
		return sa != nil && sb != nil && sa.ModTime().After(sb.ModTime())
	})
	return matches[0], nil
}

// ImportDeb unpacks a Debian kernel package and stores it as name: the
// kernel, a generated initramfs and kernel.json. It is atomic: on failure
// nothing is left at Layout.Kernel(name).
func (i *Importer) ImportDeb(ctx context.Context, name, debPath string, progress func(stage string)) (Info, error) {
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
	if st, err := os.Stat(debPath); err != nil || !st.Mode().IsRegular() {
		return Info{}, fmt.Errorf("kernel package %s: not a regular file: %w", debPath, api.ErrInvalid)
	}
	if err := checkStaticELF(i.AgentPath); err != nil {
		return Info{}, fmt.Errorf("agent binary: %w", err)
	}
	if err := os.MkdirAll(i.Layout.Tmp(), 0o700); err != nil {
		return Info{}, err
	}
	if err := os.MkdirAll(i.Layout.KernelsDir(), 0o700); err != nil {
		return Info{}, err
	}
	tmp, err := os.MkdirTemp(i.Layout.Tmp(), "kernel-"+name+"-")
	if err != nil {
		return Info{}, err
	}
	defer os.RemoveAll(tmp)

	progress("extract")
	x := filepath.Join(tmp, "x")
	if _, err := i.Runner.Run(ctx, "dpkg-deb", "-x", debPath, x); err != nil {
		return Info{}, fmt.Errorf("extract %s: %w", debPath, err)
	}
	vmlinuz, version, err := findKernel(x)
	if err != nil {
		return Info{}, err
	}
	out := filepath.Join(tmp, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Info{}, err
	}
	sum, err := copyFile(vmlinuz, filepath.Join(out, paths.KernelFile), 0o644)
	if err != nil {
		return Info{}, err
	}

	progress("vmlinux")
	hasVmlinux := true
	if err := i.extractVmlinux(ctx, vmlinuz, filepath.Join(out, VmlinuxFile), tmp); err != nil {
		// Not fatal: QEMU boots the bzImage; only Firecracker needs this.
		i.log().WarnContext(ctx, "no uncompressed vmlinux", "err", err)
		hasVmlinux = false
	}
	// Debian ships the build configuration beside the kernel; it tells
	// whether a VMM's needs are built in (doctor, vm create --vmm).
	hasConfig := true
	if err := storeConfig(filepath.Join(filepath.Dir(vmlinuz), "config-"+version), out); err != nil {
		i.log().WarnContext(ctx, "kernel build configuration not kept", "err", err)
		hasConfig = false
	}

	progress("modules")
	mods, err := i.resolveModules(ctx, x, version, filepath.Join(tmp, "ko"))
	if err != nil {
		return Info{}, err
	}

	progress("initramfs")
	if err := i.writeInitramfs(filepath.Join(out, paths.InitrdFile), mods); err != nil {
		return Info{}, err
	}

	progress("finalize")
	info := Info{
		Name:     name,
		Version:  version,
		Source:   "deb:" + filepath.Base(debPath),
		Kernel:   filepath.Join(dest, paths.KernelFile),
		Initrd:   filepath.Join(dest, paths.InitrdFile),
		SHA256:   sum,
		Modules:  make([]string, 0, len(mods)),
		Imported: time.Now().UTC().Truncate(time.Second),
	}
	for _, m := range mods {
		info.Modules = append(info.Modules, m.Name)
	}
	if hasVmlinux {
		info.Vmlinux = filepath.Join(dest, VmlinuxFile)
	}
	if hasConfig {
		info.Config = filepath.Join(dest, paths.KernelConfig)
	}
	if err := writeMeta(out, info); err != nil {
		return Info{}, err
	}
	if err := commit(ctx, out, dest, name); err != nil {
		return Info{}, err
	}
	i.log().InfoContext(ctx, "kernel imported", "name", name, "version", version, "modules", len(mods))
	return info, nil
}

// Load reads a stored kernel's metadata.
func Load(layout paths.Layout, name string) (Info, error) {
	if err := ValidName(name); err != nil {
		return Info{}, err
	}
	data, err := os.ReadFile(filepath.Join(layout.Kernel(name), paths.KernelMeta))
	if errors.Is(err, fs.ErrNotExist) {
		return Info{}, fmt.Errorf("kernel %q: %w", name, api.ErrNotFound)
	}
	if err != nil {
		return Info{}, fmt.Errorf("kernel %q: %w", name, err)
	}
	var info Info
	if err := json.Unmarshal(data, &info); err != nil {
		return Info{}, fmt.Errorf("kernel %q: parse %s: %w", name, paths.KernelMeta, err)
	}
	return info, nil
}

// Remove deletes a stored kernel. Whether a VM still uses it is the
// caller's concern.
func Remove(layout paths.Layout, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	dir := layout.Kernel(name)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("kernel %q: %w", name, api.ErrNotFound)
	}
	// Rename first so a half-deleted directory never looks like a kernel. The
	// trash name is unique: what an interrupted removal left (see
	// RemoveStale) never blocks the next one.
	trash, err := os.MkdirTemp(layout.KernelsDir(), TrashPrefix+name+"-")
	if err != nil {
		return fmt.Errorf("remove kernel %q: %w", name, err)
	}
	if err := os.Rename(dir, filepath.Join(trash, "kernel")); err != nil {
		os.Remove(trash)
		return fmt.Errorf("remove kernel %q: %w", name, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("remove kernel %q: %w", name, err)
	}
	return nil
}

// TrashPrefix starts the names of kernel directories being removed.
const TrashPrefix = ".remove-"

// RemoveStale deletes what interrupted imports and removals left: staging
// trees in Layout.Tmp() ("kernel-*", "modules-*", "deb-*") and trash in the
// kernels directory. Call it at daemon start, before any import can run.
func RemoveStale(layout paths.Layout) ([]string, error) {
	var removed []string
	var errs []error
	for _, d := range []struct {
		dir      string
		prefixes []string
	}{
		{layout.Tmp(), []string{"kernel-", "modules-", "deb-"}},
		{layout.KernelsDir(), []string{TrashPrefix}},
	} {
		ents, err := os.ReadDir(d.dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range ents {
			for _, pre := range d.prefixes {
				if strings.HasPrefix(e.Name(), pre) {
					p := filepath.Join(d.dir, e.Name())
					if err := os.RemoveAll(p); err != nil {
						errs = append(errs, err)
					} else {
						removed = append(removed, p)
					}
					break
				}
			}
		}
	}
	return removed, errors.Join(errs...)
}

// findKernel locates boot/vmlinuz-<version> in an extracted package.
func findKernel(root string) (path, version string, err error) {
	matches, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(matches) != 1 {
		return "", "", fmt.Errorf("kernel package: want exactly one boot/vmlinuz-*, found %d: %w", len(matches), api.ErrInvalid)
	}
	version = strings.TrimPrefix(filepath.Base(matches[0]), "vmlinuz-")
	if version == "" || strings.ContainsAny(version, "/\x00") {
		return "", "", fmt.Errorf("kernel package: bad version %q: %w", version, api.ErrInvalid)
	}
	st, err := os.Lstat(matches[0])
	if err != nil || !st.Mode().IsRegular() {
		return "", "", fmt.Errorf("kernel package: %s is not a regular file: %w", matches[0], api.ErrInvalid)
	}
	return matches[0], version, nil
}

// moduleDir finds lib/modules/<version> (usr/lib on merged-/usr packages).
func moduleDir(root, version string) (string, bool) {
	for _, p := range []string{"lib/modules", "usr/lib/modules"} {
		d := filepath.Join(root, p, version)
		if st, err := os.Lstat(d); err == nil && st.IsDir() {
			return d, true
		}
	}
	return "", false
}

// resolveModules indexes the package's modules and returns the wanted ones
// plus dependencies in load order, decompressed into koDir where needed.
func (i *Importer) resolveModules(ctx context.Context, root, version, koDir string) ([]Module, error) {
	dir, ok := moduleDir(root, version)
	if !ok {
		// A kernel with everything built in needs no modules.
		i.log().WarnContext(ctx, "kernel package has no module directory", "version", version)
		return nil, nil
	}
	return i.resolveModulesIn(ctx, dir, koDir)
}

// resolveModulesIn is resolveModules for a module directory (lib/modules/<version>).
func (i *Importer) resolveModulesIn(ctx context.Context, dir, koDir string) ([]Module, error) {
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b := d.Name()
		if strings.HasSuffix(b, ".ko") || strings.HasSuffix(b, ".ko.xz") || strings.HasSuffix(b, ".ko.zst") {
			n := ModuleName(b)
			if _, dup := files[n]; !dup {
				files[n] = p
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules: %w", err)
	}
	builtin := readBuiltin(filepath.Join(dir, "modules.builtin"))
	available := make(map[string]bool, len(files))
	for n := range files {
		available[n] = true
	}
	if err := os.MkdirAll(koDir, 0o700); err != nil {
		return nil, err
	}
	plain := map[string]string{}
	depsOf := func(name string) ([]string, error) {
		p, err := i.plainModule(ctx, files[name], koDir)
		if err != nil {
			return nil, err
		}
		plain[name] = p
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return ModuleDepends(f)
	}
	order, skipped, err := ResolveOrder(WantedModules, available, builtin, depsOf)
	if err != nil {
		return nil, err
	}
	if len(skipped) > 0 {
		i.log().InfoContext(ctx, "modules not shipped as files (built in)", "modules", skipped)
	}
	mods := make([]Module, 0, len(order))
	for _, n := range order {
		mods = append(mods, Module{Name: n, Path: plain[n]})
	}
	return mods, nil
}

// plainModule returns an uncompressed copy of a module, decompressing
// .ko.xz / .ko.zst with the host tools.
func (i *Importer) plainModule(ctx context.Context, path, koDir string) (string, error) {
	name := ModuleName(path)
	switch {
	case strings.HasSuffix(path, ".ko"):
		return path, nil
	case strings.HasSuffix(path, ".ko.xz"):
		dst := filepath.Join(koDir, name+".ko.xz")
		if _, err := copyFile(path, dst, 0o600); err != nil {
			return "", err
		}
		if _, err := i.Runner.Run(ctx, "xz", "-d", "-f", "-q", dst); err != nil {
			return "", fmt.Errorf("decompress %s: %w", path, err)
		}
		return strings.TrimSuffix(dst, ".xz"), nil
	case strings.HasSuffix(path, ".ko.zst"):
		dst := filepath.Join(koDir, name+".ko")
		if _, err := i.Runner.Run(ctx, "zstd", "-d", "-f", "-q", path, "-o", dst); err != nil {
			return "", fmt.Errorf("decompress %s: %w", path, err)
		}
		return dst, nil
	}
	return "", fmt.Errorf("unsupported module file %s", path)
}

func readBuiltin(path string) map[string]bool {
	out := map[string]bool{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if l := strings.TrimSpace(s.Text()); l != "" {
			out[ModuleName(l)] = true
		}
	}
	return out
}

// writeInitramfs writes the newc archive: /init (the agent), /dev/console,
// the modules and their load-order list.
func (i *Importer) writeInitramfs(dst string, mods []Module) error {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	err = BuildInitramfs(bw, i.AgentPath, mods)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	return nil
}

// BuildInitramfs writes banger's initramfs for agent and mods (already in
// load order, uncompressed) to w.
func BuildInitramfs(w io.Writer, agent string, mods []Module) error {
	cw := newCpioWriter(w)
	// agentinit.ModuleDir is /lib/modules and ModuleList lives in /etc/banger.
	for _, d := range []string{"dev", "proc", "sys", "newroot", "etc", "etc/banger", "lib", "lib/modules"} {
		if err := cw.Dir(d, 0o755); err != nil {
			return err
		}
	}
	if err := cw.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := addFile(cw, "init", agent, 0o755); err != nil {
		return err
	}
	var list bytes.Buffer
	for _, m := range mods {
		p := agentinit.ModuleDir + "/" + m.Name + ".ko"
		if err := addFile(cw, p, m.Path, 0o644); err != nil {
			return err
		}
		list.WriteString(p + "\n")
	}
	if err := cw.File(agentinit.ModuleList, 0o644, int64(list.Len()), &list); err != nil {
		return err
	}
	return cw.Close()
}

func addFile(cw *cpioWriter, name, src string, perm uint32) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", src)
	}
	return cw.File(name, perm, st.Size(), f)
}

func copyFile(src, dst string, perm os.FileMode) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(out, h), in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkStaticELF refuses a dynamically linked agent: as /init it would fail
// with an unhelpful kernel panic.
func checkStaticELF(path string) error {
	if path == "" {
		return fmt.Errorf("no agent path configured: %w", api.ErrInvalid)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (build with CGO_ENABLED=0): %w", path, api.ErrInvalid)
		}
	}
	return nil
}
