// Package image builds, records and removes the root file system images VMs
// boot from. The default image is built from Debian packages with mmdebstrap
// and turned into an ext4 file with mkfs.ext4 -d: nothing is ever mounted.
//
// An image is a directory Layout.Image(name) holding rootfs.ext4 and
// image.json. It appears there by one rename once complete, so a half-built
// image is never visible.
package image

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
)

// Progress stages reported by the builders, in order.
const (
	StageBootstrap = "bootstrap" // mmdebstrap (BuildDefault only)
	StageCopy      = "copy"      // copy of the source tree (BuildFromDir only)
	StageCustomize = "customize"
	StageMkfs      = "mkfs"
	StageCommit    = "commit"
)

// Default image recipe.
const (
	DefaultSuite  = "bookworm"
	DefaultSource = "debian:" + DefaultSuite
	RootfsLabel   = "rootfs"
)

// DefaultPackages are installed on top of mmdebstrap's apt variant.
var DefaultPackages = []string{"systemd-sysv", "openssh-server", "iproute2", "ca-certificates", "git"}

// Sizing of rootfs.ext4: the content plus room for ext4 metadata, the journal
// and what users install, kept sparse so unused room costs nothing.
const (
	headroom     = 256 << 20
	minImageSize = 1 << 30
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateName checks an image name; it becomes a directory name.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("image name %q: must match %s: %w", name, nameRE, api.ErrInvalid)
	}
	return nil
}

