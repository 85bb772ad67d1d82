package workspace

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func TestFileSync(t *testing.T) {
	f := newFixture(t)
	home := f.s.d.Home
	outside := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(home, ".config", "tool"), 0o755))
	must(os.WriteFile(filepath.Join(home, ".gitconfig"), []byte("[user]\n\tname = U\n"), 0o644))
	must(os.WriteFile(filepath.Join(home, ".config", "tool", "auth.json"), []byte(`{"token":"s"}`), 0o644))
	must(os.WriteFile(filepath.Join(home, "script"), []byte("#!/bin/sh\n"), 0o750))
	must(os.WriteFile(filepath.Join(outside, "secret"), []byte("nope"), 0o644))
	must(os.Symlink(filepath.Join(outside, "secret"), filepath.Join(home, "escape")))
	must(os.Symlink(".gitconfig", filepath.Join(home, "inside-link")))
	cfg := `{"files": [
		{"path": "~/.gitconfig"},
		{"path": "~/.config/tool/auth.json", "secret": true},
		{"path": "` + filepath.Join(home, "script") + `"},
		{"path": "~/inside-link"},
		{"path": "~/escape"},
		{"path": "~/../x"},
		{"path": "` + filepath.Join(outside, "secret") + `"},
		{"path": "~/missing"}
	]}`
	must(os.WriteFile(f.s.d.SyncConfig, []byte(cfg), 0o600))

	res, err := f.s.SyncFiles(f.ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range res.Synced {
		st, err := os.Stat(s.Guest)
		if err != nil {
			t.Fatalf("%s not in guest: %v", s.Guest, err)
		}
		rel, _ := filepath.Rel(f.home, s.Guest)
		got = append(got, rel+" "+st.Mode().Perm().String())
	}
	want := []string{".gitconfig -rw-r--r--", ".config/tool/auth.json -rw-------", "script -rwxr-x---", "inside-link -rw-r--r--"}
	if !slices.Equal(got, want) {
		t.Fatalf("synced %v, want %v", got, want)
	}
	if b, _ := os.ReadFile(filepath.Join(f.home, "inside-link")); string(b) != "[user]\n\tname = U\n" {
		t.Fatalf("symlink inside home not followed: %q", b)
	}
	var refused []string
	for _, r := range res.Refused {
		refused = append(refused, r.Path+": "+r.Reason)
	}
	all := strings.Join(refused, "\n")
	if len(res.Refused) != 4 || !strings.Contains(all, "~/escape\" resolves to") || !strings.Contains(all, "'..' is not allowed") ||
		!strings.Contains(all, "outside the owner's home") || !strings.Contains(all, "does not exist") {
		t.Fatalf("refused:\n%s", all)
	}
	if _, err := os.Stat(filepath.Join(f.home, "escape")); !os.IsNotExist(err) {
		t.Fatalf("escaping symlink target was copied: %v", err)
	}

	must(os.WriteFile(f.s.d.SyncConfig, []byte(`{"files": [{"pth": "x"}]}`), 0o600))
	if _, err := f.s.SyncFiles(f.ctx, "dev"); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("bad config: %v", err)
	}
	f.g.running = false
	if _, err := f.s.SyncFiles(f.ctx, "dev"); !errors.Is(err, api.ErrNotRunning) {
		t.Fatalf("stopped: %v", err)
	}
}
