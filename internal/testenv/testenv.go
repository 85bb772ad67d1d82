// Package testenv decides what a test does when a prerequisite of the host is
// missing: a person running `go test` sees a skip; CI (CI=true), where every
// prerequisite is installed by scripts/install-deps.sh, sees a failure, so a
// run that silently tested less than it claims cannot pass.
package testenv

import (
	"os"
	"strconv"

	"github.com/banger-dev/banger/internal/system"
)

// TB is the part of testing.TB used here.
type TB interface {
	Helper()
	Skipf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// InCI reports whether the tests run under CI, where skips are failures.
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing skips t outside CI and fails it under CI, with the reason.
func Missing(t TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("prerequisite missing under CI=true: "+format, args...)
		return
	}
	t.Skipf(format, args...)
}

// RequireRoot stops t unless it runs as root.
func RequireRoot(t TB) {
	t.Helper()
	if uid := os.Geteuid(); uid != 0 {
		Missing(t, "needs root, running as uid %s", strconv.Itoa(uid))
	}
}

// RequireTools stops t unless every named binary is on PATH.
func RequireTools(t TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := system.LookPath(n); err != nil {
			Missing(t, "%s not installed: %v", n, err)
		}
	}
}