// Info is what image.json records about an image.
type Info struct {
	Name      string    `json:"name"`
	Source    string    `json:"source"`           // "debian:bookworm", "dir:/path", ...
	Size      int64     `json:"size"`             // apparent size of rootfs.ext4 in bytes
	SHA256    string    `json:"sha256,omitempty"` // of rootfs.ext4, when known (not computed by the builders)
	Packages  []string  `json:"packages,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// Ref and Digest are set for images pulled from an OCI registry: the
	// reference as given and the manifest digest of the linux/amd64 image.
	Ref    string `json:"ref,omitempty"`
	Digest string `json:"digest,omitempty"`
	// FirstBoot is true when the tree lacks systemd or sshd: VMs of this
	// image boot with banger-agent's first-boot init, which installs them.
	FirstBoot bool `json:"first_boot,omitempty"`
}

// Builder builds images into Layout.
type Builder struct {
	Runner    system.Runner
	Layout    paths.Layout
	Log       *slog.Logger
	AgentPath string // static banger-agent binary, installed at /usr/local/bin/banger-agent
	Mirror    string // optional Debian mirror URL; empty = mmdebstrap's default
	// Rootless builds as an unprivileged owner would (always so when the
	// process is not root): mmdebstrap in unshare mode writing a tar, and
	// source trees read by banger itself instead of cp -a. See Owners.
	Rootless bool
	// Limits bound what a build from a tar or a tree may unpack to (as for
	// pulls); zero fields take DefaultLimits.
	Limits Limits
}

// rootless reports whether this build cannot chown: see Builder.Rootless.
func (b *Builder) rootless() bool { return b.Rootless || os.Geteuid() != 0 }

func (b *Builder) log() *slog.Logger {
	if b.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Log
}

// BuildDefault builds the default Debian image: mmdebstrap (apt variant, docs,
// man pages and locales excluded), Customize, mkfs.ext4 -d, then the owners
// stamped with debugfs. As root mmdebstrap writes the staging tree directly
// with real owners. Rootless, it runs in unshare mode (the owner's
// subordinate uid/gid ranges from /etc/subuid and /etc/subgid, newuidmap from
// the uidmap package) and writes a tar, whose headers carry the owners; the
// tar is flattened like a one-layer pull, so no file owned by a subordinate
// uid ever lands in the owner's state dir.
func (b *Builder) BuildDefault(ctx context.Context, name string, progress func(stage string)) (Info, error) {
	if b.Mirror != "" {
		if err := validMirror(b.Mirror); err != nil {
			return Info{}, err
		}
	}
	return b.build(ctx, name, DefaultSource, progress, func(ctx context.Context, rootfs string) (*Owners, error) {
		report(progress, StageBootstrap)
		start := time.Now()
		if !b.rootless() {
			if _, err := b.Runner.Run(ctx, "mmdebstrap", b.mmdebstrapArgs(rootfs, false)...); err != nil {
				return nil, fmt.Errorf("mmdebstrap: %w", err)
			}
			b.log().Info("image bootstrapped", "image", name, "suite", DefaultSuite, "duration", time.Since(start))
			return nil, nil
		}
		tarPath := rootfs + ".tar"
		defer os.Remove(tarPath)
		if _, err := b.Runner.Run(ctx, "mmdebstrap", b.mmdebstrapArgs(tarPath, true)...); err != nil {
			return nil, fmt.Errorf("mmdebstrap (unshare mode, as uid %d: needs subordinate ids for this user in /etc/subuid and /etc/subgid and newuidmap/newgidmap from the uidmap package; `sudo banger system install` sets them up): %w", os.Geteuid(), err)
		}
		b.log().Info("image bootstrapped", "image", name, "suite", DefaultSuite, "mode", "unshare", "duration", time.Since(start))
		stats, err := b.flattenTarFile(ctx, rootfs, tarPath)
		if err != nil {
			return nil, err
		}
		return stats.Owners, nil
	})
}

// mmdebstrapArgs: the rootless form runs in unshare mode and writes a tar.
func (b *Builder) mmdebstrapArgs(target string, rootless bool) []string {
	args := []string{
		"--variant=apt",
		"--format=directory",
		"--include=" + strings.Join(DefaultPackages, ","),
	}
	if rootless {
		args = []string{"--mode=unshare", "--variant=apt", "--format=tar", args[2]}
	}
	for _, p := range []string{"/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*"} {
		args = append(args, "--dpkgopt=path-exclude="+p)
	}
	args = append(args, "--", DefaultSuite, target)
	if b.Mirror != "" {
		args = append(args, b.Mirror)
	}
	return args
}

func validMirror(m string) error {
	u, err := url.Parse(m)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file") ||
		strings.ContainsFunc(m, func(r rune) bool { return r <= ' ' || r == 0x7f }) ||
		(u.Scheme != "file" && u.Host == "") {
		return fmt.Errorf("mirror %q: want an http, https or file URL: %w", m, api.ErrInvalid)
	}
	return nil
}

// BuildFromDir builds an image from an existing root file system tree. The
// tree is copied first (owners, modes, xattrs and hard links kept), so dir
// itself is not changed. As root that is cp -a; rootless, banger reads the
// tree itself as a tar stream into Flatten (owners from lstat go into the
// Owners table), so every file of the tree must be readable by the owner.
func (b *Builder) BuildFromDir(ctx context.Context, name, dir string, progress func(stage string)) (Info, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Info{}, fmt.Errorf("image %q: %w", name, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return Info{}, fmt.Errorf("image %q: source: %w", name, err)
	}
	if !st.IsDir() {
		return Info{}, fmt.Errorf("image %q: source %s is not a directory: %w", name, abs, api.ErrInvalid)
	}
	return b.build(ctx, name, "dir:"+abs, progress, func(ctx context.Context, rootfs string) (*Owners, error) {
		report(progress, StageCopy)
		if b.rootless() {
			stats, err := b.flattenDir(ctx, rootfs, abs)
			if err != nil {
				return nil, fmt.Errorf("copy source tree: %w", err)
			}
			return stats.Owners, nil
		}
		if _, err := b.Runner.Run(ctx, "cp", "-a", "--reflink=auto", "--", abs, rootfs); err != nil {
			return nil, fmt.Errorf("copy source tree: %w", err)
		}
		return nil, nil
	})
}

// build runs populate into a fresh staging tree under Layout.Tmp(), then the
// common tail: customize, mkfs, checksum, image.json, rename into place.
func (b *Builder) build(ctx context.Context, name, source string, progress func(string), populate func(ctx context.Context, rootfs string) (*Owners, error)) (info Info, err error) {
	return b.buildTree(ctx, treeSpec{name: name, source: source, populate: populate}, progress)
}

// treeSpec is one build: populate fills rootfs (creating it) and returns the
// Owners table of what it could not apply (nil: the tree is true as it is,
// the staging uid/gid standing for root); annotate, when
// set, may record facts about the populated tree before Customize; size, when
// non-zero, replaces the computed image size.
type treeSpec struct {
	name, source string
	size         int64
	populate     func(ctx context.Context, rootfs string) (*Owners, error)
	annotate     func(rootfs string, info *Info) error
}

func (b *Builder) buildTree(ctx context.Context, spec treeSpec, progress func(string)) (info Info, err error) {
	name, source, populate := spec.name, spec.source, spec.populate
	if err := ValidateName(name); err != nil {
		return Info{}, err
	}
	final := b.Layout.Image(name)
	if _, err := os.Lstat(final); err == nil {
		return Info{}, fmt.Errorf("image %q: %w", name, api.ErrExists)
	}
	if err := os.MkdirAll(b.Layout.Tmp(), 0o700); err != nil {
		return Info{}, fmt.Errorf("image %q: %w", name, err)
	}
	if err := os.MkdirAll(b.Layout.ImagesDir(), 0o700); err != nil {
		return Info{}, fmt.Errorf("image %q: %w", name, err)
	}
	staging, err := os.MkdirTemp(b.Layout.Tmp(), "image-"+name+"-")
	if err != nil {
		return Info{}, fmt.Errorf("image %q: %w", name, err)
	}
	defer func() {
		if cerr := removeStaging(staging); cerr != nil {
			b.log().Error("image staging left behind", "image", name, "dir", staging, "err", cerr)
			if err != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	wrap := func(err error) (Info, error) { return Info{}, fmt.Errorf("image %q: %w", name, err) }

	rootfs := filepath.Join(staging, "rootfs")
	owners, err := populate(ctx, rootfs)
	if err != nil {
		return wrap(err)
	}
	if err := ctx.Err(); err != nil {
		return wrap(err)
	}
	if spec.annotate != nil {
		if err := spec.annotate(rootfs, &info); err != nil {
			return wrap(err)
		}
	}
	report(progress, StageCustomize)
	if b.AgentPath == "" {
		b.log().Warn("image built without banger-agent", "image", name)
	}
	if err := customize(rootfs, b.AgentPath, owners); err != nil {
		return wrap(err)
	}
	pkgs, err := installedPackages(rootfs)
	if err != nil {
		return wrap(err)
	}

	report(progress, StageMkfs)
	used, err := treeSize(rootfs)
	if err != nil {
		return wrap(err)
	}
	size := imageSize(used)
	if spec.size > 0 {
		if need := max(used+used/10+16<<20, disk.MinExt4Size); spec.size < need {
			return wrap(fmt.Errorf("size %d is too small for %d bytes of content (need at least %d): %w", spec.size, used, need, api.ErrInvalid))
		}
		size = (spec.size + 1023) &^ 1023
	}
	out := filepath.Join(staging, "image")
	if err := os.Mkdir(out, 0o755); err != nil {
		return wrap(err)
	}
	img := filepath.Join(out, paths.RootfsFile)
	start := time.Now()
	if err := disk.CreateExt4(ctx, b.Runner, img, size, RootfsLabel, rootfs); err != nil {
		return wrap(err)
	}
	b.log().Info("image file system made", "image", name, "content_bytes", used, "size", size, "duration", time.Since(start))
	start = time.Now()
	stamped, err := stampImage(ctx, b.Runner, img, rootfs, staging, owners)
	if err != nil {
		return wrap(err)
	}
	b.log().Info("image owners stamped", "image", name, "commands", stamped, "duration", time.Since(start))

	// No SHA256 here: hashing a sparse 1+ GiB file costs seconds for little
	// use on the machine that built it.
	info.Name, info.Source, info.Size, info.Packages = name, source, size, pkgs
	info.CreatedAt = time.Now().UTC().Truncate(time.Second)
	meta, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return wrap(err)
	}
	if err := os.WriteFile(filepath.Join(out, paths.ImageMeta), append(meta, '\n'), 0o644); err != nil {
		return wrap(err)
	}

	report(progress, StageCommit)
	if err := ctx.Err(); err != nil {
		return wrap(err)
	}
	if err := os.Rename(out, final); err != nil {
		if errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY) {
			return Info{}, fmt.Errorf("image %q: %w", name, api.ErrExists)
		}
		return wrap(err)
	}
	b.log().Info("image built", "image", name, "source", source, "size", size, "packages", len(pkgs))
	return info, nil
}

func report(progress func(string), stage string) {
	if progress != nil {
		progress(stage)
	}
}

// imageSize is content*1.3 + headroom, at least minImageSize, in whole MiB.
func imageSize(used int64) int64 {
	s := used + used*3/10 + headroom
	s = max(s, minImageSize)
	return (s + (1<<20 - 1)) &^ (1<<20 - 1)
}

// treeSize estimates the space the tree needs in ext4: file data rounded to
// 4 KiB blocks (hard links once) plus a block per directory and symlink.
func treeSize(root string) (int64, error) {
	var total int64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		if fi.Mode().IsRegular() {
			total += (fi.Size() + 4095) &^ 4095
		} else {
			total += 4096
		}
		return nil
	})
	return total, err
}

// maxDpkgStatusBytes bounds var/lib/dpkg/status, which comes from the image
// (a full Debian desktop's is a few MiB).
const maxDpkgStatusBytes = 32 << 20

// installedPackages lists the packages dpkg records as installed in the tree.
func installedPackages(rootfs string) ([]string, error) {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	data, err := readImageFile(root, "var/lib/dpkg/status", maxDpkgStatusBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dpkg status: %w", err)
	}
	return parseDpkgStatus(data), nil
}

// readImageFile reads a file of the image tree, which is hostile content:
// opened inside root without following a symlink (O_NOFOLLOW; os.Root keeps
// the parents inside), a regular file only (O_NONBLOCK so a FIFO cannot
// block the build), at most limit bytes or an error naming the limit.
func readImageFile(root *os.Root, name string, limit int64) ([]byte, error) {
	lfi, err := root.Lstat(name)
	if err != nil {
		return nil, err
	}
	if !lfi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%v): %w", name, lfi.Mode().Type(), api.ErrInvalid)
	}
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The file opened must be the one just checked (os.Root follows a
	// symlink in the last component even with O_NOFOLLOW).
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !os.SameFile(lfi, fi) {
		return nil, fmt.Errorf("%s changed while opened: %w", name, api.ErrInvalid)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes (limit): %w", name, limit, api.ErrInvalid)
	}
	return data, nil
}

func parseDpkgStatus(data []byte) []string {
	var pkgs []string
	var pkg string
	installed := false
	flush := func() {
		if pkg != "" && installed {
			pkgs = append(pkgs, pkg)
		}
		pkg, installed = "", false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case strings.HasPrefix(line, "Package:"):
			pkg = strings.TrimSpace(strings.TrimPrefix(line, "Package:"))
		case strings.HasPrefix(line, "Status:"):
			installed = strings.HasSuffix(strings.TrimSpace(line), " installed")
		}
	}
	flush()
	sort.Strings(pkgs)
	return pkgs
}

// Load reads an image's record; api.ErrNotFound when it does not exist.
func Load(layout paths.Layout, name string) (Info, error) {
	if err := ValidateName(name); err != nil {
		return Info{}, err
	}
	dir := layout.Image(name)
	data, err := os.ReadFile(filepath.Join(dir, paths.ImageMeta))
	if errors.Is(err, fs.ErrNotExist) {
		return Info{}, fmt.Errorf("image %q: %w", name, api.ErrNotFound)
	}
	if err != nil {
		return Info{}, fmt.Errorf("image %q: %w", name, err)
	}
	var info Info
	if err := json.Unmarshal(data, &info); err != nil {
		return Info{}, fmt.Errorf("image %q: bad %s: %w", name, paths.ImageMeta, err)
	}
	if _, err := os.Stat(filepath.Join(dir, paths.RootfsFile)); err != nil {
		return Info{}, fmt.Errorf("image %q: %s: %w", name, paths.RootfsFile, api.ErrNotFound)
	}
	info.Name = name // the directory is the truth
	return info, nil
}

// List returns every complete image, sorted by name; broken entries are skipped.
func List(layout paths.Layout) ([]Info, error) {
	ents, err := os.ReadDir(layout.ImagesDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []Info
	for _, e := range ents {
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue
		}
		if info, err := Load(layout, e.Name()); err == nil {
			out = append(out, info)
		}
	}
	return out, nil
}

// Remove deletes an image. It is first renamed out of the images directory,
// so a crash midway never leaves a half-deleted image that looks valid.
func Remove(layout paths.Layout, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	dir := layout.Image(name)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("image %q: %w", name, api.ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("image %q: %w", name, err)
	}
	target := dir
	if err := os.MkdirAll(layout.Tmp(), 0o700); err == nil {
		if trash, err := os.MkdirTemp(layout.Tmp(), "remove-image-"+name+"-"); err == nil {
			if err := os.Rename(dir, filepath.Join(trash, "image")); err == nil {
				target = trash
			} else {
				os.Remove(trash)
			}
		}
	}
	if err := os.RemoveAll(target); err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	return nil
}

// removeStaging deletes a staging directory. A killed mmdebstrap can leave
// /proc, /sys and /dev mounted inside its target: those are unmounted first,
// and nothing is deleted while anything is still mounted below staging —
// RemoveAll must never walk into a live file system.
func removeStaging(staging string) error {
	mounts, err := mountsUnder(staging)
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", m, err)
		}
	}
	if mounts, err := mountsUnder(staging); err != nil {
		return err
	} else if len(mounts) > 0 {
		return fmt.Errorf("staging %s: still mounted: %s", staging, strings.Join(mounts, ", "))
	}
	return os.RemoveAll(staging)
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return parseMountsUnder(data, dir), nil
}

func parseMountsUnder(mountinfo []byte, dir string) []string {
	dir = filepath.Clean(dir)
	var out []string
	for _, line := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// unescapeMount decodes the octal escapes (\040 for a space...) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
