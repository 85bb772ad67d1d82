package sshconfig

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (chown to another uid); CI=true requires it")
		}
		t.Skip("needs root (chown to another uid)")
	}
}

const otherUID, otherGID = 4242, 4242

func owner(t *testing.T, p string) (int, int) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return int(st.Uid), int(st.Gid)
}

// hostileHome is a user's home (owned by otherUID) with ~/.ssh, and a victim
// file elsewhere that root must never write.
func hostileHome(t *testing.T) (cfg, victim string) {
	t.Helper()
	base := t.TempDir()
	home := filepath.Join(base, "home")
	ssh := filepath.Join(home, ".ssh")
	if err := os.MkdirAll(ssh, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{home, ssh} {
		if err := os.Chown(d, otherUID, otherGID); err != nil {
			t.Fatal(err)
		}
	}
	victim = filepath.Join(base, "victim")
	if err := os.WriteFile(victim, []byte("root's file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(ssh, "config"), victim
}

func assertVictim(t *testing.T, victim string) {
	t.Helper()
	b, err := os.ReadFile(victim)
	if err != nil || string(b) != "root's file\n" {
		t.Fatalf("victim file changed: %q, %v", b, err)
	}
	if fi, err := os.Lstat(victim); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("victim replaced: %v %v", fi, err)
	}
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), "banger") && e.Name() != "config.banger-tmp" {
			t.Errorf("temp file left: %s", e.Name())
		}
	}
}

// TestInstallAsRootInUserHome: root writes ~/.ssh/config of another user.
// A symlink at the old predictable temp name must not redirect the write; a
// symlinked target or directory and a target owned by a third uid are
// refused; a new file belongs to the home's owner.
func TestInstallAsRootInUserHome(t *testing.T) {
	needRoot(t)
	owned := "/s/ssh/config"

	t.Run("symlink at the old temp name", func(t *testing.T) {
		cfg, victim := hostileHome(t)
		if err := os.Symlink(victim, cfg+".banger-tmp"); err != nil {
			t.Fatal(err)
		}
		if _, err := Install(cfg, owned); err != nil {
			t.Fatal(err)
		}
		assertVictim(t, victim)
		b, _ := os.ReadFile(cfg)
		if string(b) != block(owned) {
			t.Fatalf("config: %q", b)
		}
		if u, g := owner(t, cfg); u != otherUID || g != otherGID {
			t.Errorf("new config owned by %d:%d, want the home's owner %d:%d", u, g, otherUID, otherGID)
		}
		assertNoTemp(t, filepath.Dir(cfg))
	})

	t.Run("symlink at the target", func(t *testing.T) {
		cfg, victim := hostileHome(t)
		if err := os.Symlink(victim, cfg); err != nil {
			t.Fatal(err)
		}
		if _, err := Install(cfg, owned); !errors.Is(err, api.ErrInvalid) {
			t.Fatalf("Install through a symlinked config: %v, want ErrInvalid", err)
		}
		if _, err := Uninstall(cfg); !errors.Is(err, api.ErrInvalid) {
			t.Fatalf("Uninstall through a symlinked config: %v, want ErrInvalid", err)
		}
		assertVictim(t, victim)
		assertNoTemp(t, filepath.Dir(cfg))
	})

	t.Run("symlinked directory", func(t *testing.T) {
		cfg, victim := hostileHome(t)
		elsewhere := filepath.Dir(victim)
		ssh := filepath.Dir(cfg)
		if err := os.Remove(ssh); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(elsewhere, ssh); err != nil {
			t.Fatal(err)
		}
		if _, err := Install(filepath.Join(ssh, "victim"), owned); !errors.Is(err, api.ErrInvalid) {
			t.Fatalf("Install into a symlinked dir: %v, want ErrInvalid", err)
		}
		assertVictim(t, victim)
	})

	t.Run("target owned by another uid", func(t *testing.T) {
		cfg, _ := hostileHome(t)
		if err := os.WriteFile(cfg, []byte("Host x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(cfg, otherUID+1, otherGID+1); err != nil {
			t.Fatal(err)
		}
		if _, err := Install(cfg, owned); !errors.Is(err, api.ErrInvalid) {
			t.Fatalf("Install over a third user's file: %v, want ErrInvalid", err)
		}
		if b, _ := os.ReadFile(cfg); string(b) != "Host x\n" {
			t.Fatalf("file changed: %q", b)
		}
	})

	t.Run("existing config keeps owner and mode", func(t *testing.T) {
		cfg, _ := hostileHome(t)
		if err := os.WriteFile(cfg, []byte("Host x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_ = os.Chmod(cfg, 0o644)
		if err := os.Chown(cfg, otherUID, otherGID); err != nil {
			t.Fatal(err)
		}
		if _, err := Install(cfg, owned); err != nil {
			t.Fatal(err)
		}
		if u, g := owner(t, cfg); u != otherUID || g != otherGID {
			t.Errorf("config now owned by %d:%d", u, g)
		}
		if fi, _ := os.Stat(cfg); fi.Mode().Perm() != 0o644 {
			t.Errorf("mode %v", fi.Mode())
		}
		if _, err := Uninstall(cfg); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(cfg); string(b) != "Host x\n" {
			t.Fatalf("after uninstall: %q", b)
		}
		assertNoTemp(t, filepath.Dir(cfg))
	})
}
