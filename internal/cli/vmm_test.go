package cli

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

// --vmm travels from create and run; vm show prints the VM's VMM, and a
// refusal is the daemon's message with a failing exit.
func TestVMMFlagAndShow(t *testing.T) {
	f := newFakeDaemon(t)
	code, out, errs := run(t, f.dir, "", "vm", "create", "--name", "dev", "--vmm", "qemu")
	if code != 0 || !regexp.MustCompile(`(?m)^vmm:\s+qemu$`).MatchString(out) {
		t.Fatalf("create --vmm qemu: exit %d stderr %q\n%s", code, errs, out)
	}
	code, out, _ = run(t, f.dir, "", "vm", "show", "dev", "--json")
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || v["driver"] != "qemu" {
		t.Fatalf("show --json: exit %d, %v, driver %v\n%s", code, err, v["driver"], out)
	}
	code, _, errs = run(t, f.dir, "", "vm", "create", "--name", "fc", "--vmm", "firecracker")
	if code == 0 || !strings.Contains(errs, "vmm firecracker cannot run vms on this host") || f.has("fc") {
		t.Fatalf("create --vmm firecracker: exit %d stderr %q", code, errs)
	}
	if code, out, _ := run(t, f.dir, "", "vm", "run", "--help"); code != 0 || !strings.Contains(out, "--vmm string") {
		t.Errorf("vm run has no --vmm: exit %d\n%s", code, out)
	}
}

// A failing optional check (a VMM the daemon does not use by default) is
// shown as "no" and does not fail doctor; a failing required one does.
func TestDoctorOptionalChecks(t *testing.T) {
	f := newFakeDaemon(t)
	f.doctor = api.DoctorResult{Accel: "tcg", VMM: "qemu", Checks: []api.DoctorCheck{
		{Name: "qemu-system-x86_64", OK: true, Detail: "/usr/bin/qemu-system-x86_64"},
		{Name: "firecracker", Detail: "firecracker binary not found", Optional: true},
	}}
	code, out, errs := run(t, f.dir, "", "doctor")
	if code != 0 || !regexp.MustCompile(`(?m)^no\s+firecracker\s+firecracker binary not found$`).MatchString(out) {
		t.Fatalf("doctor: exit %d stderr %q\n%s", code, errs, out)
	}
	f.mu.Lock()
	f.doctor.Checks[1].Optional = false
	f.mu.Unlock()
	if code, out, _ := run(t, f.dir, "", "doctor"); code != 1 || !regexp.MustCompile(`(?m)^FAIL\s+firecracker\s`).MatchString(out) {
		t.Fatalf("doctor with a required failure: exit %d\n%s", code, out)
	}
}
