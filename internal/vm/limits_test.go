package vm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

// fakeLimits keeps cgroups the way cgroupfs does: a group holds its VMM's
// pid until that process is gone on the host, and cannot be removed before.
type fakeLimits struct {
	h      *host
	mu     sync.Mutex
	groups map[string]string // vm id -> "pid mem vcpu"
	fail   error
}

func (l *fakeLimits) pidOf(id string) int {
	var pid int
	fmt.Sscanf(l.groups[id], "%d", &pid)
	return pid
}

func (l *fakeLimits) Place(id string, pid, memMiB, vcpus int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail != nil {
		return l.fail
	}
	l.groups[id] = fmt.Sprintf("%d %d %d", pid, memMiB, vcpus)
	return nil
}

func (l *fakeLimits) busy(id string) bool {
	l.h.mu.Lock()
	defer l.h.mu.Unlock()
	_, alive := l.h.procs[l.pidOf(id)]
	return alive
}

func (l *fakeLimits) Remove(id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.groups[id]; ok && l.busy(id) {
		return fmt.Errorf("group vm-%s: device or resource busy", id)
	}
	delete(l.groups, id)
	return nil
}

func (l *fakeLimits) Prune(keep map[string]bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id := range l.groups {
		if !keep[id] && !l.busy(id) {
			delete(l.groups, id)
		}
	}
	return nil
}

func (l *fakeLimits) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var s []string
	for id, g := range l.groups {
		s = append(s, id+":"+g)
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}

func withLimits(t *testing.T) (*fixture, *fakeLimits) {
	f := newFixture(t)
	l := &fakeLimits{h: f.h, groups: map[string]string{}}
	f.deps.Limits = l
	f.svc = New(f.deps)
	return f, l
}

// Each VMM is placed in its group with the VM's memory and vcpus right
// after launch; the group goes when the VMM does (stop, delete).
func TestLimitsFollowTheVMM(t *testing.T) {
	f, l := withLimits(t)
	ctx := context.Background()
	v := f.create(t, "dev")
	pid := f.svc.handle(v.ID).PID
	if got, want := l.String(), fmt.Sprintf("%s:%d %d %d", v.ID, pid, v.MemoryMiB, v.VCPU); got != want {
		t.Fatalf("groups = %q, want %q", got, want)
	}
	if _, err := f.svc.Stop(ctx, "dev", false); err != nil {
		t.Fatal(err)
	}
	if got := l.String(); got != "" {
		t.Fatalf("groups after stop = %q", got)
	}
	if _, err := f.svc.Start(ctx, "dev", nil); err != nil {
		t.Fatal(err)
	}
	if got := l.String(); !strings.HasPrefix(got, v.ID+":") {
		t.Fatalf("groups after start = %q", got)
	}
	if err := f.svc.Delete(ctx, "dev", true); err != nil {
		t.Fatal(err)
	}
	if got := l.String(); got != "" {
		t.Fatalf("groups after delete = %q", got)
	}
}

// A VMM that cannot be limited is not kept: the create fails and leaves
// no process and no group.
func TestLimitsFailureKillsVMM(t *testing.T) {
	f, l := withLimits(t)
	l.fail = errors.New("write memory.max: permission denied")
	_, err := f.svc.Create(context.Background(), api.CreateVMParams{Name: "dev", WorkDisk: "32M"}, nil)
	if err == nil || !strings.Contains(err.Error(), "vmm limits: write memory.max") {
		t.Fatalf("create: %v", err)
	}
	if s := f.h.String(); s != "procs=0 taps=[]" {
		t.Errorf("host after failed create = %s", s)
	}
	if got := l.String(); got != "" {
		t.Errorf("groups = %q", got)
	}
}

// A restarted daemon keeps the groups of the VMMs it adopts and prunes
// those whose VMM is gone.
func TestLimitsReconciled(t *testing.T) {
	f, l := withLimits(t)
	live := f.create(t, "live")
	dead := f.create(t, "dead")
	f.h.mu.Lock()
	delete(f.h.procs, f.svc.handle(dead.ID).PID) // died while no daemon watched
	f.h.mu.Unlock()
	l.groups["0123456789ab"] = "99999 64 1" // a VM deleted long ago, group left
	if err := New(f.deps).Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := l.String(); !strings.HasPrefix(got, live.ID+":") || strings.Contains(got, ",") {
		t.Errorf("groups after reconcile = %q, want only %s's", got, live.ID)
	}
}
