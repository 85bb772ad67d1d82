package capability

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/npm"
)

// serverMode is what listens on the fake guest's port 4096.
type serverMode int

const (
	serverUp            serverMode = iota // the unit's server, answering once started
	serverLate                            // the unit's server, refusing the first upAfter probes
	serverNever                           // nothing ever listens
	serverOtherPassword                   // some other server, with another password
)

const (
	guestEnvFile     = "/etc/banger/opencode.env"
	guestUserEnvFile = "/etc/banger/opencode.user.env"
	guestUnitFile    = "/etc/systemd/system/" + opencodeUnit
)

// fakeGuest is the guest as the opencode capability's scripts see it. It
// keeps the state those scripts leave behind (files with their modes, the
// binaries under their sha256 directories, the service) and answers each
// script by what the script says, not by the order of the calls.
type fakeGuest struct {
	t *testing.T

	// Set by the test before use.
	systemd     bool
	pid1        string
	shortCopy   bool // the guest's copy loses the last byte
	mode        serverMode
	upAfter     int   // serverLate: probes refused before it answers
	dialErr     error // every Dial fails so
	activeState string
	nRestarts   int
	journal     string

	mu       sync.Mutex
	files    map[string][]byte // guest path → content
	modes    map[string]string // guest path → mode the script gave it
	copies   int               // copy scripts run
	starts   int               // systemctl start (nothing changed)
	restarts int               // systemctl restart (something changed)
	reloads  int               // systemctl daemon-reload
	probes   int               // Dial(4096) calls
	checks   int               // systemctl show calls
	served   []string          // "user:password path → status", one per request answered
	wg       sync.WaitGroup
}

func newFakeGuest(t *testing.T) *fakeGuest {
	g := &fakeGuest{
		t: t, systemd: true, pid1: "systemd", mode: serverUp, activeState: "active",
		journal: "opencode: listening on 0.0.0.0:4096\n",
		files:   map[string][]byte{}, modes: map[string]string{},
	}
	t.Cleanup(g.wg.Wait)
	return g
}

var (
	checkRE   = regexp.MustCompile(`\[ -x (/\S+)/opencode \] && echo have \|\| echo need`)
	copyDirRE = regexp.MustCompile(`(?m)^d=(/\S+)$`)
	copyLenRE = regexp.MustCompile(`\[ "\$n" = (\d+) \] \|\|`)
	copyRmRE  = regexp.MustCompile(`(?m)^for o in (/\S+)/\*; do \[ "\$o" = "\$d" \] \|\| rm -rf "\$o"; done$`)
	putRE     = regexp.MustCompile(`^put (/\S+) ([0-7]{3})(?: <<'(\w+)')?$`)
	execRE    = regexp.MustCompile(`(?m)^ExecStart=(\S+)`)
	envPassRE = regexp.MustCompile(`(?m)^OPENCODE_SERVER_PASSWORD=(.*)$`)
	envUserRE = regexp.MustCompile(`(?m)^OPENCODE_SERVER_USERNAME=(.*)$`)
)

func (g *fakeGuest) Run(ctx context.Context, script string, stdin io.Reader) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case strings.Contains(script, "/run/systemd/system"):
		return g.check(script), nil
	case strings.Contains(script, ".opencode.tmp"):
		return g.copyIn(script, stdin), nil
	case strings.Contains(script, "put "+guestUnitFile):
		return g.install(script, stdin), nil
	case script == "systemctl show -p ActiveState -p NRestarts "+opencodeUnit:
		g.checks++
		state := g.activeState
		if !g.binaryInstalled() {
			state = "failed"
		}
		return Result{Stdout: fmt.Sprintf("ActiveState=%s\nNRestarts=%d\n", state, g.nRestarts)}, nil
	case strings.HasPrefix(script, "journalctl -u "+opencodeUnit+" "):
		return Result{Stdout: g.journal}, nil
	}
	g.t.Errorf("fake guest: unexpected script:\n%s", script)
	return Result{Code: 127, Stderr: "fake guest: unexpected script"}, nil
}

// check is the systemd and have/need script.
func (g *fakeGuest) check(script string) Result {
	if !g.systemd {
		return Result{Code: exitNoSystemd, Stderr: "PID 1 is " + g.pid1 + "\n"}
	}
	m := checkRE.FindStringSubmatch(script)
	if m == nil {
		g.t.Errorf("fake guest: check script without the [ -x DIR/opencode ] test:\n%s", script)
		return Result{Code: 2}
	}
	if _, ok := g.files[m[1]+"/opencode"]; ok && g.modes[m[1]+"/opencode"] == "755" {
		return Result{Stdout: "have\n"}
	}
	return Result{Stdout: "need\n"}
}

