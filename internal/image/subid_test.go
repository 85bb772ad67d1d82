package image

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRootlessBuildReady(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	found := func(string) (string, error) { return "/usr/bin/x", nil }
	none := func(string) (string, error) { return "", errors.New("not found") }
	good := write("good", "other:100000:65536\nalice:165536:65536\n")
	byUID := write("byuid", "1000:165536:65536\n")
	small := write("small", "alice:165536:1000\n")
	for _, c := range []struct {
		name           string
		look           func(string) (string, error)
		subuid, subgid string
		ok             bool
		detail         string
	}{
		{"by name", found, good, good, true, "present"},
		{"by uid", found, byUID, byUID, true, "present"},
		{"range too small", found, good, small, false, "a range of 65536 ids for alice in " + small},
		{"no uidmap", none, good, good, false, "newuidmap (package uidmap), newgidmap (package uidmap)"},
		{"no file", found, filepath.Join(dir, "missing"), good, false, "missing: no such file"},
		{"other user only", found, write("other", "bob:1:65536\n"), good, false, "ids for alice"},
	} {
		ok, detail := RootlessBuildReady(c.look, c.subuid, c.subgid, "alice", 1000)
		if ok != c.ok || !strings.Contains(detail, c.detail) {
			t.Errorf("%s: %v %q, want %v and %q", c.name, ok, detail, c.ok, c.detail)
		}
	}
}
