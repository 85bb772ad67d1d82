package workspace

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/tarsafe"
)

// PullParams says how to bring a VM's work back.
type PullParams struct {
	Name   string
	Branch string // host branch to create; "banger/<vm>" when empty
	Force  bool   // overwrite an existing branch (never the checked-out one)
	Patch  bool   // uncommitted changes as a patch instead of a commit
}

// PullResult is what came back.
type PullResult struct {
	Branch  string
	Commit  string // the new branch's tip
	Commits int    // commits on it that were not in the host's synced HEAD
	Patch   []byte // uncommitted changes, with Patch
}

// What a pull may bring back from the guest. The pull tar is written by
// the guest, so it is hostile: every entry is charged at its logical size,
// sparse entries are refused, names are an allowlist and never paths.
const (
	// PullLimit bounds the whole tar stream (headers included) and the sum
	// of its entries' logical sizes.
	PullLimit = 1 << 30
	// PullBundleLimit bounds the git bundle of the VM's commits.
	PullBundleLimit = PullLimit
	// PullPatchLimit bounds --patch output: it is held in memory and sent
	// back base64-encoded in one RPC result, which must fit
	// rpc.MaxResponseFrame (64 MiB).
	PullPatchLimit = 32 << 20
	// pullTipLimit: a 40- or 64-hex commit id and a newline.
	pullTipLimit = 128
	// pullCountLimit: a decimal commit count and a newline.
	pullCountLimit = 32
	// pullFetchTimeout bounds the host's git fetch of the guest's bundle.
	pullFetchTimeout = 10 * time.Minute
)

// pullLimits are the limits untar enforces (small ones in tests).
type pullLimits struct {
	Total                     int64
	Bundle, Patch, Tip, Count int64
}

func defaultPullLimits() pullLimits {
	return pullLimits{Total: PullLimit, Bundle: PullBundleLimit, Patch: PullPatchLimit, Tip: pullTipLimit, Count: pullCountLimit}
}

// entry is the limit for one allowed name; false for any other name.
func (l pullLimits) entry(name string) (int64, bool) {
	switch name {
	case "bundle":
		return l.Bundle, true
	case "patch":
		return l.Patch, true
	case "tip":
		return l.Tip, true
	case "count":
		return l.Count, true
	}
	return 0, false
}

// Pull creates a host branch holding the VM's commits and (unless
// p.Patch) a commit of its uncommitted changes. The host's working tree, index
// and checked-out branch are never touched: git fetch writes only the new ref.
func (s *Service) Pull(ctx context.Context, p PullParams) (PullResult, error) {
	v, err := s.running(ctx, p.Name)
	if err != nil {
		return PullResult{}, err
	}
	ws, err := s.d.Store.GetWorkspace(ctx, v.ID)
	if err != nil {
		return PullResult{}, fmt.Errorf("vm %q has no workspace (banger vm workspace prepare): %w", v.Name, err)
	}
	defer s.lock(v.ID)()
	g := repo{s.d.Runner, ws.HostPath}
	branch := p.Branch
	if branch == "" {
		branch = "banger/" + v.Name
	}
	if err := g.validBranch(ctx, branch); err != nil {
		return PullResult{}, err
	}
	ref := "refs/heads/" + branch
	if g.branch(ctx) == branch {
		return PullResult{}, fmt.Errorf("branch %q is checked out in %s; pull never touches the working tree: pick another --branch: %w", branch, ws.HostPath, api.ErrBusy)
	}
	if g.hasRef(ctx, ref) && !p.Force {
		return PullResult{}, fmt.Errorf("branch %q already exists in %s (use --force to overwrite it): %w", branch, ws.HostPath, api.ErrExists)
	}

	tmp, err := os.MkdirTemp(s.d.Tmp, "pull-")
	if err != nil {
		return PullResult{}, err
	}
	defer os.RemoveAll(tmp)
	patch := ""
	if p.Patch {
		patch = "1"
	}
	// The tar is read as it arrives; a refusal cancels the guest command
	// (and with it the stream) at once.
	xctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pr, pw := io.Pipe()
	var files map[string][]byte
	var uerr error
	udone := make(chan struct{})
	go func() {
		defer close(udone)
		files, uerr = untarStream(pr, tmp, defaultPullLimits())
		if uerr != nil {
			cancel(uerr)
			pr.CloseWithError(uerr)
		}
	}()
	code, stderr, err := s.exec(xctx, v.Name, pullScript, nil, pw, ws.GuestPath, ws.Head, v.Name, patch)
	pw.Close()
	<-udone
	switch {
	case errors.Is(uerr, api.ErrInvalid):
		// Refused: that refusal is also why the command failed, if it did.
		return PullResult{}, fmt.Errorf("vm %q: pull: %w", v.Name, uerr)
	case err != nil:
		return PullResult{}, fmt.Errorf("vm %q: pull: %w", v.Name, err)
	case code != 0:
		return PullResult{}, fmt.Errorf("vm %q: pull from %s exited %d: %s", v.Name, ws.GuestPath, code, stderr)
	case uerr != nil:
		return PullResult{}, fmt.Errorf("vm %q: pull: reading the tar from the guest: %v: %w", v.Name, uerr, api.ErrInvalid)
	}
	res := PullResult{Branch: branch, Commit: strings.TrimSpace(string(files["tip"])), Patch: files["patch"]}
	res.Commits, _ = strconv.Atoi(strings.TrimSpace(string(files["count"])))
	// What the guest sends is untrusted: the tip becomes a git argument.
	if !commitRE.MatchString(res.Commit) || res.Commits < 0 {
		return PullResult{}, fmt.Errorf("vm %q: pull: no valid commit id came back (%.80q): %w", v.Name, res.Commit, api.ErrInvalid)
	}

	if _, ok := files["bundle"]; ok {
		spec := "refs/banger/pull:" + ref
		if p.Force {
			spec = "+" + spec
		}
		// The bundle is the guest's: bounded in size, and git gets a bounded
		// time to index it, so a crafted pack cannot keep the host busy.
		fctx, cancel := context.WithTimeout(ctx, pullFetchTimeout)
		_, err := g.git(fctx, "-c", "transfer.fsckObjects=true", "fetch", "-q", "--no-write-fetch-head", filepath.Join(tmp, "bundle"), spec)
		cancel()
		if err != nil {
			if fctx.Err() == context.DeadlineExceeded {
				err = fmt.Errorf("git fetch of the guest's bundle took longer than %s: %w", pullFetchTimeout, err)
			}
			return PullResult{}, fmt.Errorf("fetch the vm's work into %s: %w", branch, err)
		}
	} else {
		// Nothing new: the tip is a commit the host already has.
		args := []string{"update-ref", "-m", "banger pull from vm " + v.Name, ref, res.Commit}
		if !p.Force {
			args = append(args, "")
		}
		if _, err := g.git(ctx, args...); err != nil {
			return PullResult{}, fmt.Errorf("create branch %s: %w", branch, err)
		}
	}
	s.d.Log.InfoContext(ctx, "workspace pulled", "vm", v.Name, "branch", branch, "commit", res.Commit, "commits", res.Commits, "patch_bytes", len(res.Patch))
	return res, nil
}

