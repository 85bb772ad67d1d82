//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/banger-dev/banger/internal/capability"
)

// capView is one entry of `vm show --json`'s capabilities.
type capView struct {
	Name, Version, State, Error, Connect string
	Port                                 int
	PasswordFile                         string `json:"password_file"`
}

type capVM struct {
	vmView
	Capabilities []capView
}

func showCapVM(t *testing.T, name string) capVM {
	t.Helper()
	var v capVM
	out := must(t, "vm", "show", name, "--json")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("vm show %s: %v\n%s", name, err, out)
	}
	return v
}

// onlyCap is the VM's single capability, which must be name.
func onlyCap(t *testing.T, v capVM, name string) capView {
	t.Helper()
	if len(v.Capabilities) != 1 || v.Capabilities[0].Name != name {
		t.Fatalf("%s: capabilities %+v, want one %s", v.Name, v.Capabilities, name)
	}
	return v.Capabilities[0]
}

// capInfo is one entry of `cap list --json`.
type capInfo struct {
	Name, Summary, Version string
	Needs                  []string
	Port                   int
	Versioned              bool
	Cached                 []capCached
}

type capCached struct {
	Package, Version, Integrity, Sha256, Path string
	Size                                      int64
	UsedBy                                    []string `json:"used_by"`
}

func capList(t *testing.T) map[string]capInfo {
	t.Helper()
	var infos []capInfo
	out := must(t, "cap", "list", "--json")
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatalf("cap list: %v\n%s", err, out)
	}
	m := map[string]capInfo{}
	for _, i := range infos {
		m[i.Name] = i
	}
	return m
}

// cachedOpencode is the cache entry of opencode at version ("" if none).
func cachedOpencode(t *testing.T, version string) (capCached, bool) {
	t.Helper()
	for _, c := range capList(t)["opencode"].Cached {
		if c.Package == capability.OpencodePackage && c.Version == version {
			return c, true
		}
	}
	return capCached{}, false
}

// bangerdLogTail is the end of the daemon's log, for a failure message.
func bangerdLogTail() string {
	b, _ := os.ReadFile(filepath.Join(E.stateDir, "bangerd.log"))
	return tailStr(string(b), 4000)
}

// opencodeGet GETs /config of the opencode server at addr from inside the
// test namespace, with basic auth when password is not "".
func opencodeGet(t *testing.T, addr, password string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/config", nil)
	if err != nil {
		t.Fatal(err)
	}
	if password != "" {
		req.SetBasicAuth("opencode", password)
	}
	resp, err := nsHTTPClient(E.ns).Do(req)
	if err != nil {
		t.Fatalf("GET %s/config: %v", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("GET %s/config: reading the body: %v", addr, err)
	}
	return resp.StatusCode, string(b)
}

// assertOpencodeAPI: /config answers with the password and only with it.
func assertOpencodeAPI(t *testing.T, addr, password string) {
	t.Helper()
	code, body := opencodeGet(t, addr, password)
	var doc map[string]any
	if code != http.StatusOK || json.Unmarshal([]byte(body), &doc) != nil || doc["$schema"] == nil {
		t.Fatalf("GET %s/config with the password: %d %s", addr, code, tailStr(body, 500))
	}
	if code, body := opencodeGet(t, addr, ""); code != http.StatusUnauthorized {
		t.Fatalf("GET %s/config without auth: %d %s, want 401", addr, code, tailStr(body, 500))
	}
	if code, body := opencodeGet(t, addr, password+"x"); code != http.StatusUnauthorized {
		t.Fatalf("GET %s/config with a wrong password: %d %s, want 401", addr, code, tailStr(body, 500))
	}
}

// resolveVM asks the daemon's DNS at the gateway for NAME.vm.
func resolveVM(t *testing.T, name string) string {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name+".vm.", dns.TypeA)
	var ans *dns.Msg
	var qerr error
	if err := inNetns(E.ns, func() {
		ans, _, qerr = (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, e2eGateway+":53")
	}); err != nil {
		t.Fatal(err)
	}
	if qerr != nil {
		t.Fatalf("resolve %s.vm: %v", name, qerr)
	}
	if len(ans.Answer) != 1 {
		t.Fatalf("resolve %s.vm: %v", name, ans.Answer)
	}
	a, ok := ans.Answer[0].(*dns.A)
	if !ok {
		t.Fatalf("resolve %s.vm: %v", name, ans.Answer)
	}
	return a.A.String()
}

