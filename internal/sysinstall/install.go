package sysinstall

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
)

// Paths resolves the installed layout under Root: "/" on a host, a temp dir
// in tests. It is the only place a test root enters.
type Paths struct{ Root string }

// At is abs under the root.
func (p Paths) At(abs string) string {
	if p.Root == "" || p.Root == "/" {
		return abs
	}
	return filepath.Join(p.Root, abs)
}

// Metadata is /etc/banger/install.json: what install did, so status can
// check it and uninstall can undo exactly that.
type Metadata struct {
	Owner        Owner             `json:"owner"`
	StateDir     string            `json:"state_dir"`
	DaemonSocket string            `json:"daemon_socket"`
	HelperSocket string            `json:"helper_socket"`
	BinDir       string            `json:"bin_dir"`
	Binaries     map[string]string `json:"binaries"` // name → sha256 of the installed copy
	// Version is the installing banger's build (VCS revision, "+dirty" when modified).
	Version string   `json:"version,omitempty"`
	Units   []string `json:"units"`
	// Link is LinkPath when install made that symlink (it never replaces a file).
	Link string `json:"link,omitempty"`
	// SubUID/SubGID are the lines install added (empty: the owner had a range).
	SubUID      string    `json:"subuid_added,omitempty"`
	SubGID      string    `json:"subgid_added,omitempty"`
	InstalledAt time.Time `json:"installed_at"`
}

// Installer performs install, restart, uninstall and status.
type Installer struct {
	Runner system.Runner
	Paths  Paths
	Out    io.Writer // progress lines
	Now    func() time.Time
	// Wait bounds how long install and restart wait for the units to be
	// active and the helper socket to appear (0: 30s).
	Wait time.Duration
	// Settle is how long both units must stay up, same pids, before install
	// or restart calls it a success (0: 1.5s): a Type=simple unit is
	// "active" the moment it forks, even when bangerd then exits at once
	// (another bangerd holding the state dir's lock).
	Settle time.Duration
	// LookupUser resolves a user name for status (default: os/user).
	LookupUser func(name string) (Owner, error)
}

// InstallOptions is what `system install` was asked for.
type InstallOptions struct {
	Owner    Owner
	StateDir string            // the owner's state root; its bangerd.sock is what the CLI dials
	Sources  map[string]string // binary name → file to copy into BinDir
	Version  string
}

// Owner names go into unit files and /etc/subuid: the portable user-name set only.
var ownerName = regexp.MustCompile(`^[a-z_][a-z0-9_.-]{0,31}$`)

// ErrNoSystemd is returned when systemd is not PID 1 (containers, CI).
var ErrNoSystemd = errors.New("systemd is not running on this host (no " + SystemdRunDir + ")")

func (in *Installer) printf(format string, args ...any) {
	if in.Out != nil {
		fmt.Fprintf(in.Out, format, args...)
	}
}

func (in *Installer) now() time.Time {
	if in.Now != nil {
		return in.Now()
	}
	return time.Now()
}

func (in *Installer) wait() time.Duration {
	if in.Wait > 0 {
		return in.Wait
	}
	return 30 * time.Second
}

func (in *Installer) systemd() error {
	if st, err := os.Stat(in.Paths.At(SystemdRunDir)); err != nil || !st.IsDir() {
		return fmt.Errorf("%w: without systemd run `sudo banger system helper --owner USER` in the foreground and let the owner's banger start its own bangerd: %w", ErrNoSystemd, api.ErrInvalid)
	}
	return nil
}

func validate(o InstallOptions) error {
	if !ownerName.MatchString(o.Owner.Name) {
		return fmt.Errorf("owner %q: not a user name banger accepts ([a-z_][a-z0-9_.-]*): %w", o.Owner.Name, api.ErrInvalid)
	}
	if o.Owner.UID == 0 {
		return fmt.Errorf("owner %q is root: the system install runs bangerd as an unprivileged owner (root is the all-in-one mode, no install needed): %w", o.Owner.Name, api.ErrInvalid)
	}
	for what, p := range map[string]string{"state dir": o.StateDir, "home": o.Owner.Home} {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsAny(p, "\n\r\x00") {
			return fmt.Errorf("%s %q: want a clean absolute path: %w", what, p, api.ErrInvalid)
		}
	}
	for _, b := range Binaries {
		if o.Sources[b] == "" {
			return fmt.Errorf("no %s to install (it must sit next to banger or on PATH): %w", b, api.ErrInvalid)
		}
	}
	return nil
}

