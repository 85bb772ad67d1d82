//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/capability"
)

// The fake registry's versions of the opencode package beyond the pinned one.
const (
	npmBrokenVersion   = "0.0.0-e2e-broken"   // its binary exits 1 at once
	npmTamperedVersion = "0.0.0-e2e-tampered" // served bytes do not match its integrity
	npmBrokenMessage   = "opencode-e2e-broken"
)

// npmRegistry is a fake npm registry inside the test namespace: the daemon
// is pointed at it (BANGER_NPM_REGISTRY), so no test run depends on, or
// talks from the daemon to, the public registry. It serves what npm does
// for the requests a client makes for one version: the version document
// at /NAME/VERSION, the package document at /NAME and the tarball at
// /NAME/-/NAME-VERSION.tgz.
type npmRegistry struct {
	url   string // http://127.0.0.1:PORT, reachable only inside the namespace
	srv   *http.Server
	cache string // <E.cache>/npm

	mu   sync.Mutex
	pkgs map[string]map[string]*npmEntry // name → version → entry
	hits map[string]int                  // request path → count
}

// npmEntry is one published version. integrity is what the registry
// advertises; load returns the bytes it serves (loaded once, on first use).
type npmEntry struct {
	integrity, shasum string
	load              func() ([]byte, error)

	mu   sync.Mutex // held while loading
	data []byte
}

func startNPMRegistry(ns, cache string) (*npmRegistry, error) {
	ln, err := listenNS(ns, "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("npm registry: %w", err)
	}
	r := &npmRegistry{
		url:   "http://" + ln.Addr().String(),
		cache: filepath.Join(cache, "npm"),
		pkgs:  map[string]map[string]*npmEntry{},
		hits:  map[string]int{},
	}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = r.srv.Serve(ln) }()

	// The pinned opencode server: the real tarball, fetched on first use.
	r.add(capability.OpencodePackage, capability.OpencodeVersion, capability.OpencodeIntegrity, "", func() ([]byte, error) {
		return r.realTarball(capability.OpencodePackage, capability.OpencodeVersion, capability.OpencodeIntegrity)
	})
	broken, err := npmTarball(map[string]string{
		"package/package.json": `{"name":"opencode-linux-x64","version":"` + npmBrokenVersion + `"}`,
		"package/bin/opencode": "#!/bin/sh\necho " + npmBrokenMessage + " >&2\nexit 1\n",
	})
	if err != nil {
		return r, err
	}
	r.addBytes(capability.OpencodePackage, npmBrokenVersion, broken)
	// Tampered: advertises the integrity of one tarball, serves another.
	other, err := npmTarball(map[string]string{
		"package/package.json": `{"name":"opencode-linux-x64","version":"` + npmTamperedVersion + `"}`,
		"package/bin/opencode": "#!/bin/sh\necho tampered\nsleep 3600\n",
	})
	if err != nil {
		return r, err
	}
	r.add(capability.OpencodePackage, npmTamperedVersion, npmIntegrity(broken), npmShasum(broken),
		func() ([]byte, error) { return other, nil })
	return r, nil
}

func (r *npmRegistry) close() {
	if r != nil && r.srv != nil {
		_ = r.srv.Close()
	}
}

