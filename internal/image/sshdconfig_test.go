package image

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

// The image's sshd_config is image content: Customize reads it to add an
// Include, up to a stated limit, and never through a symlink.
func TestCustomizeBoundsSSHDConfig(t *testing.T) {
	setup := func(t *testing.T) (string, string) {
		rootfs := t.TempDir()
		d := filepath.Join(rootfs, "etc/ssh")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return rootfs, filepath.Join(d, "sshd_config")
	}
	t.Run("too big", func(t *testing.T) {
		rootfs, cfg := setup(t)
		f, err := os.Create(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// Sparse: reads as maxSSHDConfigBytes+1 NULs, costs no disk.
		if err := f.Truncate(maxSSHDConfigBytes + 1); err != nil {
			t.Fatal(err)
		}
		f.Close()
		err = Customize(rootfs, "")
		if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "1048576") {
			t.Fatalf("Customize: %v, want ErrInvalid naming the 1048576-byte limit", err)
		}
	})
	t.Run("symlink to the host", func(t *testing.T) {
		rootfs, cfg := setup(t)
		secret := filepath.Join(t.TempDir(), "host-secret")
		if err := os.WriteFile(secret, []byte("PermitRootLogin yes # host file\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(secret, cfg); err != nil {
			t.Fatal(err)
		}
		if err := Customize(rootfs, ""); err == nil {
			t.Fatal("Customize read sshd_config through a symlink")
		}
		if b, _ := os.ReadFile(secret); string(b) != "PermitRootLogin yes # host file\n" {
			t.Fatalf("host file changed: %q", b)
		}
	})
}