// copyIn is the copy script: stdin lands in DIR/.opencode.tmp, is checked
// against the size the script names (if it names one), then moved to
// DIR/opencode; other directories beside DIR go.
func (g *fakeGuest) copyIn(script string, stdin io.Reader) Result {
	g.copies++
	dm := copyDirRE.FindStringSubmatch(script)
	if dm == nil || stdin == nil {
		g.t.Errorf("fake guest: copy script without d=DIR or stdin:\n%s", script)
		return Result{Code: 2}
	}
	dir := dm[1]
	data, err := io.ReadAll(stdin)
	if err != nil {
		return Result{Code: 1, Stderr: "cat: " + err.Error()}
	}
	if g.shortCopy && len(data) > 0 {
		data = data[:len(data)-1]
	}
	tmp := dir + "/.opencode.tmp"
	g.files[tmp] = data
	if m := copyLenRE.FindStringSubmatch(script); m != nil {
		if want, _ := strconv.Atoi(m[1]); len(data) != want {
			return Result{Code: 1, Stderr: fmt.Sprintf("copied %d bytes of %d\n", len(data), want)}
		}
	}
	delete(g.files, tmp)
	g.files[dir+"/opencode"] = data
	g.modes[dir+"/opencode"] = "755"
	if m := copyRmRE.FindStringSubmatch(script); m != nil {
		for p := range g.files {
			if strings.HasPrefix(p, m[1]+"/") && !strings.HasPrefix(p, dir+"/") {
				delete(g.files, p)
				delete(g.modes, p)
			}
		}
	}
	return Result{}
}

// install is the script that puts the env files and the unit, then starts
// or restarts the service: each `put PATH MODE` takes a here-document or,
// without one, stdin.
func (g *fakeGuest) install(script string, stdin io.Reader) Result {
	changed := false
	lines := strings.Split(script, "\n")
	for i := 0; i < len(lines); i++ {
		m := putRE.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		var content []byte
		if m[3] != "" {
			end := slices.Index(lines[i+1:], m[3])
			if end < 0 {
				g.t.Errorf("fake guest: here-document %s not closed", m[3])
				return Result{Code: 2}
			}
			content = []byte(strings.Join(lines[i+1:i+1+end], "\n") + "\n")
			i += end + 1
		} else {
			if stdin == nil {
				return Result{Code: 1, Stderr: "put " + m[1] + ": no stdin"}
			}
			b, err := io.ReadAll(stdin)
			if err != nil {
				return Result{Code: 1, Stderr: err.Error()}
			}
			content = b
		}
		if old, ok := g.files[m[1]]; !ok || !bytes.Equal(old, content) {
			g.files[m[1]] = content
			changed = true
		}
		g.modes[m[1]] = m[2]
	}
	if changed && strings.Contains(script, "systemctl daemon-reload") {
		g.reloads++
	}
	if changed {
		g.restarts++
	} else {
		g.starts++
	}
	return Result{}
}

// binaryInstalled: the unit's ExecStart names an installed, executable
// binary (else the service cannot start).
func (g *fakeGuest) binaryInstalled() bool {
	m := execRE.FindSubmatch(g.files[guestUnitFile])
	return m != nil && g.files[string(m[1])] != nil && g.modes[string(m[1])] == "755"
}

// listening says whether something answers on port 4096 now.
func (g *fakeGuest) listening() bool {
	switch g.mode {
	case serverNever:
		return false
	case serverOtherPassword:
		return true
	case serverLate:
		if g.probes <= g.upAfter {
			return false
		}
	}
	return g.starts+g.restarts > 0 && g.binaryInstalled()
}

func (g *fakeGuest) Dial(ctx context.Context, port int) (io.ReadWriteCloser, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dialErr != nil {
		return nil, g.dialErr
	}
	if port != OpencodePort {
		g.t.Errorf("fake guest: Dial(%d), want %d", port, OpencodePort)
	}
	g.probes++
	if !g.listening() {
		return nil, fmt.Errorf("agent dial: connect 127.0.0.1:%d: connection refused", port)
	}
	// The server's credentials: what its EnvironmentFile said when it
	// started, or another server's.
	user, pass := "opencode", "not-bangers-password-at-all-0123456789"
	if g.mode != serverOtherPassword {
		env := g.files[guestEnvFile]
		user, pass = "", ""
		if m := envUserRE.FindSubmatch(env); m != nil {
			user = string(m[1])
		}
		if m := envPassRE.FindSubmatch(env); m != nil {
			pass = string(m[1])
		}
	}
	c, s := net.Pipe()
	g.wg.Add(1)
	go g.serve(s, user, pass)
	return c, nil
}

