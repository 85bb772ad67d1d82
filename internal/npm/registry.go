// Package npm fetches single files out of npm package tarballs: it resolves
// a package version against a registry, streams the tarball through sha512
// (checked against a pinned or the published SSRI integrity), extracts one
// member under stated limits and caches it on disk.
package npm

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/download"
)

// DefaultRegistry is the public npm registry.
const DefaultRegistry = "https://registry.npmjs.org"

// Limits of registry reads.
const (
	// maxMetadataBytes bounds a version document (opencode's is ~2 KiB; the
	// full packument of a big package is far larger, but we never read it).
	maxMetadataBytes = 4 << 20
	maxNameLen       = 214 // npm's own limit
	maxVersionLen    = 64
)

// Registry reads package metadata and tarballs from an npm registry.
// Insecure, Client and IdleTimeout are read at first use; it must not be
// copied after that.
type Registry struct {
	URL string // base URL, e.g. DefaultRegistry ("" = DefaultRegistry)
	// Insecure allows http:// for the registry and redirects; otherwise
	// anything but https is refused.
	Insecure bool
	// Client does the requests; nil = one with connect, TLS and header
	// timeouts. A redirect to a refused scheme fails either way.
	Client *http.Client
	// IdleTimeout fails a body read once no byte arrived for that long
	// (0 = 60 s). The whole transfer is not bounded: tarballs are large and
	// links slow.
	IdleTimeout time.Duration

	once sync.Once
	dl   *download.Getter
}

// Dist is one published version's tarball.
type Dist struct {
	Name, Version string
	Tarball       string // URL, same scheme and host as the registry
	Integrity     string // "sha512-<base64>" of the tarball
}

