package vm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
)

// TestAfterStopOnEveryTeardown: every way a VM stops calls AfterStop (its
// forwards end there), after the VM stopped counting as running, so a
// forward registered at any moment is either refused by Running or ended by
// the hook.
func TestAfterStopOnEveryTeardown(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var mu sync.Mutex
	var calls []string
	var svc *Service
	d := f.deps
	d.AfterStop = func(id string) {
		v, err := f.st.GetVM(ctx, id)
		running := err == nil && svc.Running(v)
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, fmt.Sprintf("%s running=%v", v.Name, running))
	}
	svc = New(d)
	create := func(name string) store.VM {
		v, err := svc.Create(ctx, api.CreateVMParams{Name: name, WorkDisk: "32M"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	create("stopped")
	if _, err := svc.Stop(ctx, "stopped", false); err != nil {
		t.Fatal(err)
	}
	create("killed")
	if _, err := svc.Kill(ctx, "killed"); err != nil {
		t.Fatal(err)
	}
	create("deleted")
	if err := svc.Delete(ctx, "deleted", true); err != nil {
		t.Fatal(err)
	}
	crashed := create("crashed")
	_ = fakeDriver{f.h}.Kill(svc.handle(crashed.ID).PID)
	waitCalls := func(n int) {
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			got := len(calls)
			mu.Unlock()
			if got >= n || time.Now().After(deadline) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitCalls(4)
	// A boot that fails after the VMM started: its undo is a teardown too.
	v, err := svc.Create(ctx, api.CreateVMParams{Name: "noboot", WorkDisk: "32M", NoStart: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.h.ready[v.ID] = errors.New("connection refused")
	if err := svc.start(ctx, &v, 200*time.Millisecond, nil); err == nil {
		t.Fatal("a boot that never answers succeeded")
	}
	mu.Lock()
	defer mu.Unlock()
	got := strings.Join(calls, "\n")
	// The failed boot: the vmm_launch undo, then the error teardown.
	want := strings.Join([]string{"stopped running=false", "killed running=false", "deleted running=false",
		"crashed running=false", "noboot running=false"}, "\n")
	if !strings.HasPrefix(got, want) {
		t.Fatalf("AfterStop calls:\n%s\nwant (at least):\n%s", got, want)
	}
}