// serve answers one HTTP request as opencode's server does: basic auth
// or 401.
func (g *fakeGuest) serve(s net.Conn, user, pass string) {
	defer g.wg.Done()
	defer s.Close()
	req, err := http.ReadRequest(bufio.NewReader(s))
	if err != nil {
		return
	}
	u, p, ok := req.BasicAuth()
	status, body := http.StatusOK, `{"$schema":"https://opencode.ai/config.json"}`
	switch {
	case !ok || u != user || p != pass || user == "" || pass == "":
		status, body = http.StatusUnauthorized, "Unauthorized"
	case req.Method != http.MethodGet || req.URL.Path != "/config":
		status, body = http.StatusNotFound, "not found"
	}
	g.mu.Lock()
	g.served = append(g.served, fmt.Sprintf("%s:%s %s → %d", u, p, req.URL.Path, status))
	g.mu.Unlock()
	resp := &http.Response{
		StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, Request: req, Close: true,
		Header:        http.Header{"Content-Type": {"application/json"}},
		ContentLength: int64(len(body)), Body: io.NopCloser(strings.NewReader(body)),
	}
	_ = resp.Write(s)
}

// state returns a copy of what the guest holds, for comparisons.
func (g *fakeGuest) snapshot() (files map[string]string, copies, starts, restarts, probes int, served []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	files = map[string]string{}
	for p, b := range g.files {
		files[p] = g.modes[p] + " " + string(b)
	}
	return files, g.copies, g.starts, g.restarts, g.probes, slices.Clone(g.served)
}

// fakeFetcher is the npm cache: each fetch writes a real file, its content
// made from the version, and records what it was asked.
type fakeFetcher struct {
	dir string
	err error

	mu    sync.Mutex
	calls []fetchCall
	files []npm.File
}

type fetchCall struct {
	pkg, version, integrity, member string
	limit                           int64
}

func newFakeFetcher(t *testing.T) *fakeFetcher { return &fakeFetcher{dir: t.TempDir()} }

func (f *fakeFetcher) Fetch(ctx context.Context, pkg, version, integrity, member string, limit int64, progress func(done, total int64)) (npm.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fetchCall{pkg, version, integrity, member, limit})
	if f.err != nil {
		return npm.File{}, f.err
	}
	// Big enough to need several writes through a pipe.
	content := bytes.Repeat([]byte("\x7fELF opencode "+version+"\n"), 10000)
	p := filepath.Join(f.dir, pkg, version, path.Base(member))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return npm.File{}, err
	}
	if err := os.WriteFile(p, content, 0o555); err != nil {
		return npm.File{}, err
	}
	sum := sha256.Sum256(content)
	if integrity == "" {
		integrity = "sha512-published-for-" + version
	}
	file := npm.File{
		Path: p, Package: pkg, Version: version, Integrity: integrity, Member: member,
		SHA256: hex.EncodeToString(sum[:]), Size: int64(len(content)), Fetched: time.Now(),
	}
	f.files = append(f.files, file)
	return file, nil
}

func (f *fakeFetcher) List() ([]npm.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append(slices.Clone(f.files), npm.File{Package: "left-pad", Version: "1.3.0"}), nil
}

func (f *fakeFetcher) last(t *testing.T) (fetchCall, npm.File) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 || len(f.files) == 0 {
		t.Fatal("nothing fetched")
	}
	return f.calls[len(f.calls)-1], f.files[len(f.files)-1]
}

func newTestOpencode(t *testing.T) (*Opencode, *fakeFetcher) {
	f := newFakeFetcher(t)
	return &Opencode{Fetch: f, Poll: 5 * time.Millisecond, ReadyTimeout: 30 * time.Second}, f
}

func testVM(t *testing.T) VM {
	return VM{ID: "0123abcd", Name: "ai", Dir: t.TempDir()}
}

func wantUnit(sha string) string {
	return `[Unit]
Description=opencode server (banger capability)
After=network-online.target

[Service]
Environment=HOME=/root OPENCODE_DISABLE_AUTOUPDATE=1
EnvironmentFile=-/etc/banger/opencode.user.env
EnvironmentFile=/etc/banger/opencode.env
WorkingDirectory=/root
ExecStart=/usr/local/lib/banger/opencode/` + sha + `/opencode serve --hostname 0.0.0.0 --port 4096
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
`
}

