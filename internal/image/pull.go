package image

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/banger-dev/banger/internal/api"
)

// Pull stages, reported after StageBootstrap's place in the build order.
const (
	StageResolve = "resolve" // registry: manifest (and index) fetch
	StagePull    = "pull"    // layers downloaded and flattened, with byte progress
)

// Limits on what a registry's manifest may declare before anything big is
// fetched. Docker refuses images of more than 127 layers on overlayfs.
const (
	MaxConfigBytes = 4 << 20
	MaxLayers      = 256
)

// Platform is the only platform banger runs.
var Platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// PullOptions describe one pull.
type PullOptions struct {
	Ref      string // e.g. docker.io/library/debian:bookworm
	Name     string // image name; derived from Ref when empty
	Size     int64  // rootfs.ext4 size; 0 = content + headroom
	Insecure bool   // allow plain HTTP to the registry
	Limits   Limits
	// Keychain resolves registry credentials; nil = authn.DefaultKeychain
	// (~/.docker/config.json and credential helpers).
	Keychain authn.Keychain
	// Transport replaces the HTTP transport (tests); nil = remote.DefaultTransport.
	Transport http.RoundTripper
}

// PullEvent is one progress report: a stage, a message, and byte progress
// (compressed bytes of all layers) during StagePull.
type PullEvent struct {
	Stage, Message string
	Current, Total int64
}

// PullResult is a finished pull. Unchanged means an image of that name with
// the same digest already existed and nothing was done.
type PullResult struct {
	Info         Info
	Unchanged    bool
	Skipped      []string // special files left out (the first MaxSkippedListed)
	SkippedCount int
}

// Pull fetches the linux/amd64 image Ref names from its registry, flattens
// its layers into a staging tree, and builds the image from it like any
// other (Customize, mkfs.ext4 -d, one rename into place). Nothing appears in
// the image store unless every step succeeded. A second pull that resolves
// to the digest an existing image of that name was built from is a no-op;
// a different digest under an existing name is api.ErrExists.
func (b *Builder) Pull(ctx context.Context, opt PullOptions, progress func(PullEvent)) (PullResult, error) {
	emit := func(ev PullEvent) {
		if progress != nil {
			progress(ev)
		}
	}
	var nopts []name.Option
	if opt.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	ref, err := name.ParseReference(opt.Ref, nopts...)
	if err != nil {
		return PullResult{}, fmt.Errorf("image reference %q: %v: %w", opt.Ref, err, api.ErrInvalid)
	}
	imgName := opt.Name
	if imgName == "" {
		imgName = NameFromRef(ref)
	}
	if err := ValidateName(imgName); err != nil {
		return PullResult{}, err
	}
	kc := opt.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	tr := opt.Transport
	if tr == nil {
		tr = remote.DefaultTransport
	}
	if !opt.Insecure {
		tr = httpsOnly{tr}
	}
	emit(PullEvent{Stage: StageResolve, Message: ref.Name()})
	img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithAuthFromKeychain(kc),
		remote.WithPlatform(Platform), remote.WithTransport(tr))
	if err != nil {
		return PullResult{}, fmt.Errorf("image %q: resolve %s: %w", imgName, ref.Name(), err)
	}
	digest, err := img.Digest()
	if err != nil {
		return PullResult{}, fmt.Errorf("image %q: digest: %w", imgName, err)
	}
	// The registry is untrusted: the config blob is read whole by the
	// library (bounded by the size the manifest declares, then verified),
	// so the declared size and the layer count are checked first.
	m, err := img.Manifest()
	if err != nil {
		return PullResult{}, fmt.Errorf("image %q: manifest: %w", imgName, err)
	}
	if m.Config.Size > MaxConfigBytes {
		return PullResult{}, fmt.Errorf("image %q: config blob of %d bytes exceeds the %d-byte limit: %w", imgName, m.Config.Size, MaxConfigBytes, api.ErrInvalid)
	}
	if len(m.Layers) > MaxLayers {
		return PullResult{}, fmt.Errorf("image %q: %d layers exceed the limit of %d: %w", imgName, len(m.Layers), MaxLayers, api.ErrInvalid)
	}
	if cf, err := img.ConfigFile(); err == nil && cf.OS != "" && (cf.OS != Platform.OS || cf.Architecture != Platform.Architecture) {
		return PullResult{}, fmt.Errorf("image %q: %s is %.64s/%.64s, banger runs %s/%s: %w", imgName, ref.Name(), cf.OS, cf.Architecture, Platform.OS, Platform.Architecture, api.ErrInvalid)
	}
	if old, err := Load(b.Layout, imgName); err == nil {
		if old.Digest == digest.String() {
			emit(PullEvent{Stage: StageCommit, Message: "up to date: " + digest.String()})
			return PullResult{Info: old, Unchanged: true}, nil
		}
		return PullResult{}, fmt.Errorf("image %q already exists (digest %q, pulled %s); remove it first: %w", imgName, old.Digest, digest, api.ErrExists)
	} else if !errors.Is(err, api.ErrNotFound) {
		return PullResult{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return PullResult{}, fmt.Errorf("image %q: layers: %w", imgName, err)
	}
	var stats FlattenStats
	spec := treeSpec{
		name:   imgName,
		source: ref.Context().Name() + "@" + digest.String(),
		size:   opt.Size,
		populate: func(ctx context.Context, rootfs string) (*Owners, error) {
			if err := os.Mkdir(rootfs, 0o755); err != nil {
				return nil, err
			}
			emit(PullEvent{Stage: StagePull, Message: fmt.Sprintf("%d layers", len(layers))})
			stats, err = Flatten(ctx, rootfs, layers, opt.Limits, b.log(), func(p FlattenProgress) {
				emit(PullEvent{Stage: StagePull, Message: fmt.Sprintf("layer %d/%d", p.Layer, p.Layers), Current: p.Current, Total: p.Total})
			})
			if err != nil {
				return nil, err
			}
			if stats.SkippedCount > 0 {
				b.log().Warn("image: special files skipped", "image", imgName, "count", stats.SkippedCount)
			}
			b.log().Info("image flattened", "image", imgName, "layers", stats.Layers, "entries", stats.Entries, "bytes", stats.Bytes)
			return stats.Owners, nil
		},
		annotate: func(rootfs string, info *Info) error {
			info.Ref, info.Digest = opt.Ref, digest.String()
			boot, err := NeedsFirstBoot(rootfs)
			info.FirstBoot = boot
			return err
		},
	}
	info, err := b.buildTree(ctx, spec, func(stage string) { emit(PullEvent{Stage: stage}) })
	if err != nil {
		return PullResult{}, err
	}
	return PullResult{Info: info, Skipped: stats.Skipped, SkippedCount: stats.SkippedCount}, nil
}

