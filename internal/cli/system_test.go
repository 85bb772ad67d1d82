package cli

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

// TestMain: the package's tests drive Main, and the tests run as root here;
// they mean the all-in-one mode. TestRefuseRoot checks the refusal itself.
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == "bangerd" {
		os.Exit(fakeBangerdMain(os.Args[1:])) // the test binary started as the daemon (autostart_test.go)
	}
	os.Setenv("BANGER_ALLOW_ROOT", "1")
	os.Exit(m.Run())
}

func TestRefuseRoot(t *testing.T) {
	a := &app{}
	err := a.refuseRoot(0)
	if !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("root without --allow-root: %v, want ErrInvalid", err)
	}
	for _, want := range []string{"system helper --owner", "--allow-root", "BANGER_ALLOW_ROOT=1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}
	if err := a.refuseRoot(1000); err != nil {
		t.Errorf("non-root: %v", err)
	}
	a.allowRoot = true
	if err := a.refuseRoot(0); err != nil {
		t.Errorf("root with --allow-root: %v", err)
	}
}

// TestRootRefusedThroughMain: the flag's env default and the check are wired.
func TestRootRefusedThroughMain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("checks the refusal of a root CLI")
	}
	t.Setenv("BANGER_ALLOW_ROOT", "")
	code, _, errs := run(t, t.TempDir(), "", "vm", "list")
	if code == 0 || !strings.Contains(errs, "refusing to run as root") {
		t.Fatalf("root vm list: code %d, stderr %q", code, errs)
	}
	// `system` runs as root on purpose: no refusal (it fails on --owner instead).
	t.Setenv("SUDO_USER", "")
	code, _, errs = run(t, t.TempDir(), "", "system", "helper")
	if code == 0 || strings.Contains(errs, "refusing to run as root") || !strings.Contains(errs, "--owner") {
		t.Fatalf("system helper as root: code %d, stderr %q", code, errs)
	}
	t.Setenv("BANGER_ALLOW_ROOT", "1")
	code, _, errs = run(t, t.TempDir(), "", "--no-autostart", "vm", "list")
	if strings.Contains(errs, "refusing to run as root") {
		t.Fatalf("BANGER_ALLOW_ROOT=1 still refused: code %d %q", code, errs)
	}
}
