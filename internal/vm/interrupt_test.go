package vm

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
)

// A create interrupted at any step (the daemon shutting down cancels its
// detached context) leaves nothing: no row, no directory, no VMM, no TAP
// claimed, no pinned host key; so the same create can simply run again.
// Before the fix, one interrupted while booting stayed as an `error` row
// with its disks.
func TestCreateInterruptedLeavesNothing(t *testing.T) {
	f := newFixture(t)
	bg := context.Background()
	keep := f.create(t, "keep")
	want := "procs=1 taps=[" + keep.Tap + "]"
	for _, stage := range []string{"root_disk", "seed", "tap", "vmm_launch", "wait_ready"} {
		t.Run(stage, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(bg)
			defer cancel(nil)
			_, err := f.svc.Create(ctx, api.CreateVMParams{Name: "cut", WorkDisk: "32M"}, func(s, _ string) {
				if s == stage {
					cancel(api.ErrShuttingDown)
				}
			})
			if err == nil || !errors.Is(err, context.Canceled) {
				t.Fatalf("interrupted create: %v", err)
			}
			if _, err := f.st.GetVM(bg, "cut"); !errors.Is(err, api.ErrNotFound) {
				t.Fatalf("row left after an interrupted create (err %v)", err)
			}
			if entries, _ := os.ReadDir(f.layout.VMsDir()); len(entries) != 1 {
				t.Fatalf("vm dirs = %d, want 1 (keep's)", len(entries))
			}
			if s := f.h.String(); s != want {
				t.Fatalf("host = %s, want %s", s, want)
			}
			kh, _ := os.ReadFile(f.layout.KnownHosts())
			if strings.Contains(string(kh), "cut.vm") {
				t.Fatalf("host key of the interrupted VM still pinned:\n%s", kh)
			}
			v, err := f.svc.Create(bg, api.CreateVMParams{Name: "cut", WorkDisk: "32M"}, nil)
			if err != nil {
				t.Fatalf("the same create again: %v", err)
			}
			if kh, _ := os.ReadFile(f.layout.KnownHosts()); !strings.Contains(string(kh), "cut.vm") {
				t.Fatal("known_hosts check is blind: a created VM's pin is not in the file")
			}
			if err := f.svc.Delete(bg, v.Name, true); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := os.Stat(keep.Dir + "/" + paths.VMRootFile); err != nil {
		t.Fatalf("the other VM lost its disk: %v", err)
	}
}