func TestOpencodeHappyPath(t *testing.T) {
	o, f := newTestOpencode(t)
	g := newFakeGuest(t)
	vm := testVM(t)
	ctx := t.Context()

	if err := o.Prepare(ctx, vm); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if err := o.PostStart(ctx, vm, g); err != nil {
		t.Fatalf("PostStart: %v", err)
	}
	_, file := f.last(t)
	hostBin, err := os.ReadFile(file.Path)
	if err != nil {
		t.Fatal(err)
	}
	pwPath := filepath.Join(vm.Dir, "opencode.password")
	st, err := os.Lstat(pwPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode() != 0o600 {
		t.Fatalf("password file mode %v, want -rw-------", st.Mode())
	}
	pwb, err := os.ReadFile(pwPath)
	if err != nil {
		t.Fatal(err)
	}
	pw := strings.TrimSpace(string(pwb))
	if !passwordRE.MatchString(pw) || len(pw) < 32 {
		t.Fatalf("password %q is not a strong banger password", pw)
	}

	binPath := "/usr/local/lib/banger/opencode/" + file.SHA256 + "/opencode"
	files, copies, starts, restarts, _, served := g.snapshot()
	want := map[string]string{
		binPath:       "755 " + string(hostBin),
		guestEnvFile:  "600 OPENCODE_SERVER_USERNAME=opencode\nOPENCODE_SERVER_PASSWORD=" + pw + "\n",
		guestUnitFile: "644 " + wantUnit(file.SHA256),
	}
	for p, w := range want {
		if files[p] != w {
			t.Errorf("guest %s:\n%.300q\nwant\n%.300q", p, files[p], w)
		}
	}
	if len(files) != len(want) {
		t.Errorf("guest files %v, want only %v", slices.Sorted(mapKeys(files)), slices.Sorted(mapKeys(want)))
	}
	if copies != 1 || restarts != 1 || starts != 0 {
		t.Errorf("copies %d restarts %d starts %d, want 1 1 0", copies, restarts, starts)
	}
	// The server checked the password the host keeps.
	if want := []string{"opencode:" + pw + " /config → 200"}; !slices.Equal(served, want) {
		t.Errorf("served %q, want %q", served, want)
	}

	// The next start: the same password, the binary is there (no copy),
	// nothing changed (start, not restart).
	if err := o.Prepare(ctx, vm); err != nil {
		t.Fatalf("Prepare again: %v", err)
	}
	if err := o.PostStart(ctx, vm, g); err != nil {
		t.Fatalf("PostStart again: %v", err)
	}
	if b, _ := os.ReadFile(pwPath); string(b) != string(pwb) {
		t.Errorf("the password changed on the second start: %q → %q", pwb, b)
	}
	files2, copies, starts, restarts, _, served := g.snapshot()
	if copies != 1 || restarts != 1 || starts != 1 {
		t.Errorf("after the second start: copies %d restarts %d starts %d, want 1 1 1", copies, restarts, starts)
	}
	if len(files2) != len(files) || files2[binPath] != files[binPath] {
		t.Errorf("the second start changed the guest's files")
	}
	if len(served) != 2 || served[1] != served[0] {
		t.Errorf("served %q", served)
	}

	c := o.Connect(vm, "ai.vm")
	if c.PasswordFile != pwPath || c.Command != "OPENCODE_SERVER_PASSWORD=$(cat "+pwPath+") opencode attach http://ai.vm:4096" {
		t.Errorf("Connect = %+v", c)
	}

	// Cleanup forgets the VM (twice is fine); PostStart then refuses.
	for range 2 {
		if err := o.Cleanup(ctx, vm); err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
	}
	if err := o.PostStart(ctx, vm, g); err == nil || !strings.Contains(err.Error(), "not prepared") {
		t.Fatalf("PostStart after Cleanup = %v, want not prepared", err)
	}
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestOpencodeVersionChangeReplacesBinary(t *testing.T) {
	o, f := newTestOpencode(t)
	g := newFakeGuest(t)
	vm := testVM(t)
	ctx := t.Context()
	if err := errors.Join(o.Prepare(ctx, vm), o.PostStart(ctx, vm, g)); err != nil {
		t.Fatal(err)
	}
	_, old := f.last(t)
	vm.Version = "1.20.0"
	if err := errors.Join(o.Prepare(ctx, vm), o.PostStart(ctx, vm, g)); err != nil {
		t.Fatal(err)
	}
	_, cur := f.last(t)
	if cur.SHA256 == old.SHA256 {
		t.Fatal("the fake fetcher gave both versions the same bytes")
	}
	files, copies, _, restarts, _, _ := g.snapshot()
	if copies != 2 || restarts != 2 {
		t.Errorf("copies %d restarts %d, want 2 2", copies, restarts)
	}
	if _, ok := files["/usr/local/lib/banger/opencode/"+old.SHA256+"/opencode"]; ok {
		t.Error("the old version's binary stayed in the guest")
	}
	if _, ok := files["/usr/local/lib/banger/opencode/"+cur.SHA256+"/opencode"]; !ok {
		t.Error("the new version's binary is not in the guest")
	}
	if files[guestUnitFile] != "644 "+wantUnit(cur.SHA256) {
		t.Errorf("unit:\n%s", files[guestUnitFile])
	}
}

func TestOpencodePinnedVersionAndIntegrity(t *testing.T) {
	for _, tc := range []struct {
		asked, version, integrity string
	}{
		{"", OpencodeVersion, OpencodeIntegrity},
		{OpencodeVersion, OpencodeVersion, OpencodeIntegrity},
		{"1.2.3", "1.2.3", ""},
		{"1.18.33-beta", "1.18.33-beta", ""},
	} {
		o, f := newTestOpencode(t)
		vm := testVM(t)
		vm.Version = tc.asked
		if err := o.Prepare(t.Context(), vm); err != nil {
			t.Fatalf("Prepare(%q): %v", tc.asked, err)
		}
		call, _ := f.last(t)
		want := fetchCall{OpencodePackage, tc.version, tc.integrity, OpencodeMember, opencodeMaxBinary}
		if call != want {
			t.Errorf("opencode@%s fetched %+v, want %+v", tc.asked, call, want)
		}
		if got := o.EffectiveVersion(tc.asked); got != tc.version {
			t.Errorf("EffectiveVersion(%q) = %q, want %q", tc.asked, got, tc.version)
		}
	}
	if !strings.HasPrefix(OpencodeIntegrity, "sha512-") {
		t.Errorf("OpencodeIntegrity %q is not a sha512 SSRI", OpencodeIntegrity)
	}
}

func TestOpencodePrepareFetchError(t *testing.T) {
	o, f := newTestOpencode(t)
	f.err = fmt.Errorf("npm: integrity mismatch: %w", api.ErrInvalid)
	vm := testVM(t)
	if err := o.Prepare(t.Context(), vm); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("Prepare = %v, want the fetch error", err)
	}
	if err := o.PostStart(t.Context(), vm, newFakeGuest(t)); err == nil {
		t.Fatal("PostStart after a failed Prepare succeeded")
	}
}

func TestOpencodeCached(t *testing.T) {
	o, f := newTestOpencode(t)
	if err := o.Prepare(t.Context(), testVM(t)); err != nil {
		t.Fatal(err)
	}
	got, err := o.Cached()
	if err != nil {
		t.Fatal(err)
	}
	_, file := f.last(t)
	if len(got) != 1 || got[0] != file {
		t.Fatalf("Cached = %+v, want only %+v", got, file)
	}
}

func TestOpencodeNoSystemd(t *testing.T) {
	o, _ := newTestOpencode(t)
	g := newFakeGuest(t)
	g.systemd, g.pid1 = false, "busybox-init"
	vm := testVM(t)
	if err := o.Prepare(t.Context(), vm); err != nil {
		t.Fatal(err)
	}
	err := o.PostStart(t.Context(), vm, g)
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "systemd") || !strings.Contains(err.Error(), "PID 1 is busybox-init") {
		t.Fatalf("PostStart = %v, want api.ErrInvalid naming systemd and PID 1", err)
	}
	if files, copies, _, _, probes, _ := g.snapshot(); len(files) != 0 || copies != 0 || probes != 0 {
		t.Fatalf("went on after the check: files %v copies %d probes %d", files, copies, probes)
	}
}

