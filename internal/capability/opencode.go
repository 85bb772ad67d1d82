package capability

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/npm"
	"github.com/banger-dev/banger/internal/paths"
)

// Fetcher gets one verified file out of an npm package and lists what it
// keeps (internal/npm.Cache).
type Fetcher interface {
	Fetch(ctx context.Context, pkg, version, integrity, member string, limit int64, progress func(done, total int64)) (npm.File, error)
	List() ([]npm.File, error)
}

// Cacher is a capability that keeps downloads on the host (`cap list`).
type Cacher interface {
	Cached() ([]npm.File, error)
}

// Limits and names of the opencode capability.
const (
	// opencodeMaxBinary bounds the binary taken out of the tarball (the
	// 1.18 one is 185 MB).
	opencodeMaxBinary = 512 << 20
	opencodeUnit      = "banger-opencode.service"
	opencodeGuestDir  = "/usr/local/lib/banger/opencode"
	opencodeUser      = "opencode"
	// PasswordFile is where, in the VM's state directory, the password of
	// its opencode server is kept (0600).
	opencodePasswordFile = "opencode.password"
	// exitNoSystemd is what the guest check exits with when PID 1 is not
	// systemd.
	exitNoSystemd = 90
	// opencodeRestartsFailed: the unit restarted this often without the
	// server answering: it is not going to.
	opencodeRestartsFailed = 2
)

var passwordRE = regexp.MustCompile(`^[A-Za-z0-9_-]{32,128}$`)

// maxPasswordFile bounds the password file read.
const maxPasswordFile = 256

// Opencode is the `opencode` capability: the opencode server, from npm,
// as a systemd service on port 4096 of the guest, behind HTTP basic auth
// with a per-VM password the host keeps.
type Opencode struct {
	Fetch Fetcher
	Log   *slog.Logger
	// ReadyTimeout bounds post-start's wait for the server to answer (0:
	// 5 minutes; it takes ~25 s under TCG here).
	ReadyTimeout time.Duration
	// Poll is the readiness check's interval (0: 1 s).
	Poll time.Duration

	mu       sync.Mutex
	prepared map[string]npm.File // by VM id, from Prepare to Cleanup
}

func (o *Opencode) Info() Info {
	return Info{
		Name:    "opencode",
		Summary: fmt.Sprintf("the opencode server (coding agent) on guest port %d, reachable as NAME.vm:%d or through `vm forward`", OpencodePort, OpencodePort),
		Needs: []string{
			"systemd as the image's init",
			fmt.Sprintf("%s from the npm registry (fetched once, sha512-verified, cached on the host)", OpencodePackage),
			"model provider credentials only if you pass them: sync.json or `vm create --cap-env KEY`",
		},
		Port: OpencodePort, Version: OpencodeVersion, Versioned: true,
	}
}

// Configure refuses --cap-env values that would replace banger's own
// credentials for the server (the readiness check and `vm show` use them).
func (o *Opencode) Configure(p *api.CreateVMParams, version string) error {
	// A release number, not a dist-tag: the cache, `cap list` and every
	// later start must name the same bytes.
	if version != "" && (version[0] < '0' || version[0] > '9') {
		return fmt.Errorf("opencode@%s: give a release number (e.g. %s), not a tag: %w", version, OpencodeVersion, api.ErrInvalid)
	}
	for k := range p.CapEnv {
		if strings.HasPrefix(k, "OPENCODE_SERVER_") {
			return fmt.Errorf("--cap-env %s: banger sets the server's credentials (the password is in the VM's %s): %w", k, opencodePasswordFile, api.ErrInvalid)
		}
	}
	return nil
}

// pin is the version and the integrity to fetch: banger's pin unless
// another version was asked for (then its registry's published one).
func (o *Opencode) pin(vm VM) (version, integrity string) {
	if vm.Version == "" || vm.Version == OpencodeVersion {
		return OpencodeVersion, OpencodeIntegrity
	}
	return vm.Version, ""
}

