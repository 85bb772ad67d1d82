package image

import (
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"testing"
)

func ownerPaths(o *Owners) string {
	var ps []string
	for p := range o.byPath {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return strings.Join(ps, " ")
}

// forget drops exactly the subtree: recorded children, children under
// directories that were never recorded themselves, and nothing beside it.
func TestOwnersForgetSubtree(t *testing.T) {
	o := NewOwners(1000, 1000)
	for _, p := range []string{"a", "a/b", "a/b/c", "a/x/y/z", "ab", "a2/b", "etc/passwd"} {
		o.record(p, 0, 0, 0o644, nil)
	}
	o.recordSymlink("a/l", 0, 0)
	o.link("etc/hard", "a/b/c")
	o.forget("a")
	if got, want := ownerPaths(o), "a2/b ab etc/hard etc/passwd"; got != want {
		t.Fatalf("after forget(a): %q, want %q", got, want)
	}
	o.forget("etc/passwd/nothing-here")
	o.forget("a2")
	if got, want := ownerPaths(o), "ab etc/hard etc/passwd"; got != want {
		t.Fatalf("after forget(a2): %q, want %q", got, want)
	}
	// Recorded again after a forget: indexed again.
	o.record("a/b/c", 0, 0, 0o600, nil)
	o.forget("a/b")
	if got, want := ownerPaths(o), "ab etc/hard etc/passwd"; got != want {
		t.Fatalf("after re-record and forget(a/b): %q, want %q", got, want)
	}
	o.forget(".")
	if got := ownerPaths(o); got != "" || len(o.kids) != 0 {
		t.Fatalf("after forget(.): %q, %d index entries", got, len(o.kids))
	}
}

// A layer of whiteouts for a layer of files (the shape a hostile image uses
// to make a quadratic forget burn CPU). The old full-table scan took minutes
// at this size.
func BenchmarkOwnersForgetWhiteouts(b *testing.B) {
	const n = 200_000
	for b.Loop() {
		o := NewOwners(1000, 1000)
		for i := range n {
			o.record(fmt.Sprintf("d%d/f%d", i%100, i), 0, 0, fs.FileMode(0o644), nil)
		}
		for i := range n {
			o.forget(fmt.Sprintf("d%d/f%d", i%100, i))
		}
		if len(o.byPath) != 0 {
			b.Fatal("records left")
		}
	}
}