func TestOpencodeShortCopyRefused(t *testing.T) {
	o, f := newTestOpencode(t)
	g := newFakeGuest(t)
	g.shortCopy = true
	vm := testVM(t)
	if err := o.Prepare(t.Context(), vm); err != nil {
		t.Fatal(err)
	}
	_, file := f.last(t)
	err := o.PostStart(t.Context(), vm, g)
	if err == nil || !strings.Contains(err.Error(), "exit 1") ||
		!strings.Contains(err.Error(), fmt.Sprintf("copied %d bytes of %d", file.Size-1, file.Size)) {
		t.Fatalf("PostStart = %v, want the short copy refused", err)
	}
	files, _, starts, restarts, _, _ := g.snapshot()
	for p := range files {
		if strings.HasSuffix(p, "/opencode") {
			t.Errorf("a short binary was installed at %s", p)
		}
	}
	if starts+restarts != 0 {
		t.Error("the service was started after a short copy")
	}
}

func TestOpencodeReadyAfterSomeProbes(t *testing.T) {
	o, _ := newTestOpencode(t)
	g := newFakeGuest(t)
	g.mode, g.upAfter = serverLate, 7
	vm := testVM(t)
	if err := errors.Join(o.Prepare(t.Context(), vm), o.PostStart(t.Context(), vm, g)); err != nil {
		t.Fatal(err)
	}
	_, _, _, _, probes, served := g.snapshot()
	if probes != 8 || len(served) != 1 || !strings.HasSuffix(served[0], "→ 200") {
		t.Fatalf("probes %d served %q, want 8 probes, one answered 200", probes, served)
	}
}