func (o *Opencode) Prepare(ctx context.Context, vm VM) error {
	version, integrity := o.pin(vm)
	f, err := o.Fetch.Fetch(ctx, OpencodePackage, version, integrity, OpencodeMember, opencodeMaxBinary, downloadProgress(vm, OpencodePackage+"@"+version))
	if err != nil {
		return err
	}
	if _, err := o.password(vm, true); err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.prepared == nil {
		o.prepared = map[string]npm.File{}
	}
	o.prepared[vm.ID] = f
	return nil
}

// password returns the VM's opencode password, making it when create is
// set and there is none. The file is the owner's alone and never followed
// through a symlink.
func (o *Opencode) password(vm VM, create bool) (string, error) {
	path := filepath.Join(vm.Dir, opencodePasswordFile)
	if create {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if err == nil {
			_, werr := f.WriteString(base64.RawURLEncoding.EncodeToString(b) + "\n")
			if err := errors.Join(werr, f.Close()); err != nil {
				_ = os.Remove(path)
				return "", fmt.Errorf("opencode password: %w", err)
			}
		} else if !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("opencode password: %w", err)
		}
	}
	b, err := paths.ReadSmall(path, maxPasswordFile)
	if err != nil {
		return "", fmt.Errorf("opencode password: %w", err)
	}
	pw := strings.TrimSpace(string(b))
	if !passwordRE.MatchString(pw) {
		return "", fmt.Errorf("opencode password file %s is not one of banger's (32-128 letters, digits, '-', '_'): %w", path, api.ErrInvalid)
	}
	return pw, nil
}

func (o *Opencode) PostStart(ctx context.Context, vm VM, g Guest) error {
	o.mu.Lock()
	f, ok := o.prepared[vm.ID]
	o.mu.Unlock()
	if !ok {
		return errors.New("not prepared")
	}
	pw, err := o.password(vm, false)
	if err != nil {
		return err
	}
	// systemd, and whether this binary is there from an earlier start.
	res, err := g.Run(ctx, fmt.Sprintf(`[ -d /run/systemd/system ] || { echo "PID 1 is $(cat /proc/1/comm)" >&2; exit %d; }
[ -x %s/%s/opencode ] && echo have || echo need`, exitNoSystemd, opencodeGuestDir, f.SHA256), nil)
	if err != nil {
		return fmt.Errorf("guest check: %w", err)
	}
	switch {
	case res.Code == exitNoSystemd:
		return fmt.Errorf("needs systemd as the guest's init (%s); use an image with systemd-sysv: %w", strings.TrimSpace(res.Stderr), api.ErrInvalid)
	case res.Code != 0:
		return fmt.Errorf("guest check exited %d: %s", res.Code, res.Stderr)
	case strings.TrimSpace(res.Stdout) == "need":
		vm.Say("copying %s@%s (%d MiB) into the guest", f.Package, f.Version, f.Size>>20)
		if err := o.copyIn(ctx, g, f); err != nil {
			return err
		}
	}
	vm.Say("starting %s", opencodeUnit)
	if err := o.install(ctx, g, vm, f, pw); err != nil {
		return err
	}
	return o.waitReady(ctx, vm, g, pw)
}

// copyIn streams the binary into the guest, under a directory named by its
// sha256; other versions' directories go.
func (o *Opencode) copyIn(ctx context.Context, g Guest, f npm.File) error {
	bin, err := os.Open(f.Path)
	if err != nil {
		return err
	}
	defer bin.Close()
	res, err := g.Run(ctx, fmt.Sprintf(`set -eu
d=%[1]s/%[2]s
mkdir -p "$d"
cat > "$d/.opencode.tmp"
n=$(stat -c %%s "$d/.opencode.tmp")
[ "$n" = %[3]d ] || { echo "copied $n bytes of %[3]d" >&2; exit 1; }
chmod 0755 "$d/.opencode.tmp"
mv -f "$d/.opencode.tmp" "$d/opencode"
for o in %[1]s/*; do [ "$o" = "$d" ] || rm -rf "$o"; done`, opencodeGuestDir, f.SHA256, f.Size), bin)
	if err != nil {
		return fmt.Errorf("copy %s@%s into the guest: %w", f.Package, f.Version, err)
	}
	if res.Code != 0 {
		return fmt.Errorf("copy %s@%s into the guest: exit %d: %s", f.Package, f.Version, res.Code, res.Stderr)
	}
	return nil
}

