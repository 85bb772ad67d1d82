// Package workspace puts a host git repository into a VM and brings the
// work back: prepare (full, then incremental resync), status, drift checks
// for exec, pull back as a host branch, and the sync of configured host files.
//
// Host-side git runs through the system.Runner seam; guest-side work is one
// shell program per operation run over the VM's kept SSH connection, with a
// tar stream on its stdin (sync) or stdout (pull).
package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
)

// DefaultGuestDir is where prepare puts a repository unless told otherwise.
const DefaultGuestDir = "/root/repo"

// VMs is what the workspace service needs of the VM service.
type VMs interface {
	Get(ctx context.Context, name string) (store.VM, error)
	Running(v store.VM) bool
	// Exec runs a command in a running VM; a stopped one is api.ErrNotRunning.
	Exec(ctx context.Context, name string, req guest.ExecRequest) (int, error)
}

// Deps are the collaborators, wired in cmd/bangerd.
type Deps struct {
	Log    *slog.Logger
	Store  *store.Store
	VMs    VMs
	Runner system.Runner
	Tmp    string // host scratch dir for bundles
	// GuestHome is the guest user's home, on the work disk; workspaces and
	// synced files must live under it ("/root" when empty).
	GuestHome string
	// Home is the owner's home on the host; synced files must resolve inside it.
	Home string
	// SyncConfig is the file-sync list (<state>/sync.json).
	SyncConfig string
}

