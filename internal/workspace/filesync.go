package workspace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
)

// SyncConfig is <state>/sync.json: host files copied into every VM when it
// starts and on `banger vm sync NAME`.
//
//	{"files": [
//	  {"path": "~/.gitconfig"},
//	  {"path": "~/.config/gh/hosts.yml", "secret": true},
//	  {"path": "~/.netrc", "guest": "/root/.netrc", "secret": true}
//	]}
//
// path is "~/..." or absolute and must lie in the owner's home after every
// symlink is resolved; ".." is refused. guest defaults to the same place
// relative to the guest user's home. Modes are preserved; secret files are
// written 0600.
type SyncConfig struct {
	Files []SyncEntry `json:"files"`
}

// SyncEntry is one configured file.
type SyncEntry struct {
	Path   string `json:"path"`
	Guest  string `json:"guest,omitempty"`
	Secret bool   `json:"secret,omitempty"`
}

// SyncedFile is one file copied into the guest.
type SyncedFile struct {
	Path  string      `json:"path"`
	Guest string      `json:"guest"`
	Mode  fs.FileMode `json:"mode"`
	Bytes int64       `json:"bytes"`
}

// Refusal is one configured file that was not copied, and why.
type Refusal struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// SyncResult reports a file sync.
type SyncResult struct {
	Synced  []SyncedFile `json:"synced"`
	Refused []Refusal    `json:"refused,omitempty"`
}

func (s *Service) loadSyncConfig() (SyncConfig, error) {
	var c SyncConfig
	if s.d.SyncConfig == "" {
		return c, nil
	}
	b, err := os.ReadFile(s.d.SyncConfig)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("%s: %v: %w", s.d.SyncConfig, err, api.ErrInvalid)
	}
	return c, nil
}

func hasDotDot(p string) bool { return slices.Contains(strings.Split(p, "/"), "..") }

func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

// resolve checks one entry and returns the file to read, where it goes and
// with which mode.
func (s *Service) resolve(e SyncEntry) (src, dst string, mode fs.FileMode, err error) {
	home := filepath.Clean(s.d.Home)
	if s.d.Home == "" || !filepath.IsAbs(home) {
		return "", "", 0, fmt.Errorf("owner's home is unknown: %w", api.ErrInvalid)
	}
	p := e.Path
	if hasDotDot(p) {
		return "", "", 0, fmt.Errorf("%q: '..' is not allowed: %w", p, api.ErrPermission)
	}
	switch {
	case p == "~" || p == "":
		return "", "", 0, fmt.Errorf("%q: name a file: %w", p, api.ErrInvalid)
	case strings.HasPrefix(p, "~/"):
		p = filepath.Join(home, p[2:])
	case !filepath.IsAbs(p):
		return "", "", 0, fmt.Errorf("%q: want ~/... or an absolute path: %w", p, api.ErrInvalid)
	}
	p = filepath.Clean(p)
	if !within(p, home) {
		return "", "", 0, fmt.Errorf("%q is outside the owner's home %s: %w", e.Path, home, api.ErrPermission)
	}
	realHome, err := filepath.EvalSymlinks(home)
	if err != nil {
		return "", "", 0, fmt.Errorf("owner's home %s: %w", home, err)
	}
	real, err := filepath.EvalSymlinks(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", 0, fmt.Errorf("%q does not exist: %w", e.Path, api.ErrNotFound)
	}
	if err != nil {
		return "", "", 0, fmt.Errorf("%q: %w", e.Path, err)
	}
	if !within(real, realHome) {
		return "", "", 0, fmt.Errorf("%q resolves to %s, outside the owner's home %s: refused: %w", e.Path, real, realHome, api.ErrPermission)
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", "", 0, err
	}
	if !st.Mode().IsRegular() {
		return "", "", 0, fmt.Errorf("%q is not a regular file: %w", e.Path, api.ErrInvalid)
	}
	mode = st.Mode().Perm()
	if e.Secret {
		mode = 0o600
	}
	dst = e.Guest
	if dst == "" {
		rel, _ := filepath.Rel(home, p)
		dst = path.Join(s.d.GuestHome, filepath.ToSlash(rel))
	}
	if !path.IsAbs(dst) || hasDotDot(dst) || !strings.HasPrefix(path.Clean(dst), s.d.GuestHome+"/") {
		return "", "", 0, fmt.Errorf("%q: guest path %q must be absolute, without '..', under %s: %w", e.Path, dst, s.d.GuestHome, api.ErrInvalid)
	}
	return real, path.Clean(dst), mode, nil
}

const fileSyncScript = `set -eu
tar -x --no-same-owner -C / -f -
`

// SyncFiles copies the configured host files into a running VM. Files that
// are refused (outside the home, missing, not regular) are reported in the
// result; the others are still copied.
func (s *Service) SyncFiles(ctx context.Context, name string) (SyncResult, error) {
	v, err := s.running(ctx, name)
	if err != nil {
		return SyncResult{}, err
	}
	return s.syncFiles(ctx, v)
}

func (s *Service) syncFiles(ctx context.Context, v store.VM) (SyncResult, error) {
	cfg, err := s.loadSyncConfig()
	if err != nil {
		return SyncResult{}, err
	}
	var res SyncResult
	type item struct {
		src string
		f   SyncedFile
	}
	var items []item
	for _, e := range cfg.Files {
		src, dst, mode, err := s.resolve(e)
		if err != nil {
			res.Refused = append(res.Refused, Refusal{Path: e.Path, Reason: err.Error()})
			continue
		}
		items = append(items, item{src, SyncedFile{Path: e.Path, Guest: dst, Mode: mode}})
	}
	if len(items) == 0 {
		return res, nil
	}
	pr, pw := io.Pipe()
	var werr error
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		tw := newTar(pw)
		werr = func() error {
			for i := range items {
				before := tw.bytes
				if err := tw.file(strings.TrimPrefix(items[i].f.Guest, "/"), items[i].src, items[i].f.Mode); err != nil {
					return err
				}
				items[i].f.Bytes = tw.bytes - before
			}
			return tw.close()
		}()
		pw.CloseWithError(werr)
	}()
	code, stderr, err := s.exec(ctx, v.Name, fileSyncScript, pr, io.Discard)
	pr.Close()
	<-wdone
	if err != nil {
		return res, fmt.Errorf("vm %q: file sync: %w", v.Name, err)
	}
	if werr != nil {
		return res, fmt.Errorf("vm %q: file sync: %w", v.Name, werr)
	}
	if code != 0 {
		return res, fmt.Errorf("vm %q: file sync exited %d: %s", v.Name, code, stderr)
	}
	for _, it := range items {
		res.Synced = append(res.Synced, it.f)
	}
	return res, nil
}

// AfterStart is the VM service's post-start hook: copy the configured files.
// Best effort: a failure is logged, the VM stays up.
func (s *Service) AfterStart(ctx context.Context, v store.VM) {
	res, err := s.syncFiles(ctx, v)
	for _, r := range res.Refused {
		s.d.Log.WarnContext(ctx, "file sync refused", "vm", v.Name, "path", r.Path, "reason", r.Reason)
	}
	if err != nil {
		s.d.Log.WarnContext(ctx, "file sync at start failed", "vm", v.Name, "err", err)
		return
	}
	if len(res.Synced) > 0 {
		s.d.Log.InfoContext(ctx, "files synced at start", "vm", v.Name, "files", len(res.Synced))
	}
}
