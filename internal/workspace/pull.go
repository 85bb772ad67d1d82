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

	"github.com/banger-dev/banger/internal/api"
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

// maxPull bounds what a pull may stream back (bundle + patch).
const maxPull = 4 << 30

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
	outf, err := os.Create(filepath.Join(tmp, "out.tar"))
	if err != nil {
		return PullResult{}, err
	}
	defer outf.Close()
	out := &limitedWriter{w: outf, left: maxPull}
	patch := ""
	if p.Patch {
		patch = "1"
	}
	code, stderr, err := s.exec(ctx, v.Name, pullScript, nil, out, ws.GuestPath, ws.Head, v.Name, patch)
	if err != nil {
		return PullResult{}, fmt.Errorf("vm %q: pull: %w", v.Name, err)
	}
	if out.over {
		return PullResult{}, fmt.Errorf("vm %q: pull: more than %d bytes came back: %w", v.Name, int64(maxPull), api.ErrInvalid)
	}
	if code != 0 {
		return PullResult{}, fmt.Errorf("vm %q: pull from %s exited %d: %s", v.Name, ws.GuestPath, code, stderr)
	}
	if _, err := outf.Seek(0, io.SeekStart); err != nil {
		return PullResult{}, err
	}
	files, err := untar(outf, tmp)
	if err != nil {
		return PullResult{}, fmt.Errorf("vm %q: pull: %w", v.Name, err)
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
		if _, err := g.git(ctx, "fetch", "-q", "--no-write-fetch-head", filepath.Join(tmp, "bundle"), spec); err != nil {
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

type limitedWriter struct {
	w    io.Writer
	left int64
	over bool
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		l.over = true
		return 0, errors.New("too much output")
	}
	l.left -= int64(len(p))
	return l.w.Write(p)
}

// untar reads the flat tar the pull script writes: the bundle goes to
// dir/bundle, the small files are returned (the bundle's entry is empty).
func untar(r io.Reader, dir string) (map[string][]byte, error) {
	out := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		switch {
		case h.Typeflag != tar.TypeReg:
		case h.Name == "bundle":
			f, err := os.Create(filepath.Join(dir, "bundle"))
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, err
			}
			out["bundle"] = nil
		case h.Name == "tip" || h.Name == "count" || h.Name == "patch":
			b, err := io.ReadAll(io.LimitReader(tr, maxPull))
			if err != nil {
				return nil, err
			}
			out[h.Name] = b
		}
	}
}
