package vm

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
)

// TestNamesCannotLookLikeIDs: a VM named like another VM's id would shadow
// it (`vm delete --force <id>` destroyed the wrong VM); such names are
// refused, and an id always resolves to its own VM.
func TestNamesCannotLookLikeIDs(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	victim := f.create(t, "victim")
	for _, name := range []string{victim.ID, "0123456789ab", "deadbeefcafe"} {
		_, err := f.svc.Create(ctx, api.CreateVMParams{Name: name, WorkDisk: "32M", NoStart: true}, nil)
		if !errors.Is(err, api.ErrInvalid) {
			t.Fatalf("create %q: %v, want ErrInvalid (a name may not look like an id)", name, err)
		}
	}
	if err := ValidName("deadbeefcafe1"); err != nil {
		t.Errorf("a 13-character hex name is not an id: %v", err)
	}
	// A row from before the rule (inserted directly) named like victim's id:
	// lookups and delete by id still reach victim, by name the other one.
	legacy := store.VM{ID: "aaaaaaaaaaaa", Name: victim.ID, Image: victim.Image, Kernel: victim.Kernel, VCPU: 1, MemoryMiB: 256,
		GuestIP: "172.30.9.200", MAC: "52:54:00:00:00:c8", State: StateStopped, Dir: f.layout.VM("aaaaaaaaaaaa")}
	if err := f.st.CreateVM(ctx, &legacy); err != nil {
		t.Fatal(err)
	}
	if got, err := f.svc.Get(ctx, victim.ID); err != nil || got.ID != victim.ID {
		t.Fatalf("Get(%s) = %s, %v; want the VM with that id", victim.ID, got.ID, err)
	}
	if err := f.svc.Delete(ctx, victim.ID, true); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.GetVM(ctx, legacy.ID); err != nil {
		t.Fatalf("delete by id removed the VM merely named like it: %v", err)
	}
	if _, err := f.svc.Get(ctx, "victim"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("victim still there: %v", err)
	}
}

// TestDeleteRereadsRowUnderLock: Delete must tear down what the row says
// once it holds the VM's lock, not what it read before. Here a start runs
// between Delete's first read (VM stopped, no TAP) and its lock; the TAP it
// claimed must be released and no VMM left.
func TestDeleteRereadsRowUnderLock(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	v := f.create(t, "racer")
	if _, err := f.svc.Stop(ctx, "racer", true); err != nil {
		t.Fatal(err)
	}
	if got := f.h.String(); got != "procs=0 taps=[]" {
		t.Fatalf("after stop: %s", got)
	}
	unlock := f.svc.lock(v.ID) // the "concurrent operation"
	done := make(chan error, 1)
	go func() { done <- f.svc.Delete(ctx, "racer", true) }()
	// Let Delete read the row and block on the lock.
	time.Sleep(300 * time.Millisecond)
	row, err := f.st.GetVM(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.start(ctx, &row, DefaultBootTimeout, nil); err != nil {
		unlock()
		t.Fatal(err)
	}
	if got := f.h.String(); got == "procs=0 taps=[]" {
		unlock()
		t.Fatalf("start under the lock did nothing: %s", got)
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatalf("delete: %v", err)
	}
	if got := f.h.String(); got != "procs=0 taps=[]" {
		t.Fatalf("delete tore down a stale row: left %s", got)
	}
}