// readPassword checks the VM's password file (owner-only) and returns it.
func readPassword(t *testing.T, c capView) string {
	t.Helper()
	if !filepath.IsAbs(c.PasswordFile) {
		t.Fatalf("password_file %q is not absolute", c.PasswordFile)
	}
	st, err := os.Lstat(c.PasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Fatalf("password file %s: mode %v, want a regular file 0600", c.PasswordFile, st.Mode())
	}
	b, err := os.ReadFile(c.PasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	pw := strings.TrimSpace(string(b))
	if len(pw) < 16 {
		t.Fatalf("password file %s holds %d characters; want a random password", c.PasswordFile, len(pw))
	}
	return pw
}

// TestCapabilityOpencode: `vm create --cap opencode` installs the pinned
// opencode server from the (fake) npm registry and waits until it answers;
// its API needs the per-VM password, and is reached from the host through a
// forward and by the VM's DNS name; it comes back after stop+start from the
// cached binary; the cache entry outlives the VM, and no forward does.
func TestCapabilityOpencode(t *testing.T) {
	const name = "ai"
	deleteOnCleanup(t, name)
	t0 := time.Now()
	if _, err := E.npm.tarball(capability.OpencodePackage, capability.OpencodeVersion); err != nil {
		t.Fatalf("preparing the opencode tarball: %v", err)
	}
	t.Logf("opencode tarball ready in %.1fs", time.Since(t0).Seconds())

	caps := capList(t)
	oc, nat := caps["opencode"], caps["nat"]
	if oc.Port != capability.OpencodePort || oc.Version != capability.OpencodeVersion || !oc.Versioned || oc.Summary == "" {
		t.Fatalf("cap list: opencode %+v", oc)
	}
	if nat.Name != "nat" {
		t.Fatalf("cap list lacks nat: %+v", caps)
	}

	tgz := tarballPath(capability.OpencodePackage, capability.OpencodeVersion)
	fetched := E.npm.requests(tgz)
	t0 = time.Now()
	r := E.bangerRes("vm", "create", "--name", name, "--cap", "opencode")
	if r.code != 0 {
		t.Fatalf("create --cap opencode: exit %d\n%s\n%s\nbangerd.log tail:\n%s", r.code, r.stdout, r.stderr, bangerdLogTail())
	}
	t.Logf("create --cap opencode → ready in %.1fs", time.Since(t0).Seconds())
	for _, s := range []string{"cap_prepare:opencode", "cap:opencode"} {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("create progress lacks %q:\n%s", s, r.stderr)
		}
	}
	if n := E.npm.requests(tgz) - fetched; n != 1 {
		t.Errorf("the daemon fetched the tarball from the registry %d times, want 1", n)
	}

	v := showCapVM(t, name)
	c := onlyCap(t, v, "opencode")
	if v.State != "running" || c.State != "ready" || c.Version != capability.OpencodeVersion || c.Port != capability.OpencodePort ||
		c.Error != "" || !strings.Contains(c.Connect, name+".vm:4096") || !strings.Contains(c.Connect, c.PasswordFile) {
		t.Fatalf("vm show: state %s, capability %+v", v.State, c)
	}
	pw := readPassword(t, c)
	if show := must(t, "vm", "show", name); !strings.Contains(show, c.Connect) {
		t.Errorf("vm show does not print the connect line %q:\n%s", c.Connect, show)
	}
	if out := must(t, "vm", "ssh", name, "--", "systemctl is-active banger-opencode.service"); strings.TrimSpace(out) != "active" {
		t.Errorf("banger-opencode.service: %q", out)
	}

	// (a) Through a forward on the host's (namespace's) loopback.
	fwd := parseForward(t, must(t, "vm", "forward", name, "4096", "--local", "127.0.0.1:0", "--detach"))
	assertOpencodeAPI(t, fwd, pw)
	// (b) By name: the daemon's DNS, then the guest's address on the bridge.
	ip := resolveVM(t, name)
	if ip != v.GuestIP {
		t.Fatalf("%s.vm resolves to %s, guest ip %s", name, ip, v.GuestIP)
	}
	assertOpencodeAPI(t, ip+":4096", pw)

	cached, ok := cachedOpencode(t, capability.OpencodeVersion)
	if !ok || cached.Integrity != capability.OpencodeIntegrity || !slices.Equal(cached.UsedBy, []string{name}) {
		t.Fatalf("cap list: opencode cache entry %+v (found %v)", cached, ok)
	}
	b, err := os.ReadFile(cached.Path)
	if err != nil {
		t.Fatalf("cached binary: %v", err)
	}
	if sum := sha256.Sum256(b); int64(len(b)) != cached.Size || hex.EncodeToString(sum[:]) != cached.Sha256 {
		t.Fatalf("cached binary %s: %d bytes, sha256 %x; cap list says %d, %s", cached.Path, len(b), sum, cached.Size, cached.Sha256)
	}

	// A fork carries the capability: the child's server (restored with the
	// parent's memory) is restarted with a password of the child's own, so
	// no guest can drive another's server with a secret it inherited.
	t0 = time.Now()
	if r := E.bangerRes("vm", "fork", name, "--count", "1", "--name-prefix", "aif"); r.code != 0 {
		t.Fatalf("vm fork: exit %d\n%s\n%s\nbangerd.log tail:\n%s", r.code, r.stdout, r.stderr, bangerdLogTail())
	}
	deleteOnCleanup(t, "aif-1")
	t.Logf("fork of an opencode VM → child ready in %.1fs", time.Since(t0).Seconds())
	kid := showCapVM(t, "aif-1")
	kc := onlyCap(t, kid, "opencode")
	if kid.State != "running" || kc.State != "ready" || kc.PasswordFile == c.PasswordFile || !strings.Contains(kc.Connect, "aif-1.vm:4096") {
		t.Fatalf("fork child: state %s, capability %+v", kid.State, kc)
	}
	kpw := readPassword(t, kc)
	if kpw == pw {
		t.Fatal("the fork child shares its parent's opencode password")
	}
	kaddr := resolveVM(t, "aif-1") + ":4096"
	assertOpencodeAPI(t, kaddr, kpw)
	if code, body := opencodeGet(t, kaddr, pw); code != http.StatusUnauthorized {
		t.Errorf("the child's server accepts the parent's password: %d %s", code, body)
	}
	assertOpencodeAPI(t, resolveVM(t, name)+":4096", pw) // the parent keeps its own
	if cached, _ := cachedOpencode(t, capability.OpencodeVersion); !slices.Equal(cached.UsedBy, []string{name, "aif-1"}) {
		t.Errorf("cache entry used by %v, want [%s aif-1]", cached.UsedBy, name)
	}
	must(t, "vm", "delete", "--force", "aif-1")

	// Stop and start: the forward ends with the guest, the server comes
	// back from the cached binary (no second download).
	must(t, "vm", "stop", name)
	if c := onlyCap(t, showCapVM(t, name), "opencode"); c.State != "stopped" {
		t.Errorf("after vm stop: capability %+v, want state stopped", c)
	}
	assertNoListener(t, fwd)
	t0 = time.Now()
	if r := E.bangerRes("vm", "start", name); r.code != 0 {
		t.Fatalf("vm start: exit %d\n%s\n%s\nbangerd.log tail:\n%s", r.code, r.stdout, r.stderr, bangerdLogTail())
	}
	t.Logf("start → opencode ready in %.1fs", time.Since(t0).Seconds())
	v = showCapVM(t, name)
	if c = onlyCap(t, v, "opencode"); v.State != "running" || c.State != "ready" {
		t.Fatalf("after vm start: state %s, capability %+v", v.State, c)
	}
	if n := E.npm.requests(tgz) - fetched; n != 1 {
		t.Errorf("after stop+start the tarball was fetched %d times in all, want 1 (the cache)", n)
	}
	pw = readPassword(t, c)
	assertOpencodeAPI(t, resolveVM(t, name)+":4096", pw)
	fwd = parseForward(t, must(t, "vm", "forward", name, "4096", "--local", "127.0.0.1:0", "--detach"))
	assertOpencodeAPI(t, fwd, pw)

	// Delete: the cache stays, used by nobody; no forward and no secret
	// outlive the VM.
	must(t, "vm", "delete", "--force", name)
	assertNoListener(t, fwd)
	if cached, ok := cachedOpencode(t, capability.OpencodeVersion); !ok || len(cached.UsedBy) != 0 {
		t.Errorf("after delete: opencode cache entry %+v (found %v), want kept and unused", cached, ok)
	}
	if _, err := os.Stat(c.PasswordFile); !os.IsNotExist(err) {
		t.Errorf("password file %s outlived the VM (err %v)", c.PasswordFile, err)
	}
	assertGone(t, v.vmView)
}