func TestOpencodeWrongPasswordServerFailsAtOnce(t *testing.T) {
	o, _ := newTestOpencode(t)
	o.ReadyTimeout = 10 * time.Second
	g := newFakeGuest(t)
	g.mode = serverOtherPassword
	vm := testVM(t)
	if err := o.Prepare(t.Context(), vm); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := o.PostStart(t.Context(), vm, g)
	if err == nil || !strings.Contains(err.Error(), "refuses banger's password (401)") {
		t.Fatalf("PostStart = %v, want a 401 error", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("the 401 error took %s (ReadyTimeout %s): want it at once", el, o.ReadyTimeout)
	}
	if _, _, _, _, probes, _ := g.snapshot(); probes != 1 {
		t.Fatalf("%d probes, want 1", probes)
	}
}

func TestOpencodeUnitFailingEndsTheWait(t *testing.T) {
	for _, tc := range []struct {
		name     string
		state    string
		restarts int
	}{
		{"failed", "failed", 0},
		{"restarting", "activating", opencodeRestartsFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, _ := newTestOpencode(t)
			o.ReadyTimeout = 10 * time.Second
			g := newFakeGuest(t)
			g.mode, g.activeState, g.nRestarts = serverNever, tc.state, tc.restarts
			g.journal = "Error: Unable to connect. Is the computer able to access the url?\nopencode exited 1\n"
			vm := testVM(t)
			if err := o.Prepare(t.Context(), vm); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			err := o.PostStart(t.Context(), vm, g)
			if err == nil || !strings.Contains(err.Error(), opencodeUnit+" is "+tc.state) ||
				!strings.Contains(err.Error(), "journal: "+g.journal) {
				t.Fatalf("PostStart = %v, want the unit's state and journal", err)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Fatalf("took %s (ReadyTimeout %s): want it well before the timeout", el, o.ReadyTimeout)
			}
		})
	}
}

func TestOpencodeHealthyUnitNotReported(t *testing.T) {
	// One restart is not yet "keeps failing": the wait goes on.
	o, _ := newTestOpencode(t)
	g := newFakeGuest(t)
	g.mode, g.upAfter, g.nRestarts = serverLate, 10, opencodeRestartsFailed-1
	vm := testVM(t)
	if err := errors.Join(o.Prepare(t.Context(), vm), o.PostStart(t.Context(), vm, g)); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.checks < 3 {
		t.Fatalf("the unit was checked %d times over 11 probes, want >= 3", g.checks)
	}
}

func TestOpencodeNeverReadyTimesOut(t *testing.T) {
	o, _ := newTestOpencode(t)
	o.ReadyTimeout = 300 * time.Millisecond
	g := newFakeGuest(t)
	g.mode = serverNever
	g.journal = "opencode: still loading\n"
	vm := testVM(t)
	if err := o.Prepare(t.Context(), vm); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := o.PostStart(t.Context(), vm, g)
	if err == nil || !strings.Contains(err.Error(), "not answering on port 4096 after 300ms") ||
		!strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "journal: opencode: still loading") {
		t.Fatalf("PostStart = %v, want the timeout with the last error and the journal", err)
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 10*time.Second {
		t.Fatalf("took %s for a 300ms ReadyTimeout", el)
	}
	if _, _, _, _, probes, _ := g.snapshot(); probes < 2 {
		t.Fatalf("%d probes in 300ms at a 5ms poll", probes)
	}
}

func TestOpencodeCallerCancelIsNotATimeout(t *testing.T) {
	o, _ := newTestOpencode(t)
	g := newFakeGuest(t)
	g.mode = serverNever
	vm := testVM(t)
	if err := o.Prepare(t.Context(), vm); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := o.PostStart(ctx, vm, g); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("PostStart = %v, want the caller's context error", err)
	}
}

