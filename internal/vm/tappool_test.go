package vm

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

func TestTapPoolReuse(t *testing.T) {
	f, fw := withFirewall(t)
	ctx := context.Background()
	if got := f.h.pool(); len(got) != 0 {
		t.Fatalf("pool before any start: %v", got)
	}
	idle, err := f.svc.Create(ctx, api.CreateVMParams{Name: "idle", WorkDisk: "32M", NoStart: true}, nil)
	if err != nil || idle.Tap != "" || len(f.h.pool()) != 0 {
		t.Fatalf("create --no-start touched the pool: tap %q pool %v err %v", idle.Tap, f.h.pool(), err)
	}
	a := f.create(t, "a")
	if a.Tap != "bgr-p0" || strings.Join(f.h.pool(), ",") != "bgr-p0,bgr-p1" {
		t.Fatalf("first start: tap %s pool %v", a.Tap, f.h.pool())
	}
	b := f.create(t, "b")
	if b.Tap != "bgr-p1" || len(f.h.pool()) != 2 {
		t.Fatalf("second start: tap %s pool %v", b.Tap, f.h.pool())
	}
	if _, err := f.svc.Stop(ctx, "a", false); err != nil {
		t.Fatal(err)
	}
	if got := mustVM(t, f, "a"); got.Tap != "" {
		t.Fatalf("stopped row still claims %s", got.Tap)
	}
	if f.h.String() != "procs=1 taps=[bgr-p1]" || len(f.h.pool()) != 2 {
		t.Fatalf("after stop: %s pool %v", f.h, f.h.pool())
	}
	c := f.create(t, "c")
	if c.Tap != "bgr-p0" {
		t.Fatalf("idle tap not reused: %s", c.Tap)
	}
	for _, n := range []string{"a", "b", "c", "idle"} {
		if err := f.svc.Delete(ctx, n, true); err != nil {
			t.Fatal(err)
		}
	}
	// The idle pool stays, down and without rules.
	if fw.String() != "" || f.h.String() != "procs=0 taps=[]" || strings.Join(f.h.pool(), ",") != "bgr-p0,bgr-p1" {
		t.Fatalf("after delete: rules %q host %s pool %v", fw, f.h, f.h.pool())
	}
	pool, err := f.svc.Pool(ctx)
	if err != nil || len(pool) != 2 || pool[0].VM != "" || pool[1].VM != "" {
		t.Fatalf("Pool = %+v, %v", pool, err)
	}
}

func TestTapPoolConcurrentStartsAndCap(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const n = poolIdleMax + 2
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = f.svc.Create(ctx, api.CreateVMParams{Name: fmt.Sprintf("c%d", i), WorkDisk: "32M"}, nil)
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("create c%d: %v", i, err)
		}
		v := mustVM(t, f, fmt.Sprintf("c%d", i))
		if v.Tap == "" || seen[v.Tap] {
			t.Fatalf("c%d: tap %q not distinct", i, v.Tap)
		}
		seen[v.Tap] = true
	}
	if len(f.h.pool()) != n {
		t.Fatalf("pool = %v", f.h.pool())
	}
	for i := range n {
		if err := f.svc.Delete(ctx, fmt.Sprintf("c%d", i), true); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.h.pool(); len(got) != poolIdleMax || f.h.String() != "procs=0 taps=[]" {
		t.Fatalf("after deleting all: pool %v host %s, want %d idle", got, f.h, poolIdleMax)
	}
}

// A daemon killed after the TAP was recorded and its rules applied, before
// the VMM ran: the restarted daemon finds the claim in the row, removes the
// rules and returns the TAP to the pool.
func TestTapPoolCrashRecovery(t *testing.T) {
	f, fw := withFirewall(t)
	ctx := context.Background()
	keep := f.create(t, "keep")
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "mid", WorkDisk: "32M", NoStart: true, NAT: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.acquireTap(ctx, &v); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.applyFirewall(ctx, v); err != nil {
		t.Fatal(err)
	}
	if got := mustVM(t, f, "mid"); got.Tap != v.Tap || v.Tap != "bgr-p1" {
		t.Fatalf("claim not durable before use: row %q, acquired %q", got.Tap, v.Tap)
	}
	// Crash here. A restarted daemon:
	svc2 := New(f.deps)
	if err := svc2.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mustVM(t, f, "mid"); got.Tap != "" || got.State != StateStopped {
		t.Fatalf("after reconcile: %+v", got)
	}
	want := fmt.Sprintf("%s ip=%s tap=%s nat=false nat_private=false host_access=false; guard %s", keep.ID, keep.GuestIP, keep.Tap, keep.Tap)
	if fw.String() != want || f.h.String() != "procs=1 taps=["+keep.Tap+"]" || len(f.h.pool()) != 2 {
		t.Fatalf("after reconcile: rules %q host %s pool %v", fw, f.h, f.h.pool())
	}
	// The recovered TAP is reused by the next start.
	got, err := svc2.Start(ctx, "mid", nil)
	if err != nil || got.Tap != "bgr-p1" {
		t.Fatalf("restart: tap %q err %v", got.Tap, err)
	}
	// A VMM that dies on its own returns its TAP to the pool.
	h := svc2.handle(got.ID)
	_ = fakeDriver{f.h}.Kill(h.PID)
	deadline := time.Now().Add(5 * time.Second)
	for mustVM(t, f, "mid").State == StateRunning {
		if time.Now().After(deadline) {
			t.Fatal("monitor did not notice")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := mustVM(t, f, "mid"); got.Tap != "" {
		t.Fatalf("dead vm still claims %q", got.Tap)
	}
	if f.h.String() != "procs=1 taps=["+keep.Tap+"]" || len(f.h.pool()) != 2 {
		t.Fatalf("after vmm death: host %s pool %v", f.h, f.h.pool())
	}
}