// add publishes name@version advertising integrity (and shasum, computed
// from the served bytes when ""), serving what load returns.
func (r *npmRegistry) add(name, version, integrity, shasum string, load func() ([]byte, error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pkgs[name] == nil {
		r.pkgs[name] = map[string]*npmEntry{}
	}
	r.pkgs[name][version] = &npmEntry{integrity: integrity, shasum: shasum, load: load}
}

// addBytes publishes name@version serving b with its true integrity.
func (r *npmRegistry) addBytes(name, version string, b []byte) {
	r.add(name, version, npmIntegrity(b), npmShasum(b), func() ([]byte, error) { return b, nil })
}

// tarballPath is where the registry serves name@version's tarball.
func tarballPath(name, version string) string {
	return "/" + name + "/-/" + name + "-" + version + ".tgz"
}

// requests is how many times path was asked for.
func (r *npmRegistry) requests(path string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hits[path]
}

// tarball returns what the registry serves for name@version, loading it
// now (a test calls this first so that a slow outbound fetch is not timed
// as the daemon's). The load runs under the entry's own lock, so other
// requests are served meanwhile.
func (r *npmRegistry) tarball(name, version string) ([]byte, error) {
	e := r.entry(name, version)
	if e == nil {
		return nil, fmt.Errorf("npm registry: no %s@%s", name, version)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.data == nil {
		b, err := e.load()
		if err != nil {
			return nil, err
		}
		e.data = b
		if e.shasum == "" {
			e.shasum = npmShasum(b)
		}
	}
	return e.data, nil
}

func (r *npmRegistry) versionDoc(name, version string, e *npmEntry) map[string]any {
	return map[string]any{
		"name":    name,
		"version": version,
		"dist": map[string]any{
			"tarball":   r.url + tarballPath(name, version),
			"integrity": e.integrity,
			"shasum":    e.shasum,
		},
	}
}

func (r *npmRegistry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	p := req.URL.Path
	r.mu.Lock()
	r.hits[p]++
	r.mu.Unlock()
	notFound := func() {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"error":"Not found"}`)
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	switch {
	case len(parts) == 3 && parts[1] == "-": // /NAME/-/NAME-VERSION.tgz
		name := parts[0]
		version, ok := strings.CutPrefix(parts[2], name+"-")
		version, ok2 := strings.CutSuffix(version, ".tgz")
		if !ok || !ok2 || r.entry(name, version) == nil {
			notFound()
			return
		}
		b, err := r.tarball(name, version)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, req, parts[2], time.Time{}, bytes.NewReader(b))
	case len(parts) == 2: // /NAME/VERSION: the version document
		e := r.entry(parts[0], parts[1])
		if e == nil {
			notFound()
			return
		}
		if _, err := r.tarball(parts[0], parts[1]); err != nil { // the shasum needs them; sets it before we read it
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		r.writeJSON(w, func() any { return r.versionDoc(parts[0], parts[1], e) })
	case len(parts) == 1 && parts[0] != "": // /NAME: every version
		r.mu.Lock()
		vs := r.pkgs[parts[0]]
		r.mu.Unlock()
		if vs == nil {
			notFound()
			return
		}
		for v := range vs {
			if _, err := r.tarball(parts[0], v); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		}
		r.writeJSON(w, func() any {
			docs := map[string]any{}
			for v, e := range vs {
				docs[v] = r.versionDoc(parts[0], v, e)
			}
			return map[string]any{"name": parts[0], "dist-tags": map[string]string{"latest": capability.OpencodeVersion}, "versions": docs}
		})
	default:
		notFound()
	}
}

func (r *npmRegistry) entry(name, version string) *npmEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pkgs[name][version]
}

func (r *npmRegistry) writeJSON(w http.ResponseWriter, doc func() any) {
	r.mu.Lock()
	b, err := json.Marshal(doc())
	r.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// realTarball returns the public registry's tarball of name@version, cached
// under <cache>/npm keyed by name, version and integrity and checked against
// integrity on every use: a corrupt cached file is fetched again, and with
// BANGER_E2E_OFFLINE set only the cache is used. Like the kernel .deb, this
// is asset preparation by the test; the daemon only sees the fake registry.
func (r *npmRegistry) realTarball(name, version, integrity string) ([]byte, error) {
	h := sha256.Sum256([]byte(integrity))
	path := filepath.Join(r.cache, fmt.Sprintf("%s-%s-%s.tgz", name, version, hex.EncodeToString(h[:8])))
	if b, err := os.ReadFile(path); err == nil {
		if npmIntegrity(b) == integrity {
			return b, nil
		}
		logf("npm cache: %s does not match %s; fetching again", path, integrity)
	}
	if os.Getenv("BANGER_E2E_OFFLINE") != "" {
		return nil, fmt.Errorf("npm cache: no valid %s (BANGER_E2E_OFFLINE is set)", path)
	}
	url := "https://registry.npmjs.org/" + name + "/-/" + name + "-" + version + ".tgz"
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 512<<20))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	if got := npmIntegrity(b); got != integrity {
		return nil, fmt.Errorf("fetch %s: integrity %s, want %s", url, got, integrity)
	}
	if err := os.MkdirAll(r.cache, 0o755); err != nil {
		return nil, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	logf("fetched %s (%d MiB) in %.1fs, cached at %s", url, len(b)>>20, time.Since(t0).Seconds(), path)
	return b, nil
}

// npmIntegrity is npm's dist.integrity of b (SRI, sha512).
func npmIntegrity(b []byte) string {
	h := sha512.Sum512(b)
	return "sha512-" + base64.StdEncoding.EncodeToString(h[:])
}

// npmShasum is npm's legacy dist.shasum of b.
func npmShasum(b []byte) string {
	h := sha1.Sum(b)
	return hex.EncodeToString(h[:])
}

// npmTarball builds a gzipped npm package tarball; names ending in a bin/
// path are executable.
func npmTarball(files map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, name := range []string{"package/package.json", "package/bin/opencode"} {
		body, ok := files[name]
		if !ok {
			continue
		}
		mode := int64(0o644)
		if strings.Contains(name, "/bin/") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(body)), ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// npmGet fetches path from the registry through a dialer in the namespace.
func npmGet(r *npmRegistry, ns, path string) (int, []byte, error) {
	c := nsHTTPClient(ns)
	resp, err := c.Get(r.url + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// nsHTTPClient is an HTTP client whose connections are made inside ns.
func nsHTTPClient(ns string) *http.Client {
	return &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return dialNS(ctx, ns, addr)
			},
		},
	}
}