var (
	// npm's rules for new packages: lower case, URL-safe, optional scope.
	nameRE = regexp.MustCompile(`^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*$`)
	// A version or dist-tag: semver characters; it names a cache directory,
	// so it must not start with '.' (no "." or "..").
	versionRE = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z.+-]*$`)
)

// ValidName checks an npm package name (optionally @scope/name).
func ValidName(name string) error {
	if len(name) > maxNameLen || !nameRE.MatchString(name) {
		return fmt.Errorf("npm package name %q: want lower-case [a-z0-9._-] (optionally @scope/name), at most %d characters: %w", name, maxNameLen, api.ErrInvalid)
	}
	return nil
}

// validVersion checks a version or dist-tag.
func validVersion(v string) error {
	if len(v) > maxVersionLen || !versionRE.MatchString(v) {
		return fmt.Errorf("npm version %q: want [0-9A-Za-z.+-], at most %d characters: %w", v, maxVersionLen, api.ErrInvalid)
	}
	return nil
}

// isExact tells a version ("1.2.3") from a dist-tag ("latest", "beta"):
// npm refuses tags that parse as semver, and every version starts with a
// digit.
func isExact(v string) bool {
	return v != "" && v[0] >= '0' && v[0] <= '9'
}

// ParseIntegrity returns the sha512 digest of an SSRI string
// ("sha512-<base64>"; of several space-separated hashes the sha512 one is
// used). Any other algorithm alone is refused: npm publishes sha512 for
// every tarball since 2017 and sha1 is not a protection.
func ParseIntegrity(s string) ([]byte, error) {
	var digest []byte
	for _, tok := range strings.Fields(s) {
		algo, val, ok := strings.Cut(tok, "-")
		if !ok || algo != "sha512" {
			continue
		}
		val, _, _ = strings.Cut(val, "?") // SSRI options
		d, err := base64.StdEncoding.DecodeString(val)
		if err != nil || len(d) != 64 {
			return nil, fmt.Errorf("integrity %q: sha512 value is not 64 bytes of base64: %w", s, api.ErrInvalid)
		}
		if digest != nil && !bytes.Equal(digest, d) {
			return nil, fmt.Errorf("integrity %q: two different sha512 values: %w", s, api.ErrInvalid)
		}
		digest = d
	}
	if digest == nil {
		return nil, fmt.Errorf("integrity %q: want a sha512-<base64> SSRI string: %w", s, api.ErrInvalid)
	}
	return digest, nil
}

// formatIntegrity is the canonical SSRI form of a sha512 digest.
func formatIntegrity(d []byte) string {
	return "sha512-" + base64.StdEncoding.EncodeToString(d)
}

// base returns the parsed registry URL, scheme checked, without a trailing
// slash.
func (r *Registry) base() (*url.URL, error) {
	raw := r.URL
	if raw == "" {
		raw = DefaultRegistry
	}
	u, err := url.Parse(strings.TrimRight(raw, "/"))
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("npm registry url %q: want https://host[/path]: %w", raw, api.ErrInvalid)
	}
	if err := r.getter().CheckScheme("npm registry", u); err != nil {
		return nil, err
	}
	return u, nil
}

// getter is built once, so the metadata and tarball requests share
// connections.
func (r *Registry) getter() *download.Getter {
	r.once.Do(func() {
		r.dl = &download.Getter{Insecure: r.Insecure, Client: r.Client, IdleTimeout: r.IdleTimeout}
	})
	return r.dl
}

// get issues a GET whose body reads fail once no byte arrived for
// IdleTimeout. The caller closes resp.Body and calls cancel.
func (r *Registry) get(ctx context.Context, what, rawURL string) (*http.Response, io.Reader, context.CancelFunc, error) {
	return r.getter().Get(ctx, what, rawURL, http.Header{"Accept": {"application/json, application/octet-stream"}})
}

// escapeName is name as one path segment: a scoped name's '/' is %2f, as
// the npm registry expects.
func escapeName(name string) string {
	return strings.Replace(name, "/", "%2f", 1)
}

// Resolve reads <URL>/<name>/<version> (version "" means the "latest"
// dist-tag; any other dist-tag works the same way) and returns its tarball.
func (r *Registry) Resolve(ctx context.Context, name, version string) (Dist, error) {
	if err := ValidName(name); err != nil {
		return Dist{}, err
	}
	tag := version
	if tag == "" {
		tag = "latest"
	}
	if err := validVersion(tag); err != nil {
		return Dist{}, err
	}
	ref := name + "@" + tag
	base, err := r.base()
	if err != nil {
		return Dist{}, err
	}
	resp, body, cancel, err := r.get(ctx, "npm metadata of "+ref, base.String()+"/"+escapeName(name)+"/"+tag)
	if err != nil {
		return Dist{}, err
	}
	defer cancel()
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return Dist{}, fmt.Errorf("npm package %s: not in registry %s: %w", ref, base.Redacted(), api.ErrNotFound)
	default:
		return Dist{}, fmt.Errorf("npm metadata of %s from %s: %s", ref, base.Redacted(), resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(body, maxMetadataBytes+1))
	if err != nil {
		return Dist{}, fmt.Errorf("npm metadata of %s: %w", ref, err)
	}
	if len(data) > maxMetadataBytes {
		return Dist{}, fmt.Errorf("npm metadata of %s is larger than the limit of %d bytes: %w", ref, maxMetadataBytes, api.ErrInvalid)
	}
	var doc struct {
		Name    string `json:"name"`
		Version string `json:"version"`
		Dist    struct {
			Tarball   string `json:"tarball"`
			Integrity string `json:"integrity"`
		} `json:"dist"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return Dist{}, fmt.Errorf("npm metadata of %s: %v: %w", ref, err, api.ErrInvalid)
	}
	bad := func(format string, a ...any) (Dist, error) {
		return Dist{}, fmt.Errorf("npm metadata of %s: %s: %w", ref, fmt.Sprintf(format, a...), api.ErrInvalid)
	}
	if doc.Name != name {
		return bad("it describes package %q", doc.Name)
	}
	if validVersion(doc.Version) != nil || !isExact(doc.Version) {
		return bad("bad version %q", doc.Version)
	}
	if isExact(version) && doc.Version != version {
		return bad("it describes version %q", doc.Version)
	}
	ref = name + "@" + doc.Version
	// A mirror rewrites tarball URLs to itself; a URL elsewhere would make
	// the registry's answer send us to a host nobody configured.
	tu, err := url.Parse(doc.Dist.Tarball)
	if err != nil || tu.Scheme != base.Scheme || !strings.EqualFold(tu.Host, base.Host) || tu.User != nil {
		return bad("tarball url %q is not on the registry %s", doc.Dist.Tarball, base.Redacted())
	}
	digest, err := ParseIntegrity(doc.Dist.Integrity)
	if err != nil {
		return Dist{}, fmt.Errorf("npm metadata of %s: %w", ref, err)
	}
	return Dist{Name: name, Version: doc.Version, Tarball: tu.String(), Integrity: formatIntegrity(digest)}, nil
}
