package testenv

import (
	"fmt"
	"testing"
)

type recorder struct {
	skipped, failed string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Skipf(f string, a ...any)  { r.skipped = fmt.Sprintf(f, a...) }
func (r *recorder) Fatalf(f string, a ...any) { r.failed = fmt.Sprintf(f, a...) }

func TestMissingFailsUnderCI(t *testing.T) {
	t.Setenv("CI", "true")
	var r recorder
	RequireTools(&r, "banger-no-such-tool")
	if r.failed == "" || r.skipped != "" {
		t.Fatalf("under CI a missing tool must fail, got skip=%q fail=%q", r.skipped, r.failed)
	}
}

func TestMissingSkipsOutsideCI(t *testing.T) {
	t.Setenv("CI", "")
	var r recorder
	RequireTools(&r, "banger-no-such-tool")
	if r.skipped == "" || r.failed != "" {
		t.Fatalf("outside CI a missing tool must skip, got skip=%q fail=%q", r.skipped, r.failed)
	}
}

func TestPresentToolPasses(t *testing.T) {
	t.Setenv("CI", "true")
	var r recorder
	RequireTools(&r, "sh")
	if r.skipped != "" || r.failed != "" {
		t.Fatalf("sh is present: skip=%q fail=%q", r.skipped, r.failed)
	}
}