// ReadMetadata reads install.json; os.ErrNotExist when banger is not installed.
func (in *Installer) ReadMetadata() (*Metadata, error) {
	b, err := os.ReadFile(in.Paths.At(MetaFile))
	if err != nil {
		return nil, err
	}
	var m Metadata
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", MetaFile, err)
	}
	return &m, nil
}

// Install puts banger in place and (re)starts both units. Running it again
// converges: binaries and units are rewritten, the units restarted.
func (in *Installer) Install(ctx context.Context, o InstallOptions) (*Metadata, error) {
	if err := in.systemd(); err != nil {
		return nil, err
	}
	if err := validate(o); err != nil {
		return nil, err
	}
	prev, err := in.ReadMetadata()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if prev != nil && prev.Owner.Name != o.Owner.Name {
		return nil, fmt.Errorf("banger is installed for %q: `sudo banger system uninstall` first (one owner per host): %w", prev.Owner.Name, api.ErrExists)
	}
	m := &Metadata{Owner: o.Owner, StateDir: o.StateDir, DaemonSocket: paths.Layout{Root: o.StateDir}.Socket(),
		HelperSocket: HelperSocket, BinDir: BinDir, Binaries: map[string]string{}, Units: Units, InstalledAt: in.now().UTC(),
		Version: o.Version}
	if prev != nil {
		m.Link, m.SubUID, m.SubGID = prev.Link, prev.SubUID, prev.SubGID
	}

	if err := in.installBinaries(o.Sources, m); err != nil {
		return nil, err
	}
	if err := in.ensureLink(m); err != nil {
		return nil, err
	}
	for _, f := range []struct {
		path string
		line *string
	}{{SubUIDFile, &m.SubUID}, {SubGIDFile, &m.SubGID}} {
		if *f.line != "" {
			continue
		}
		added, err := addSubordinate(in.Paths.At(f.path), o.Owner)
		if err != nil {
			return nil, err
		}
		if added != "" {
			*f.line = added
			in.printf("added %s to %s (rootless image builds)\n", added, f.path)
		}
	}
	// The owner makes their own state dir: root never creates or follows
	// anything inside a home it does not own.
	if _, err := in.Runner.Run(ctx, "runuser", "-u", o.Owner.Name, "--", "mkdir", "-p", "-m", "0700", in.Paths.At(o.StateDir)); err != nil {
		return nil, fmt.Errorf("create the owner's state dir %s: %w", o.StateDir, err)
	}
	if err := os.MkdirAll(in.Paths.At(UnitDir), 0o755); err != nil {
		return nil, err
	}
	units := map[string]string{
		HelperUnit: RenderHelperUnit(BinDir, o.Owner),
		DaemonUnit: RenderDaemonUnit(BinDir, o.Owner, o.StateDir),
	}
	for _, u := range Units {
		if err := writeFileAtomic(in.Paths.At(filepath.Join(UnitDir, u)), []byte(units[u]), 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(in.Paths.At(EtcDir), 0o755); err != nil {
		return nil, err
	}
	meta, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(in.Paths.At(MetaFile), append(meta, '\n'), 0o644); err != nil {
		return nil, err
	}
	in.printf("wrote %s, %s and %s\n", filepath.Join(UnitDir, HelperUnit), filepath.Join(UnitDir, DaemonUnit), MetaFile)
	for _, args := range [][]string{{"daemon-reload"}, append([]string{"enable"}, Units...)} {
		if _, err := in.Runner.Run(ctx, "systemctl", args...); err != nil {
			return nil, err
		}
	}
	if err := in.restart(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// Restart restarts both units and waits for them.
func (in *Installer) Restart(ctx context.Context) error {
	if err := in.systemd(); err != nil {
		return err
	}
	if _, err := in.ReadMetadata(); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("banger is not installed (no %s): `sudo banger system install` first: %w", MetaFile, api.ErrNotFound)
		}
		return err
	}
	return in.restart(ctx)
}

func (in *Installer) restart(ctx context.Context) error {
	// An asked-for restart starts afresh: a unit that hit its start limit
	// (bangerd failing in a loop) would otherwise refuse to start at all.
	_, _ = in.Runner.Run(ctx, "systemctl", append([]string{"reset-failed"}, Units...)...)
	// In order: bangerd asks the helper for the DNS port when it starts.
	for _, u := range Units {
		if _, err := in.Runner.Run(ctx, "systemctl", "restart", u); err != nil {
			return fmt.Errorf("%w%s", err, in.journalHint(ctx, u))
		}
	}
	settle := in.Settle
	if settle <= 0 {
		settle = 1500 * time.Millisecond
	}
	deadline := time.Now().Add(in.wait())
	var upPIDs string
	var upSince time.Time
	for {
		var bad []string
		var pids string
		for _, u := range Units {
			st, _ := in.unitStatus(ctx, u)
			if st.ActiveState != "active" {
				bad = append(bad, fmt.Sprintf("%s is %s (%s)", u, orUnknown(st.ActiveState), orUnknown(st.SubState)))
			}
			pids += fmt.Sprintf("%d ", st.MainPID)
		}
		if _, err := os.Stat(in.Paths.At(HelperSocket)); err != nil && len(bad) == 0 {
			bad = append(bad, "no helper socket "+HelperSocket)
		}
		switch {
		case len(bad) > 0:
			upPIDs = ""
		case pids != upPIDs:
			upPIDs, upSince = pids, time.Now()
		case time.Since(upSince) >= settle:
			in.printf("%s and %s are active\n", HelperUnit, DaemonUnit)
			return nil
		}
		if time.Now().After(deadline) {
			var hints string
			for _, u := range Units {
				hints += in.journalHint(ctx, u)
			}
			if len(bad) == 0 {
				bad = append(bad, "the units keep restarting")
			}
			return fmt.Errorf("after %s: %s%s", in.wait(), strings.Join(bad, "; "), hints)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (in *Installer) journalHint(ctx context.Context, unit string) string {
	lines := in.journal(ctx, unit)
	if len(lines) == 0 {
		return ""
	}
	return "\n" + unit + " log:\n  " + strings.Join(lines, "\n  ")
}

// Uninstall stops and removes everything install made. The owner's state
// (images, VMs' disks) stays unless purge.
func (in *Installer) Uninstall(ctx context.Context, purge bool) error {
	m, err := in.ReadMetadata()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var errs []error
	booted := in.systemd() == nil
	present := false
	for _, u := range Units {
		if _, err := os.Stat(in.Paths.At(filepath.Join(UnitDir, u))); err == nil {
			present = true
		}
	}
	if m == nil && !present {
		// Nothing of an install: /run/banger may be a foreground helper's.
		in.printf("banger is not installed (no %s, no units): nothing to remove\n", MetaFile)
		if purge {
			return fmt.Errorf("--purge: no %s names the owner's state dir; remove it by hand (default ~/.local/state/banger): %w", MetaFile, api.ErrNotFound)
		}
		return nil
	}
	if booted && present {
		// bangerd first: it reverts what it asked of the helper on its way out.
		for _, args := range [][]string{{"stop", DaemonUnit}, {"stop", HelperUnit}} {
			if _, err := in.Runner.Run(ctx, "systemctl", args...); err != nil {
				errs = append(errs, err)
			}
		}
		// VMMs outlive bangerd (KillMode=process); without the units no one
		// manages them. Their disks stay; a later bangerd records them stopped.
		_, _ = in.Runner.Run(ctx, "systemctl", "kill", "--signal=SIGKILL", DaemonUnit)
		if _, err := in.Runner.Run(ctx, "systemctl", append([]string{"disable"}, Units...)...); err != nil {
			errs = append(errs, err)
		}
	}
	for _, u := range Units {
		if err := removeIfExists(in.Paths.At(filepath.Join(UnitDir, u))); err != nil {
			errs = append(errs, err)
		}
	}
	if booted {
		if _, err := in.Runner.Run(ctx, "systemctl", "daemon-reload"); err != nil {
			errs = append(errs, err)
		}
		// Forget a failed state so nothing of banger is listed any more.
		_, _ = in.Runner.Run(ctx, "systemctl", append([]string{"reset-failed"}, Units...)...)
	}
	if err := os.RemoveAll(in.Paths.At(RunDir)); err != nil {
		errs = append(errs, err)
	}
	if m != nil && m.Link != "" {
		if t, err := os.Readlink(in.Paths.At(m.Link)); err == nil && t == filepath.Join(BinDir, "banger") {
			if err := os.Remove(in.Paths.At(m.Link)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := os.RemoveAll(in.Paths.At(BinDir)); err != nil {
		errs = append(errs, err)
	}
	if m != nil {
		for _, f := range []struct{ path, line string }{{SubUIDFile, m.SubUID}, {SubGIDFile, m.SubGID}} {
			if f.line == "" {
				continue
			}
			if err := removeLine(in.Paths.At(f.path), f.line); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := os.RemoveAll(in.Paths.At(EtcDir)); err != nil {
		errs = append(errs, err)
	}
	if purge {
		if m == nil {
			errs = append(errs, fmt.Errorf("--purge: no %s names the owner's state dir; remove it by hand (default ~/.local/state/banger): %w", MetaFile, api.ErrNotFound))
		} else if err := removeStateDir(in.Paths.At(m.StateDir), m.Owner.UID); err != nil {
			errs = append(errs, err)
		} else {
			in.printf("removed %s\n", m.StateDir)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	in.printf("banger system units, %s, %s and %s removed\n", BinDir, EtcDir, RunDir)
	return nil
}

func (in *Installer) installBinaries(src map[string]string, m *Metadata) error {
	dir := in.Paths.At(BinDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// Root runs these: nobody else may be able to swap them.
	if err := rootOwnedDir(dir); err != nil {
		return err
	}
	for _, name := range Binaries {
		dst := filepath.Join(dir, name)
		if a, err := os.Stat(src[name]); err == nil {
			if b, err := os.Stat(dst); err == nil && os.SameFile(a, b) {
				sum, err := fileSHA256(dst)
				if err != nil {
					return err
				}
				m.Binaries[name] = sum
				continue
			}
		}
		b, err := os.ReadFile(src[name])
		if err != nil {
			return fmt.Errorf("install %s: %w", name, err)
		}
		if err := writeFileAtomic(dst, b, 0o755); err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		m.Binaries[name] = hex.EncodeToString(sum[:])
	}
	in.printf("installed %s into %s\n", strings.Join(Binaries, ", "), BinDir)
	return nil
}

// ensureLink makes LinkPath point at the installed banger when nothing is there.
func (in *Installer) ensureLink(m *Metadata) error {
	link, want := in.Paths.At(LinkPath), filepath.Join(BinDir, "banger")
	t, err := os.Readlink(link)
	switch {
	case err == nil && t == want:
		m.Link = LinkPath
		return nil
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(want, link); err != nil {
			return err
		}
		m.Link = LinkPath
		in.printf("linked %s -> %s\n", LinkPath, want)
		return nil
	default:
		in.printf("left %s as it is (not banger's link); the units run %s\n", LinkPath, want)
		return nil
	}
}

func rootOwnedDir(dir string) error {
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory: %w", dir, api.ErrInvalid)
	}
	if uid, ok := fileUID(st); ok && uid != 0 {
		return fmt.Errorf("%s belongs to uid %d, not root: %w", dir, uid, api.ErrInvalid)
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeFileAtomic writes a temp file next to path and renames it over, so a
// reader (systemd, a unit being started) never sees half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// readIfExists is a file's bytes, or none when it does not exist.
func readIfExists(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// FileSHA256 is the hex sha256 of a file (what Metadata.Binaries records).
func FileSHA256(path string) (string, error) { return fileSHA256(path) }
