package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
)

// repo runs git against one host repository through the runner seam. It
// only ever reads the repository, except Pull's fetch into a new branch.
type repo struct {
	r   system.Runner
	dir string
}

func (g repo) git(ctx context.Context, args ...string) ([]byte, error) {
	full := append([]string{"-C", g.dir, "-c", "core.quotepath=off"}, args...)
	return g.r.Run(ctx, "git", full...)
}

func (g repo) line(ctx context.Context, args ...string) (string, error) {
	out, err := g.git(ctx, args...)
	return strings.TrimSpace(string(out)), err
}

// toplevel resolves dir to its repository's top level.
func toplevel(ctx context.Context, r system.Runner, dir string) (string, error) {
	top, err := repo{r, dir}.line(ctx, "rev-parse", "--show-toplevel")
	if err != nil {
		return "", fmt.Errorf("%s is not a git repository: %w", dir, api.ErrInvalid)
	}
	return top, nil
}

// head is the HEAD commit, "" in a repository without commits.
func (g repo) head(ctx context.Context) string {
	h, err := g.line(ctx, "rev-parse", "-q", "--verify", "HEAD^{commit}")
	if err != nil {
		return ""
	}
	return h
}

// branch is the checked-out branch, "" when HEAD is detached.
func (g repo) branch(ctx context.Context) string {
	b, err := g.line(ctx, "symbolic-ref", "-q", "--short", "HEAD")
	if err != nil {
		return ""
	}
	return b
}

// tips are the commits the branches, tags and HEAD point at.
func (g repo) tips(ctx context.Context, head string) ([]string, error) {
	out, err := g.git(ctx, "for-each-ref", "--format=%(objectname)", "refs/heads", "refs/tags")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var tips []string
	for _, t := range append(strings.Fields(string(out)), head) {
		if t != "" && !seen[t] {
			seen[t] = true
			tips = append(tips, t)
		}
	}
	return tips, nil
}

// files lists the working tree as git sees it: tracked files plus untracked
// ones that are not ignored.
func (g repo) files(ctx context.Context) ([]string, error) {
	out, err := g.git(ctx, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var names []string
	for _, n := range bytes.Split(out, []byte{0}) {
		s := string(n)
		if s != "" && !seen[s] {
			seen[s] = true
			names = append(names, s)
		}
	}
	return names, nil
}

// dirty counts entries of `git status --porcelain` (untracked included).
func (g repo) dirty(ctx context.Context) (int, error) {
	out, err := g.git(ctx, "status", "--porcelain", "-z")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range bytes.Split(out, []byte{0}) {
		if len(e) > 3 && e[2] == ' ' {
			n++
		}
	}
	return n, nil
}

// bundle writes the history reachable from branches, tags and HEAD, minus
// what is reachable from not, to path. ok is false when there is nothing new.
func (g repo) bundle(ctx context.Context, path string, not []string) (bool, error) {
	args := []string{"bundle", "create", "-q", path, "HEAD", "--branches", "--tags"}
	if len(not) > 0 {
		args = append(append(args, "--not"), not...)
	}
	_, err := g.git(ctx, args...)
	var ee *system.ExitError
	if errors.As(err, &ee) && strings.Contains(ee.Output, "empty bundle") {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, nil
}

func (g repo) hasRef(ctx context.Context, ref string) bool {
	_, err := g.git(ctx, "rev-parse", "-q", "--verify", ref)
	return err == nil
}

func (g repo) validBranch(ctx context.Context, name string) error {
	if _, err := g.git(ctx, "check-ref-format", "--branch", name); err != nil || strings.HasPrefix(name, "-") {
		return fmt.Errorf("branch name %q: %w", name, api.ErrInvalid)
	}
	return nil
}

// dirs returns the repository's git dir (index, HEAD of this worktree) and
// common dir (objects, refs).
func (g repo) dirs(ctx context.Context) (gitDir, commonDir string, err error) {
	out, err := g.git(ctx, "rev-parse", "--path-format=absolute", "--absolute-git-dir", "--git-common-dir")
	if err != nil {
		return "", "", err
	}
	f := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(f) != 2 {
		return "", "", fmt.Errorf("git rev-parse: unexpected output %q", out)
	}
	return f[0], f[1], nil
}

// refUpdates renders the branches and tags as `git update-ref --stdin` input.
func (g repo) refUpdates(ctx context.Context) ([]byte, error) {
	out, err := g.git(ctx, "for-each-ref", "--format=update %(refname) %(objectname)", "refs/heads", "refs/tags")
	if err != nil {
		return nil, err
	}
	return out, nil
}
