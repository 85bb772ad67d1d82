//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

type opStarted struct {
	OpID string `json:"op_id"`
	Kind string `json:"kind"`
	Name string `json:"name"`
}

type vmOpView struct {
	State     string
	LastError string `json:"last_error"`
	Operation *struct {
		OpID  string `json:"op_id"`
		Kind  string `json:"kind"`
		Stage string `json:"stage"`
	} `json:"operation"`
}

func showOp(t *testing.T, name string) vmOpView {
	t.Helper()
	var v vmOpView
	out := must(t, "vm", "show", name, "--json")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("vm show %s: %v\n%s", name, err, out)
	}
	return v
}

// TestVMWait: `vm create --detach` answers at once with an op id, `vm show`
// reports the stage in progress, `vm wait` follows the create to its end
// and exits 0 once the guest answers; a detached start that fails (the
// VM's root disk is gone, so QEMU cannot open it) makes `vm wait` exit
// non-zero with the start's error.
func TestVMWait(t *testing.T) {
	deleteOnCleanup(t, "slow")
	r := E.bangerRes("vm", "create", "--name", "slow", "--detach", "--json")
	if r.code != 0 {
		t.Fatalf("create --detach: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("create --detach answered in %.3fs", r.dur.Seconds())
	if r.dur > time.Second {
		t.Errorf("create --detach took %s", r.dur)
	}
	var op opStarted
	if err := json.Unmarshal([]byte(r.stdout), &op); err != nil || op.OpID == "" || op.Kind != "create" || op.Name != "slow" {
		t.Fatalf("create --detach printed %q (%v)", r.stdout, err)
	}
	v := showOp(t, "slow")
	if v.Operation == nil || v.Operation.OpID != op.OpID || v.Operation.Kind != "create" || v.Operation.Stage == "" {
		t.Fatalf("vm show during the create: %+v %+v", v, v.Operation)
	}
	text := must(t, "vm", "show", "slow")
	if !regexp.MustCompile(`(?m)^operation:\s+create \(stage [a-z_:]+, \d+\.\ds; op ` + op.OpID + `\)$`).MatchString(text) {
		t.Errorf("vm show during the create:\n%s", text)
	}
	t.Logf("vm show during the create: stage %s", v.Operation.Stage)

	t0 := time.Now()
	r = E.bangerRes("vm", "wait", "slow")
	t.Logf("vm wait returned after %.1fs", time.Since(t0).Seconds())
	if r.code != 0 || r.stdout != "slow running\n" {
		t.Fatalf("vm wait: exit %d\nstdout %q\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	// The stages from before it attached are replayed, the later ones live.
	for _, stage := range []string{"vm_dir", "root_disk", "vmm_launch", "wait_ready", "ready"} {
		if !strings.Contains(r.stderr, "==> "+stage+"\n") {
			t.Errorf("vm wait does not show stage %s:\n%s", stage, r.stderr)
		}
	}
	if out := must(t, "vm", "ssh", "slow", "--", "hostname"); out != "slow\n" {
		t.Errorf("hostname after vm wait = %q", out)
	}
	if v := showOp(t, "slow"); v.Operation != nil || v.State != "running" {
		t.Errorf("vm show after the create: %+v", v)
	}
	// Nothing in progress: at once, exit 0.
	if r := E.bangerRes("vm", "wait", "slow"); r.code != 0 || r.stdout != "slow running\n" || r.dur > 2*time.Second {
		t.Errorf("vm wait when done: exit %d in %s, %q %q", r.code, r.dur, r.stdout, r.stderr)
	}
	must(t, "vm", "delete", "--force", "slow")

	// A detached start that fails.
	deleteOnCleanup(t, "broken")
	must(t, "vm", "create", "--name", "broken", "--no-start")
	dir := showVM(t, "broken").Dir
	if err := os.Remove(filepath.Join(dir, "root.ext4")); err != nil {
		t.Fatal(err)
	}
	r = E.bangerRes("vm", "start", "broken", "--detach", "--json")
	if r.code != 0 {
		t.Fatalf("start --detach: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if err := json.Unmarshal([]byte(r.stdout), &op); err != nil || op.Kind != "start" {
		t.Fatalf("start --detach printed %q (%v)", r.stdout, err)
	}
	r = E.bangerRes("vm", "wait", "broken")
	if r.code == 0 || !strings.Contains(r.stderr, "banger: start (op "+op.OpID+"): ") || !strings.Contains(r.stderr, "vmm_launch") {
		t.Fatalf("vm wait of the failing start: exit %d\nstdout %q\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("vm wait of the failing start: %s", strings.TrimSpace(r.stderr[strings.LastIndex(r.stderr, "banger: "):]))
	// Asked again: the same error, with its code, as JSON.
	r = E.bangerRes("vm", "wait", "broken", "--json")
	var res struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); r.code == 0 || err != nil || res.Error.Code == "" ||
		!strings.HasPrefix(res.Error.Message, "start (op "+op.OpID+"): ") {
		t.Errorf("vm wait --json after the failure: exit %d %q (%v)", r.code, r.stdout, err)
	}
	if v := showOp(t, "broken"); v.State != "error" || v.Operation != nil || !strings.Contains(v.LastError, "vmm_launch") {
		t.Errorf("vm show after the failed start: %+v", v)
	}
}