// NeedsFirstBoot reports whether a tree lacks systemd or sshd, so its VMs
// must boot through banger-agent's first-boot init. Symlinks are followed
// only inside the tree (a merged-/usr "lib -> usr/lib" is fine).
func NeedsFirstBoot(rootfs string) (bool, error) {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return false, err
	}
	defer root.Close()
	exists := func(cands ...string) bool {
		for _, c := range cands {
			if fi, err := root.Stat(c); err == nil && fi.Mode().IsRegular() {
				return true
			} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
				continue
			}
		}
		return false
	}
	systemd := exists("usr/lib/systemd/systemd", "lib/systemd/systemd")
	sshd := exists("usr/sbin/sshd", "sbin/sshd")
	return !(systemd && sshd), nil
}

var nameJunk = regexp.MustCompile(`[^a-z0-9._-]+`)

// NameFromRef derives an image name: the last path element of the
// repository plus the tag ("docker.io/library/debian:bookworm" →
// "debian-bookworm"), or the first 12 hex digits of a digest.
func NameFromRef(ref name.Reference) string {
	repo := ref.Context().RepositoryStr()
	if i := strings.LastIndexByte(repo, '/'); i >= 0 {
		repo = repo[i+1:]
	}
	suffix := ref.Identifier()
	if d, ok := ref.(name.Digest); ok {
		suffix = strings.TrimPrefix(d.DigestStr(), "sha256:")
		if len(suffix) > 12 {
			suffix = suffix[:12]
		}
	}
	n := nameJunk.ReplaceAllString(strings.ToLower(repo+"-"+suffix), "-")
	n = strings.TrimLeft(n, "._-")
	if len(n) > 63 {
		n = n[:63]
	}
	return n
}

// httpsOnly refuses plain HTTP: registries are reached over TLS unless the
// user passed --insecure.
type httpsOnly struct{ next http.RoundTripper }

func (h httpsOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "https" {
		return nil, fmt.Errorf("plain HTTP to %s refused (pass --insecure to allow it): %w", r.URL.Host, api.ErrInvalid)
	}
	return h.next.RoundTrip(r)
}