func TestOpencodeNoAgentDialFailsAtOnce(t *testing.T) {
	for _, sentinel := range []error{agent.ErrAgentTooOld, guest.ErrNoAgent} {
		t.Run(sentinel.Error(), func(t *testing.T) {
			o, _ := newTestOpencode(t)
			o.ReadyTimeout = 10 * time.Second
			g := newFakeGuest(t)
			g.dialErr = fmt.Errorf("agent dial: %w for forward (protocol 1.1)", sentinel)
			vm := testVM(t)
			if err := o.Prepare(t.Context(), vm); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			err := o.PostStart(t.Context(), vm, g)
			if !errors.Is(err, sentinel) || !strings.Contains(err.Error(), "needs the guest agent's dial") {
				t.Fatalf("PostStart = %v, want a clear error wrapping %v", err, sentinel)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Fatalf("took %s: want it at once", el)
			}
		})
	}
}

func TestOpencodePostStartWithoutPrepare(t *testing.T) {
	o, _ := newTestOpencode(t)
	g := newFakeGuest(t)
	err := o.PostStart(t.Context(), testVM(t), g)
	if err == nil || !strings.Contains(err.Error(), "not prepared") {
		t.Fatalf("PostStart = %v, want not prepared", err)
	}
	if files, _, _, _, probes, _ := g.snapshot(); len(files) != 0 || probes != 0 {
		t.Fatalf("touched the guest: %v, %d probes", files, probes)
	}
}