// Service implements workspaces.
type Service struct {
	d     Deps
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

// New returns the service.
func New(d Deps) *Service {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.GuestHome == "" {
		d.GuestHome = "/root"
	}
	return &Service{d: d, locks: map[string]*sync.Mutex{}}
}

func (s *Service) lock(id string) func() {
	s.mu.Lock()
	l := s.locks[id]
	if l == nil {
		l = &sync.Mutex{}
		s.locks[id] = l
	}
	s.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// Progress receives named stages.
type Progress func(stage, msg string)

func manifestPath(v store.VM) string { return filepath.Join(v.Dir, paths.VMWorkspaceManifest) }

// running resolves name to a running VM or fails fast with api.ErrNotRunning.
func (s *Service) running(ctx context.Context, name string) (store.VM, error) {
	v, err := s.d.VMs.Get(ctx, name)
	if err != nil {
		return v, err
	}
	if !s.d.VMs.Running(v) {
		return v, fmt.Errorf("vm %q is %s: %w", v.Name, v.State, api.ErrNotRunning)
	}
	return v, nil
}

// guestDir validates a guest path: absolute, clean, strictly under GuestHome
// (the work disk, which survives stop/start).
func (s *Service) guestDir(p string) (string, error) {
	if p == "" {
		p = path.Join(s.d.GuestHome, path.Base(DefaultGuestDir))
	}
	c := path.Clean(p)
	if !path.IsAbs(p) || c != strings.TrimSuffix(p, "/") || slices.Contains(strings.Split(p, "/"), "..") {
		return "", fmt.Errorf("guest path %q: must be absolute and clean: %w", p, api.ErrInvalid)
	}
	if !strings.HasPrefix(c, s.d.GuestHome+"/") {
		return "", fmt.Errorf("guest path %q: must be under %s (the work disk): %w", p, s.d.GuestHome, api.ErrInvalid)
	}
	return c, nil
}

// exec runs a guest script with positional args. It returns the tail of
// stderr (guest.TailSize at most, escaped) for error messages.
func (s *Service) exec(ctx context.Context, vm, script string, stdin io.Reader, stdout io.Writer, args ...string) (int, string, error) {
	var stderr guest.Tail
	argv := append([]string{"sh", "-c", script, "sh"}, args...)
	code, err := s.d.VMs.Exec(ctx, vm, guest.ExecRequest{Argv: argv, Stdin: stdin, Stdout: stdout, Stderr: &stderr})
	return code, stderr.String(), err
}

// PrepareParams says what to prepare where.
type PrepareParams struct {
	Name  string
	Repo  string // absolute host path inside a git repository
	Into  string // guest directory; DefaultGuestDir when empty
	Force bool   // full prepare, even over commits made in the VM
}

// PrepareResult reports what one prepare sent.
type PrepareResult struct {
	Workspace    store.Workspace
	Full         bool
	FilesSent    int   // working-tree files sent
	BytesSent    int64 // their bytes
	Deleted      int
	HistoryBytes int64 // git objects + index (or bundle) sent
	Took         time.Duration
}

// Prepare copies the repository with its history into the VM, or, when the
// same repository is already there, sends only what changed since.
func (s *Service) Prepare(ctx context.Context, p PrepareParams, progress Progress) (PrepareResult, error) {
	if progress == nil {
		progress = func(string, string) {}
	}
	t0 := time.Now()
	v, err := s.running(ctx, p.Name)
	if err != nil {
		return PrepareResult{}, err
	}
	if !filepath.IsAbs(p.Repo) {
		return PrepareResult{}, fmt.Errorf("repo %q: must be an absolute host path: %w", p.Repo, api.ErrInvalid)
	}
	defer s.lock(v.ID)()
	top, err := toplevel(ctx, s.d.Runner, p.Repo)
	if err != nil {
		return PrepareResult{}, err
	}
	g := repo{s.d.Runner, top}
	prev, perr := s.d.Store.GetWorkspace(ctx, v.ID)
	if perr != nil && !errors.Is(perr, api.ErrNotFound) {
		return PrepareResult{}, perr
	}
	into := p.Into
	if into == "" && perr == nil && prev.HostPath == top {
		into = prev.GuestPath
	}
	if into, err = s.guestDir(into); err != nil {
		return PrepareResult{}, err
	}
	full := perr != nil || prev.HostPath != top || prev.GuestPath != into || p.Force
	var old manifest
	if !full {
		if old, err = loadManifest(manifestPath(v)); err != nil {
			s.d.Log.WarnContext(ctx, "workspace manifest unreadable; full prepare", "vm", v.Name, "err", err)
			full = true
		}
	}
	if full {
		old = manifest{}
		prev = store.Workspace{}
	}

	progress("scan", top)
	head, branch := g.head(ctx), g.branch(ctx)
	tips, err := g.tips(ctx, head)
	if err != nil {
		return PrepareResult{}, err
	}
	names, err := g.files(ctx)
	if err != nil {
		return PrepareResult{}, err
	}
	cur, err := scan(top, names)
	if err != nil {
		return PrepareResult{}, err
	}
	gitDir, commonDir, err := g.dirs(ctx)
	if err != nil {
		return PrepareResult{}, err
	}
	// History goes over as the object store's files when it is
	// self-contained; otherwise (alternates, shallow) as a git bundle.
	raw := !exists(filepath.Join(commonDir, "objects", "info", "alternates")) && !exists(filepath.Join(commonDir, "shallow"))
	// The index goes too, so the guest needs no rehash of the tree; a split
	// index (shared file) cannot be copied alone.
	index := filepath.Join(gitDir, "index")
	if m, _ := filepath.Glob(filepath.Join(gitDir, "sharedindex.*")); len(m) > 0 || !raw {
		index = ""
	}
	if raw {
		if err := scanGit(cur, filepath.Join(commonDir, "objects"), index); err != nil {
			return PrepareResult{}, err
		}
	}
	src := func(key string) string {
		switch {
		case strings.HasPrefix(key, gitObjectsKey):
			return filepath.Join(commonDir, "objects", filepath.FromSlash(strings.TrimPrefix(key, gitObjectsKey)))
		case key == gitIndexKey:
			return index
		}
		return filepath.Join(top, key)
	}
	changed, deleted := diff(old, cur)
	refs, err := g.refUpdates(ctx)
	if err != nil {
		return PrepareResult{}, err
	}

	var bundlePath string
	if !raw && head != "" && !subset(tips, prev.Tips) {
		progress("bundle", "")
		f, err := os.CreateTemp(s.d.Tmp, "ws-*.bundle")
		if err != nil {
			return PrepareResult{}, err
		}
		f.Close()
		defer os.Remove(f.Name())
		ok, err := g.bundle(ctx, f.Name(), prev.Tips)
		if err != nil && len(prev.Tips) > 0 {
			// A tip the guest had may be gone from the host (rewritten
			// history, gc): send everything.
			ok, err = g.bundle(ctx, f.Name(), nil)
		}
		if err != nil {
			return PrepareResult{}, fmt.Errorf("git bundle: %w", err)
		}
		if ok {
			bundlePath = f.Name()
		}
	}

	progress("send", fmt.Sprintf("%d files, %d deletions", len(changed), len(deleted)))
	res := PrepareResult{Full: full, Deleted: len(deleted)}
	pr, pw := io.Pipe()
	var werr error
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		tw := newTar(pw)
		werr = func() error {
			if bundlePath != "" {
				if err := tw.file(syncDir+"/bundle", bundlePath, 0o600); err != nil {
					return err
				}
				res.HistoryBytes += tw.bytes
			}
			if err := tw.data(syncDir+"/refs", refs); err != nil {
				return err
			}
			if len(deleted) > 0 {
				if err := tw.data(syncDir+"/deletes", []byte(strings.Join(deleted, "\x00")+"\x00")); err != nil {
					return err
				}
			}
			for _, n := range changed {
				before := tw.bytes
				if err := tw.file(n, src(n), 0); err != nil {
					return err
				}
				if strings.HasPrefix(n, ".git/") {
					res.HistoryBytes += tw.bytes - before
				} else {
					res.FilesSent++
					res.BytesSent += tw.bytes - before
				}
			}
			return tw.close()
		}()
		pw.CloseWithError(werr)
	}()
	mode := ""
	if index != "" {
		mode = "index"
	}
	force := ""
	if p.Force {
		force = "1"
	}
	code, stderr, err := s.exec(ctx, v.Name, syncScript, pr, io.Discard, into, prev.Head, head, branch, force, mode)
	pr.Close()
	<-wdone
	if err != nil {
		return res, fmt.Errorf("vm %q: prepare: %w", v.Name, err)
	}
	if werr != nil && code != exitDiverged {
		return res, fmt.Errorf("vm %q: prepare: sending files: %w", v.Name, werr)
	}
	if code == exitDiverged {
		return res, fmt.Errorf("vm %q: %s: %w", v.Name, stderr, api.ErrBusy)
	}
	if code != 0 {
		return res, fmt.Errorf("vm %q: prepare into %s exited %d: %s", v.Name, into, code, stderr)
	}

	if err := saveManifest(manifestPath(v), cur); err != nil {
		return res, err
	}
	wt := cur.worktreeOnly()
	ws := store.Workspace{VMID: v.ID, HostPath: top, GuestPath: into, Head: head, Branch: branch, Tips: tips,
		Files: int64(len(wt)), Bytes: wt.bytes(), PreparedAt: prev.PreparedAt}
	if err := s.d.Store.PutWorkspace(ctx, &ws); err != nil {
		return res, err
	}
	res.Workspace, res.Took = ws, time.Since(t0)
	s.d.Log.InfoContext(ctx, "workspace synced", "vm", v.Name, "host", top, "guest", into, "full", full,
		"files", len(changed), "deleted", len(deleted), "bytes", res.BytesSent, "history_bytes", res.HistoryBytes, "ms", res.Took.Milliseconds())
	return res, nil
}

func subset(a, b []string) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// Drift says how the host repository differs from what was last synced.
type Drift struct {
	HeadFrom, HeadTo string   // set when HEAD moved
	Changed          []string // paths added, modified or removed since the sync
}

// None reports no drift.
func (d Drift) None() bool { return d.HeadFrom == d.HeadTo && len(d.Changed) == 0 }

// String is the one-line summary exec prints.
func (d Drift) String() string {
	var parts []string
	if d.HeadFrom != d.HeadTo {
		parts = append(parts, fmt.Sprintf("HEAD moved %s → %s", short(d.HeadFrom), short(d.HeadTo)))
	}
	if n := len(d.Changed); n > 0 {
		list := d.Changed
		if n > 3 {
			list = list[:3]
		}
		more := ""
		if n > 3 {
			more = fmt.Sprintf(", +%d more", n-3)
		}
		parts = append(parts, fmt.Sprintf("%d file(s) changed (%s%s)", n, strings.Join(list, ", "), more))
	}
	return strings.Join(parts, "; ")
}

func short(c string) string {
	if c == "" {
		return "(none)"
	}
	if len(c) > 12 {
		return c[:12]
	}
	return c
}

// drift compares the host repository with the last sync.
func (s *Service) drift(ctx context.Context, v store.VM, ws store.Workspace) (Drift, error) {
	g := repo{s.d.Runner, ws.HostPath}
	d := Drift{HeadFrom: ws.Head, HeadTo: g.head(ctx)}
	names, err := g.files(ctx)
	if err != nil {
		return d, fmt.Errorf("host repo %s: %w", ws.HostPath, err)
	}
	cur, err := scan(ws.HostPath, names)
	if err != nil {
		return d, err
	}
	old, err := loadManifest(manifestPath(v))
	if err != nil {
		return d, err
	}
	changed, deleted := diff(old.worktreeOnly(), cur)
	d.Changed = append(changed, deleted...)
	slices.Sort(d.Changed)
	return d, nil
}

// Check is what `vm exec` asks before running: where the workspace is, and
// how the host repository drifted. A VM without a workspace, or one that is
// not running, yields a zero Workspace and no error (exec then reports).
func (s *Service) Check(ctx context.Context, name string) (store.Workspace, Drift, error) {
	v, err := s.d.VMs.Get(ctx, name)
	if err != nil {
		return store.Workspace{}, Drift{}, err
	}
	ws, err := s.d.Store.GetWorkspace(ctx, v.ID)
	if errors.Is(err, api.ErrNotFound) || !s.d.VMs.Running(v) {
		return store.Workspace{}, Drift{}, nil
	}
	if err != nil {
		return ws, Drift{}, err
	}
	d, err := s.drift(ctx, v, ws)
	if err != nil {
		// The host repo may be gone; exec still runs in the workspace.
		s.d.Log.WarnContext(ctx, "workspace drift check failed", "vm", v.Name, "err", err)
		return ws, Drift{HeadFrom: ws.Head, HeadTo: ws.Head}, nil
	}
	return ws, d, nil
}

// Status is the host-vs-guest view of a workspace.
type Status struct {
	Workspace   store.Workspace
	HostHead    string
	HostBranch  string
	HostDirty   int
	Drift       Drift
	Running     bool
	GuestHead   string
	GuestBranch string
	GuestDirty  int
	GuestError  string
}

// Status reports the workspace of a VM; the guest side only when it runs.
func (s *Service) Status(ctx context.Context, name string) (Status, error) {
	v, err := s.d.VMs.Get(ctx, name)
	if err != nil {
		return Status{}, err
	}
	ws, err := s.d.Store.GetWorkspace(ctx, v.ID)
	if err != nil {
		return Status{}, fmt.Errorf("vm %q has no workspace (banger vm workspace prepare): %w", v.Name, err)
	}
	st := Status{Workspace: ws, Running: s.d.VMs.Running(v)}
	g := repo{s.d.Runner, ws.HostPath}
	st.HostHead, st.HostBranch = g.head(ctx), g.branch(ctx)
	st.HostDirty, _ = g.dirty(ctx)
	if d, err := s.drift(ctx, v, ws); err == nil {
		st.Drift = d
	}
	if st.Running {
		var out bytes.Buffer
		code, stderr, err := s.exec(ctx, v.Name, statusScript, nil, guest.NewLimitWriter(&out, statusLimit, "workspace status output"), ws.GuestPath)
		lines := strings.Split(out.String(), "\n")
		switch {
		case err != nil:
			st.GuestError = err.Error()
		case code != 0:
			st.GuestError = fmt.Sprintf("exit %d: %s", code, stderr)
		case lines[0] == "missing":
			st.GuestError = ws.GuestPath + " is missing in the guest"
		case len(lines) >= 3 && (lines[0] == "" || commitRE.MatchString(lines[0])):
			st.GuestHead, st.GuestBranch = lines[0], guest.Printable(lines[1])
			fmt.Sscan(strings.TrimSpace(lines[2]), &st.GuestDirty)
		default:
			st.GuestError = fmt.Sprintf("unexpected status output from the guest: %.80q", out.String())
		}
	}
	return st, nil
}

// statusLimit bounds what the status script prints: a commit id, a branch
// name (git refuses names much over 255 bytes on common filesystems) and a
// number.
const statusLimit = 4 << 10

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