// install writes the service's files where they differ and (re)starts it.
func (o *Opencode) install(ctx context.Context, g Guest, vm VM, f npm.File, pw string) error {
	var stdin io.Reader
	userEnv := ""
	if len(vm.Env) > 0 {
		stdin = strings.NewReader(envFile(vm.Env))
		userEnv = "put /etc/banger/opencode.user.env 600\n"
	}
	script := fmt.Sprintf(`set -eu
changed=0
put() {
	t="$1.banger-tmp"
	cat > "$t"
	chmod "$2" "$t"
	if [ -f "$1" ] && cmp -s "$t" "$1"; then rm -f "$t"; else mv -f "$t" "$1"; changed=1; fi
}
umask 077
mkdir -p /etc/banger
put /etc/banger/opencode.env 600 <<'ENV'
OPENCODE_SERVER_USERNAME=%[1]s
OPENCODE_SERVER_PASSWORD=%[2]s
ENV
%[3]sput /etc/systemd/system/%[4]s 644 <<'UNIT'
[Unit]
Description=opencode server (banger capability)
After=network-online.target

[Service]
Environment=HOME=/root OPENCODE_DISABLE_AUTOUPDATE=1
EnvironmentFile=-/etc/banger/opencode.user.env
EnvironmentFile=/etc/banger/opencode.env
WorkingDirectory=/root
ExecStart=%[5]s/%[6]s/opencode serve --hostname 0.0.0.0 --port %[7]d
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
[ "$changed" = 0 ] || systemctl daemon-reload
systemctl enable %[4]s >/dev/null 2>&1
if [ "$changed" = 1 ]; then systemctl restart %[4]s; else systemctl start %[4]s; fi`,
		opencodeUser, pw, userEnv, opencodeUnit, opencodeGuestDir, f.SHA256, OpencodePort)
	res, err := g.Run(ctx, script, stdin)
	if err != nil {
		return fmt.Errorf("install the service: %w", err)
	}
	if res.Code != 0 {
		return fmt.Errorf("install the service: exit %d: %s", res.Code, res.Stderr)
	}
	return nil
}

// envFile renders env for systemd's EnvironmentFile=, each value quoted
// (the VM service refused control characters).
func envFile(env map[string]string) string {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	esc := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "`", "\\`", `$`, `\$`)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=\"%s\"\n", k, esc.Replace(env[k]))
	}
	return b.String()
}