var commitRE = regexp.MustCompile(`^[0-9a-f]{40}([0-9a-f]{24})?$`)

// untarStream reads the whole pull stream: the tar, then whatever the guest
// writes after it (record padding), all within l.Total.
func untarStream(r io.Reader, dir string, l pullLimits) (map[string][]byte, error) {
	lr := guest.NewLimitReader(r, l.Total, "pull stream")
	files, err := untar(lr, dir, l)
	if err == nil {
		_, err = io.Copy(io.Discard, lr)
	}
	if err != nil {
		_ = os.Remove(filepath.Join(dir, "bundle"))
		return nil, err
	}
	return files, nil
}

// untar reads the flat tar the pull script writes: the bundle goes to
// dir/bundle, the small files are returned (the bundle's entry is empty).
// Only regular, non-sparse entries named tip, count, bundle or patch are
// accepted, each once and within its limit; the sum of their logical sizes
// is within l.Total. On error dir/bundle may be left half-written (the
// caller removes it).
func untar(r io.Reader, dir string, l pullLimits) (map[string][]byte, error) {
	out := map[string][]byte{}
	tr := tar.NewReader(r)
	var total int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("%.64q", h.Name)
		limit, ok := l.entry(h.Name)
		_, dup := out[h.Name]
		switch {
		case tarsafe.IsSparse(h):
			// archive/tar would expand it: a few KiB of tar, any size on disk.
			return nil, fmt.Errorf("tar entry %s from the guest is a sparse file: refused: %w", name, api.ErrInvalid)
		case h.Typeflag != tar.TypeReg:
			return nil, fmt.Errorf("tar entry %s from the guest is not a regular file (type %q): refused: %w", name, h.Typeflag, api.ErrInvalid)
		case !ok:
			return nil, fmt.Errorf("unexpected tar entry %s from the guest: refused: %w", name, api.ErrInvalid)
		case dup:
			return nil, fmt.Errorf("tar entry %s from the guest appears twice: refused: %w", name, api.ErrInvalid)
		}
		what := "tar entry " + name
		if h.Size > limit {
			return nil, &guest.LimitError{What: what, Limit: limit}
		}
		if total += h.Size; total > l.Total {
			return nil, &guest.LimitError{What: "pull stream", Limit: l.Total}
		}
		// Charged again while copying: the header's size is not trusted.
		if h.Name == "bundle" {
			f, err := os.OpenFile(filepath.Join(dir, "bundle"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(guest.NewLimitWriter(f, limit, what), tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, err
			}
			out["bundle"] = nil
			continue
		}
		b, err := io.ReadAll(guest.NewLimitReader(tr, limit, what))
		if err != nil {
			return nil, err
		}
		out[h.Name] = b
	}
}
