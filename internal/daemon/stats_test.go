package daemon

import (
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

// vm.stats over the wire: no running VM is an empty list, a stopped one is
// not_running, an unknown one not_found; vm.show carries the idle fields.
func TestVMStatsWire(t *testing.T) {
	e := newEnv(t)
	e.addKernel(t, "k")
	e.addImage(t, "img", "k")
	e.addVM(t, "a", "img", "k", "172.30.0.10", "bgr-a")
	var st []api.VMStats
	if err := e.call(t, api.MethodVMStats, api.StatsParams{}, &st); err != nil || len(st) != 0 {
		t.Fatalf("stats of nothing running: %v, %v", st, err)
	}
	wantCode(t, "vm.stats stopped", e.call(t, api.MethodVMStats, api.StatsParams{Name: "a"}, nil), api.CodeNotRunning)
	wantCode(t, "vm.stats unknown", e.call(t, api.MethodVMStats, api.StatsParams{Name: "nope"}, nil), api.CodeNotFound)
	secs := 90
	var v api.VM
	if err := e.call(t, api.MethodVMSet, api.SetVMParams{Name: "a", IdleTimeout: &secs}, &v); err != nil || v.IdleTimeout != 90 {
		t.Fatalf("vm.set --idle-timeout: %+v, %v", v.Idle, err)
	}
	secs = -1
	wantCode(t, "vm.set negative idle timeout", e.call(t, api.MethodVMSet, api.SetVMParams{Name: "a", IdleTimeout: &secs}, nil), api.CodeInvalid)
}