func TestOpencodePasswordFileSymlinkRefused(t *testing.T) {
	// A secret of the user's that happens to look like a password: read
	// through a planted symlink it would be sent to the guest.
	secret := strings.Repeat("s3cr3t", 8) + "\n"
	for _, tc := range []struct {
		name   string
		target func(dir string) string
	}{
		{"to a file", func(dir string) string {
			p := filepath.Join(dir, "secret")
			if err := os.WriteFile(p, []byte(secret), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}},
		{"dangling", func(dir string) string { return filepath.Join(dir, "created-through-the-link") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, _ := newTestOpencode(t)
			vm := testVM(t)
			target := tc.target(t.TempDir())
			if err := os.Symlink(target, filepath.Join(vm.Dir, "opencode.password")); err != nil {
				t.Fatal(err)
			}
			before, beforeErr := os.ReadFile(target)
			err := o.Prepare(t.Context(), vm)
			if err == nil {
				t.Fatal("Prepare followed a symlinked password file")
			}
			after, afterErr := os.ReadFile(target)
			if !bytes.Equal(before, after) || (beforeErr == nil) != (afterErr == nil) {
				t.Fatalf("the symlink's target changed: %q (%v) → %q (%v)", before, beforeErr, after, afterErr)
			}
			if err := o.PostStart(t.Context(), vm, newFakeGuest(t)); err == nil {
				t.Fatal("PostStart after a refused Prepare succeeded")
			}
		})
	}
}

func TestOpencodePasswordFileJunkRefused(t *testing.T) {
	for _, tc := range []struct{ name, content string }{
		{"empty", ""},
		{"too short", strings.Repeat("a", 31)},
		{"too long", strings.Repeat("a", 129)},
		{"oversized", strings.Repeat("a", 1<<20)},
		// A good password, then junk past the read limit: refused, not
		// silently cut to its first bytes.
		{"padded junk", strings.Repeat("a", 40) + strings.Repeat("\n", 300) + "junk"},
		{"shell", strings.Repeat("a", 32) + "$(reboot)"},
		{"two lines", strings.Repeat("a", 32) + "\nOPENCODE_SERVER_USERNAME=root"},
		{"spaces", strings.Repeat("a", 20) + " " + strings.Repeat("b", 20)},
		{"binary", strings.Repeat("\x00", 40)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, _ := newTestOpencode(t)
			vm := testVM(t)
			p := filepath.Join(vm.Dir, "opencode.password")
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			err := o.Prepare(t.Context(), vm)
			if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), p) {
				t.Fatalf("Prepare = %v, want api.ErrInvalid naming %s", err, p)
			}
			if b, _ := os.ReadFile(p); string(b) != tc.content {
				t.Fatal("the password file was rewritten")
			}
		})
	}
	// A file of banger's own making is kept as it is.
	o, _ := newTestOpencode(t)
	vm := testVM(t)
	p := filepath.Join(vm.Dir, "opencode.password")
	good := "Abc-_0123456789" + strings.Repeat("z", 30) + "\n"
	if err := os.WriteFile(p, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := o.Prepare(t.Context(), vm); err != nil {
		t.Fatalf("Prepare with a good password file: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != good {
		t.Fatalf("a good password file was rewritten: %q", b)
	}
}

func TestEnvFileQuoting(t *testing.T) {
	got := envFile(map[string]string{
		"OPENAI_API_KEY":    `sk-"quoted"`,
		"ANTHROPIC_API_KEY": `back\slash`,
		"Z_DOLLAR":          `$HOME and ${PATH}`,
		"B_TICK":            "`id`",
		"EMPTY":             "",
		"MIXED":             "a\\\"$`b",
	})
	want := `ANTHROPIC_API_KEY="back\\slash"
B_TICK="\` + "`" + `id\` + "`" + `"
EMPTY=""
MIXED="a\\\"\$\` + "`" + `b"
OPENAI_API_KEY="sk-\"quoted\""
Z_DOLLAR="\$HOME and \${PATH}"
`
	if got != want {
		t.Fatalf("envFile:\n%s\nwant\n%s", got, want)
	}
	if envFile(nil) != "" {
		t.Fatal("envFile(nil) is not empty")
	}
}

func TestOpencodeUserEnvInstalled(t *testing.T) {
	o, _ := newTestOpencode(t)
	g := newFakeGuest(t)
	vm := testVM(t)
	vm.Env = map[string]string{"OPENAI_API_KEY": "sk-$x", "ANTHROPIC_API_KEY": "k`1`"}
	if err := errors.Join(o.Prepare(t.Context(), vm), o.PostStart(t.Context(), vm, g)); err != nil {
		t.Fatal(err)
	}
	files, _, _, _, _, _ := g.snapshot()
	if want := "600 ANTHROPIC_API_KEY=\"k\\`1\\`\"\nOPENAI_API_KEY=\"sk-\\$x\"\n"; files[guestUserEnvFile] != want {
		t.Fatalf("user env %q, want %q", files[guestUserEnvFile], want)
	}
	// A later start without --cap-env leaves it as it is.
	vm.Env = nil
	if err := errors.Join(o.Prepare(t.Context(), vm), o.PostStart(t.Context(), vm, g)); err != nil {
		t.Fatal(err)
	}
	if files2, _, _, _, _, _ := g.snapshot(); files2[guestUserEnvFile] != files[guestUserEnvFile] {
		t.Fatalf("user env after a start without env: %q", files2[guestUserEnvFile])
	}
}

// TestOpencodeConfigureKeepsBangersCredentials: --cap-env may not replace
// the password the readiness check and `vm show` rely on.
func TestOpencodeConfigureKeepsBangersCredentials(t *testing.T) {
	o := &Opencode{}
	for _, k := range []string{"OPENCODE_SERVER_PASSWORD", "OPENCODE_SERVER_USERNAME"} {
		if err := o.Configure(&api.CreateVMParams{CapEnv: map[string]string{k: "x"}}, ""); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("--cap-env %s: %v, want invalid", k, err)
		}
	}
	if err := o.Configure(&api.CreateVMParams{CapEnv: map[string]string{"ANTHROPIC_API_KEY": "x", "OPENCODE_MODEL": "m"}}, ""); err != nil {
		t.Errorf("ordinary --cap-env refused: %v", err)
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/home/u/.local/state/banger/vms/ab12/opencode.password": "/home/u/.local/state/banger/vms/ab12/opencode.password",
		"/home/my dir/x":   "'/home/my dir/x'",
		"/a/it's":          `'/a/it'\''s'`,
		"/a/$(rm -rf ~)/x": "'/a/$(rm -rf ~)/x'",
		"":                 "''",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestDownloadProgress: a line per tenth of a download, not per read.
func TestDownloadProgress(t *testing.T) {
	var msgs []string
	p := downloadProgress(VM{Progress: func(m string) { msgs = append(msgs, m) }}, "pkg@1")
	for done := int64(0); done <= 100<<20; done += 1 << 16 {
		p(done, 100<<20)
	}
	if len(msgs) != 11 || msgs[0] != "downloading pkg@1: 0 of 100 MiB" || msgs[10] != "downloading pkg@1: 100 of 100 MiB" {
		t.Fatalf("%d messages: %q", len(msgs), msgs)
	}
	if downloadProgress(VM{}, "x") != nil {
		t.Fatal("a reporter without a listener")
	}
}

// TestOpencodeVersionIsARelease: a dist-tag would name different bytes
// over time (and no cache entry): refused.
func TestOpencodeVersionIsARelease(t *testing.T) {
	o := &Opencode{}
	for _, v := range []string{"latest", "beta", "next"} {
		if err := o.Configure(&api.CreateVMParams{}, v); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("opencode@%s: %v, want invalid", v, err)
		}
	}
	for _, v := range []string{"", "1.18.33", "0.0.0-e2e-broken"} {
		if err := o.Configure(&api.CreateVMParams{}, v); err != nil {
			t.Errorf("opencode@%s: %v", v, err)
		}
	}
}
