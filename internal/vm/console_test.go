package vm

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/banger-dev/banger/internal/vmm"
)

// attachingDriver is the fake driver plus the console copy of a driver that
// reads the VMM's console itself (qemu): it records what it was asked to attach.
type attachingDriver struct {
	fakeDriver
	mu       *sync.Mutex
	attached *[]string
}

func (d attachingDriver) AttachConsole(s vmm.Spec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	*d.attached = append(*d.attached, s.Dir)
	return nil
}

// A restarted daemon resumes copying the console of every VM it adopts, and
// of no other; else a VM adopted after kill -9 runs on with no console log.
func TestReconcileReattachesConsole(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	live := f.create(t, "live")
	stopped := f.create(t, "stopped")
	if _, err := f.svc.Stop(ctx, "stopped", true); err != nil {
		t.Fatal(err)
	}
	var got []string
	deps := f.deps
	deps.Driver = attachingDriver{fakeDriver: fakeDriver{f.h}, mu: &sync.Mutex{}, attached: &got}
	if err := New(deps).Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{live.Dir}) {
		t.Fatalf("consoles attached %v, want only %s (not %s)", got, live.Dir, stopped.Dir)
	}
}