// npmCacheFiles lists the daemon's npm cache (relative paths).
func npmCacheFiles(t *testing.T) []string {
	t.Helper()
	root := filepath.Join(E.stateDir, "cache", "npm")
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			files = append(files, rel)
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return files
}

// TestCapabilityFailures: a capability that fails fails the create with its
// name and leaves a VM in error holding nothing; a tarball whose bytes do
// not match the integrity its registry advertises is refused before the VM
// boots and never cached; an unknown capability leaves no VM.
func TestCapabilityFailures(t *testing.T) {
	t.Run("broken", func(t *testing.T) {
		const name = "capbad"
		deleteOnCleanup(t, name)
		upBefore := upPoolTaps(t)
		t0 := time.Now()
		r := E.bangerRes("vm", "create", "--name", name, "--cap", "opencode@"+npmBrokenVersion)
		t.Logf("create with a broken opencode: exit %d in %.1fs\n%s", r.code, time.Since(t0).Seconds(), r.stderr)
		if r.code == 0 || !strings.Contains(r.stderr, "capability opencode") ||
			!(strings.Contains(r.stderr, npmBrokenMessage) || strings.Contains(r.stderr, "banger-opencode")) {
			t.Fatalf("create with a broken opencode: exit %d, want a failure naming the capability and the service\n%s%s",
				r.code, r.stdout, r.stderr)
		}
		// A dead service is seen as dead, not waited out to a timeout.
		if r.dur > 90*time.Second {
			t.Errorf("create with a broken opencode took %.0fs to fail", r.dur.Seconds())
		}
		v := showCapVM(t, name)
		c := onlyCap(t, v, "opencode")
		if v.State != "error" || c.State != "failed" || c.Error == "" || v.PID != 0 {
			t.Fatalf("after the failed create: state %s pid %d, capability %+v", v.State, v.PID, c)
		}
		assertNotHeld(t, v.vmView)
		if up := upPoolTaps(t); len(up) > len(upBefore) {
			t.Errorf("pooled taps up before %v, after %v", upBefore, up)
		}
		for tap, holder := range tapPool(t) {
			if holder == name {
				t.Errorf("tap %s still held by %s", tap, name)
			}
		}
		must(t, "vm", "delete", name)
		assertGone(t, v.vmView)
		if cached, ok := cachedOpencode(t, npmBrokenVersion); ok && len(cached.UsedBy) != 0 {
			t.Errorf("after delete: cache entry %+v still used", cached)
		}
	})

	t.Run("tampered", func(t *testing.T) {
		const name = "captamper"
		deleteOnCleanup(t, name)
		tgz := tarballPath(capability.OpencodePackage, npmTamperedVersion)
		before, files := E.npm.requests(tgz), npmCacheFiles(t)
		r := E.bangerRes("vm", "create", "--name", name, "--cap", "opencode@"+npmTamperedVersion)
		t.Logf("create with a tampered tarball: exit %d in %.1fs\n%s", r.code, r.dur.Seconds(), r.stderr)
		if r.code == 0 || !strings.Contains(r.stderr, "capability opencode") || !strings.Contains(r.stderr, "integrity") {
			t.Fatalf("create with a tampered tarball: exit %d, want a refusal naming the capability and integrity\n%s%s",
				r.code, r.stdout, r.stderr)
		}
		if E.npm.requests(tgz) == before {
			t.Fatalf("the tampered tarball was never fetched: the refusal is not the integrity check's")
		}
		// Refused before the boot: the VMM never ran.
		if !strings.Contains(r.stderr, "cap_prepare:opencode") || strings.Contains(r.stderr, "vmm_launch") || r.dur > 30*time.Second {
			t.Errorf("the refusal came after the VMM launch, or slowly (%.1fs):\n%s", r.dur.Seconds(), r.stderr)
		}
		if _, ok := cachedOpencode(t, npmTamperedVersion); ok {
			t.Errorf("cap list shows a cache entry for the tampered version")
		}
		if now := npmCacheFiles(t); !slices.Equal(now, files) {
			t.Errorf("the npm cache changed: before %v, after %v", files, now)
		}
		// Like any failed start the row may stay (in error); it holds nothing.
		if out := must(t, "vm", "list", "--json"); strings.Contains(out, `"`+name+`"`) {
			v := showCapVM(t, name)
			if v.State != "error" || v.PID != 0 {
				t.Errorf("after the refusal: state %s pid %d", v.State, v.PID)
			}
			assertNotHeld(t, v.vmView)
			must(t, "vm", "delete", name)
			assertGone(t, v.vmView)
		}
	})

	t.Run("unknown", func(t *testing.T) {
		const name = "capnosuch"
		deleteOnCleanup(t, name)
		r := E.bangerRes("vm", "create", "--name", name, "--cap", "nosuch")
		if r.code == 0 || !strings.Contains(r.stderr, `unknown capability "nosuch"`) {
			t.Fatalf("create --cap nosuch: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if out := must(t, "vm", "list", "--json"); strings.Contains(out, `"`+name+`"`) {
			t.Fatalf("create --cap nosuch left a VM:\n%s", out)
		}
	})
}

// TestNPMRegistryServes: the harness's fake registry serves a version
// document whose dist.integrity and dist.shasum match the tarball at
// dist.tarball (the tampered version's on purpose do not), and 404 for what
// it does not have.
func TestNPMRegistryServes(t *testing.T) {
	get := func(path string) (int, []byte) {
		t.Helper()
		code, b, err := npmGet(E.npm, E.ns, path)
		if err != nil {
			t.Fatal(err)
		}
		return code, b
	}
	for _, tc := range []struct {
		version string
		match   bool
	}{{npmBrokenVersion, true}, {npmTamperedVersion, false}} {
		code, b := get("/" + capability.OpencodePackage + "/" + tc.version)
		var doc struct {
			Name, Version string
			Dist          struct{ Tarball, Integrity, Shasum string }
		}
		if code != http.StatusOK || json.Unmarshal(b, &doc) != nil || doc.Name != capability.OpencodePackage || doc.Version != tc.version {
			t.Fatalf("%s: %d %s", tc.version, code, b)
		}
		if !strings.HasPrefix(doc.Dist.Tarball, E.npm.url+"/") {
			t.Fatalf("%s: tarball %q is not on the registry", tc.version, doc.Dist.Tarball)
		}
		code, tgz := get(strings.TrimPrefix(doc.Dist.Tarball, E.npm.url))
		if code != http.StatusOK {
			t.Fatalf("%s: tarball: %d", tc.version, code)
		}
		if match := npmIntegrity(tgz) == doc.Dist.Integrity && npmShasum(tgz) == doc.Dist.Shasum; match != tc.match {
			t.Fatalf("%s: integrity %s shasum %s of the served bytes; advertised %s %s", tc.version,
				npmIntegrity(tgz), npmShasum(tgz), doc.Dist.Integrity, doc.Dist.Shasum)
		}
		if tc.version == npmBrokenVersion {
			assertNPMBin(t, tgz, npmBrokenMessage)
		}
	}
	for _, p := range []string{"/" + capability.OpencodePackage + "/9.9.9", "/nosuch/1.0.0", tarballPath("nosuch", "1.0.0")} {
		if code, b := get(p); code != http.StatusNotFound {
			t.Fatalf("%s: %d %s, want 404", p, code, b)
		}
	}
}

// assertNPMBin checks that an npm tarball holds an executable
// package/bin/opencode containing want.
func assertNPMBin(t *testing.T, tgz []byte, want string) {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no %s in the tarball: %v", capability.OpencodeMember, err)
		}
		if h.Name != capability.OpencodeMember {
			continue
		}
		b, _ := io.ReadAll(tr)
		if h.Typeflag != tar.TypeReg || h.Mode&0o111 == 0 || !strings.Contains(string(b), want) {
			t.Fatalf("%s: type %c mode %o content %q", h.Name, h.Typeflag, h.Mode, b)
		}
		return
	}
}
