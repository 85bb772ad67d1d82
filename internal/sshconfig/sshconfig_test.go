package sshconfig

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func TestRenderFailsClosed(t *testing.T) {
	for _, p := range []Paths{
		{KnownHosts: "", Identity: "/s/id"},
		{KnownHosts: "relative/known_hosts", Identity: "/s/id"},
		{KnownHosts: "/a b/known_hosts", Identity: "/s/id"},
		{KnownHosts: "/s/../known_hosts", Identity: "/s/id"},
		{KnownHosts: "/s/known_hosts", Identity: ""},
	} {
		if _, err := Render(p); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("Render(%+v) = %v, want ErrInvalid", p, err)
		}
	}
	out, err := Render(Paths{KnownHosts: "/s/ssh/known_hosts", Identity: "/s/ssh/id_ed25519"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Host *.vm", "UserKnownHostsFile /s/ssh/known_hosts", "StrictHostKeyChecking accept-new", "IdentityFile /s/ssh/id_ed25519"} {
		if !strings.Contains(out, want) {
			t.Errorf("config lacks %q:\n%s", want, out)
		}
	}
}

func TestInstallUninstall(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, ".ssh", "config")
	owned := filepath.Join(dir, "state", "ssh", "config")
	// No file yet: created with just the block; twice is a no-op.
	if changed, err := Install(cfg, owned); err != nil || !changed {
		t.Fatalf("Install = %v, %v", changed, err)
	}
	if changed, err := Install(cfg, owned); err != nil || changed {
		t.Fatalf("second Install = %v, %v", changed, err)
	}
	b, _ := os.ReadFile(cfg)
	if string(b) != block(owned) {
		t.Fatalf("config:\n%s", b)
	}
	if st, _ := os.Stat(cfg); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode())
	}
	if changed, err := Uninstall(cfg); err != nil || !changed {
		t.Fatalf("Uninstall = %v, %v", changed, err)
	}
	if b, _ := os.ReadFile(cfg); len(b) != 0 {
		t.Fatalf("after uninstall: %q", b)
	}

	// An existing config keeps every byte of its own; the block goes on top.
	user := "Host example\n    User me\n\nHost *\n    ServerAliveInterval 30\n"
	if err := os.WriteFile(cfg, []byte(user), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(cfg, 0o644)
	if _, err := Install(cfg, owned); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(cfg)
	if string(b) != block(owned)+"\n"+user {
		t.Fatalf("config:\n%s", b)
	}
	if st, _ := os.Stat(cfg); st.Mode().Perm() != 0o644 {
		t.Errorf("mode changed to %v", st.Mode())
	}
	// A moved state dir: reinstall replaces the block, never adds a second.
	owned2 := filepath.Join(dir, "other", "config")
	if _, err := Install(cfg, owned2); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(cfg)
	if strings.Count(string(b), beginMarker) != 1 || !strings.Contains(string(b), "Include "+owned2) {
		t.Fatalf("config:\n%s", b)
	}
	if _, err := Uninstall(cfg); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(cfg); string(b) != user {
		t.Fatalf("after uninstall:\n%q\nwant\n%q", b, user)
	}
	if changed, err := Uninstall(cfg); err != nil || changed {
		t.Fatalf("second Uninstall = %v, %v", changed, err)
	}
}

func TestBrokenBlockRefused(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config")
	broken := beginMarker + "\nInclude /x\nHost a\n"
	if err := os.WriteFile(cfg, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(cfg, "/s/config"); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("Install over a broken block: %v", err)
	}
	if _, err := Uninstall(cfg); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("Uninstall of a broken block: %v", err)
	}
	if b, _ := os.ReadFile(cfg); string(b) != broken {
		t.Fatal("file changed")
	}
}