// waitReady polls the server through the agent until it answers banger's
// password; a unit that keeps failing ends the wait early with its journal.
func (o *Opencode) waitReady(ctx context.Context, vm VM, g Guest, pw string) error {
	timeout := o.ReadyTimeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	poll := o.Poll
	if poll == 0 {
		poll = time.Second
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	start, said := time.Now(), time.Now()
	for i := 0; ; i++ {
		if time.Since(said) >= 10*time.Second {
			said = time.Now()
			vm.Say("waiting for the server on port %d (%ds)", OpencodePort, int(time.Since(start).Seconds()))
		}
		code, err := probe(wctx, g, pw)
		switch {
		case err == nil && code == http.StatusOK:
			return nil
		case err == nil && code == http.StatusUnauthorized:
			return fmt.Errorf("the server on port %d refuses banger's password (401): is another server listening there?", OpencodePort)
		case err == nil:
			last = fmt.Errorf("GET /config answered %d", code)
		case errors.Is(err, agent.ErrAgentTooOld) || errors.Is(err, guest.ErrNoAgent):
			// Readiness goes through the agent's dial; it will not start
			// working by waiting.
			return fmt.Errorf("the readiness check needs the guest agent's dial (protocol 1.2; rebuild the image with this banger): %w", err)
		default:
			last = err
		}
		if i%3 == 2 {
			if err := o.unitFailed(wctx, g); err != nil {
				return err
			}
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("not answering on port %d after %s (last: %v)%s", OpencodePort, timeout, last, journal(ctx, g))
		case <-time.After(poll):
		}
	}
}

// unitFailed reports a unit that failed or keeps restarting.
func (o *Opencode) unitFailed(ctx context.Context, g Guest) error {
	res, err := g.Run(ctx, "systemctl show -p ActiveState -p NRestarts "+opencodeUnit, nil)
	if err != nil || res.Code != 0 {
		return nil // the next probe says more
	}
	state, restarts := "", 0
	for _, line := range strings.Split(res.Stdout, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch k {
		case "ActiveState":
			state = v
		case "NRestarts":
			restarts, _ = strconv.Atoi(v)
		}
	}
	if state == "failed" || restarts >= opencodeRestartsFailed {
		return fmt.Errorf("%s is %s after %d restarts%s", opencodeUnit, state, restarts, journal(ctx, g))
	}
	return nil
}

// journal is the unit's last log lines for an error (bounded and made
// printable by the Guest).
func journal(ctx context.Context, g Guest) string {
	jctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	res, err := g.Run(jctx, "journalctl -u "+opencodeUnit+" -n 15 --no-pager -o cat", nil)
	if err != nil || strings.TrimSpace(res.Stdout) == "" {
		return ""
	}
	return "; journal: " + res.Stdout
}

// probeLimit bounds the answer read from the guest's server.
const probeLimit = 1 << 20

// probe sends GET /config with banger's credentials through the agent and
// returns the status.
func probe(ctx context.Context, g Guest, pw string) (int, error) {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := g.Dial(pctx, OpencodePort)
	if err != nil {
		return 0, err
	}
	stop := context.AfterFunc(pctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	req, _ := http.NewRequest(http.MethodGet, "http://localhost/config", nil)
	req.SetBasicAuth(opencodeUser, pw)
	req.Close = true
	if err := req.Write(c); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(io.LimitReader(c, probeLimit)), req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func (o *Opencode) Cleanup(ctx context.Context, vm VM) error {
	o.mu.Lock()
	delete(o.prepared, vm.ID)
	o.mu.Unlock()
	return nil
}

func (o *Opencode) Connect(vm VM, host string) Connection {
	pf := filepath.Join(vm.Dir, opencodePasswordFile)
	return Connection{
		Command:      fmt.Sprintf("OPENCODE_SERVER_PASSWORD=$(cat %s) opencode attach http://%s:%d", shellQuote(pf), host, OpencodePort),
		PasswordFile: pf,
	}
}

// Cached lists the opencode binaries the host keeps.
func (o *Opencode) Cached() ([]npm.File, error) {
	all, err := o.Fetch.List()
	if err != nil {
		return nil, err
	}
	var out []npm.File
	for _, f := range all {
		if f.Package == OpencodePackage {
			out = append(out, f)
		}
	}
	return out, nil
}

// EffectiveVersion is the version a VM's `--cap opencode[@VERSION]` runs.
func (o *Opencode) EffectiveVersion(version string) string {
	v, _ := o.pin(VM{Version: version})
	return v
}

// downloadProgress reports a download in tenths (a line each when the
// client is not a terminal).
func downloadProgress(vm VM, what string) func(done, total int64) {
	if vm.Progress == nil {
		return nil
	}
	last := int64(-1)
	return func(done, total int64) {
		step := done >> 24 // every 16 MiB without a length
		if total > 0 {
			step = done * 10 / total
		}
		if step == last {
			return
		}
		last = step
		if total > 0 {
			vm.Say("downloading %s: %d of %d MiB", what, done>>20, total>>20)
		} else {
			vm.Say("downloading %s: %d MiB", what, done>>20)
		}
	}
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
