package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/vmm"
)

// snapDriver adds pause and snapshot to the fake driver; paused VMs are kept
// in the host's state by VM dir.
type snapDriver struct {
	fakeDriver
	paused  map[string]bool
	failErr error // Snapshot fails with it after writing half its files
}

func (d *snapDriver) Pause(ctx context.Context, s vmm.Spec) error {
	d.h.mu.Lock()
	defer d.h.mu.Unlock()
	d.paused[s.Dir] = true
	return nil
}
func (d *snapDriver) Resume(ctx context.Context, s vmm.Spec) error {
	d.h.mu.Lock()
	defer d.h.mu.Unlock()
	delete(d.paused, s.Dir)
	return nil
}
func (d *snapDriver) Paused(ctx context.Context, s vmm.Spec) (bool, error) {
	d.h.mu.Lock()
	defer d.h.mu.Unlock()
	return d.paused[s.Dir], nil
}
func (d *snapDriver) isPaused(dir string) bool {
	p, _ := d.Paused(context.Background(), vmm.Spec{Dir: dir})
	return p
}
func (d *snapDriver) Snapshot(ctx context.Context, s vmm.Spec, dir string) (vmm.SnapshotMeta, error) {
	if !d.isPaused(s.Dir) {
		return vmm.SnapshotMeta{}, fmt.Errorf("not paused")
	}
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte("device state"), 0o600); err != nil {
		return vmm.SnapshotMeta{}, err
	}
	if d.failErr != nil {
		return vmm.SnapshotMeta{}, d.failErr
	}
	return vmm.SnapshotMeta{VMM: "fake", VMMVersion: "1", CPU: "x", VCPU: s.VCPU, MemoryMiB: s.MemoryMiB,
		RAM: vmm.SnapshotRAMStream, Files: []string{"state"}}, nil
}
func (d *snapDriver) Restore(ctx context.Context, s vmm.Spec, dir string, meta vmm.SnapshotMeta) (int, error) {
	return 0, fmt.Errorf("restore is covered by test/e2e/snapshot_test.go")
}

func snapFixture(t *testing.T) (*fixture, *snapDriver) {
	f := newFixture(t)
	d := &snapDriver{fakeDriver: fakeDriver{f.h}, paused: map[string]bool{}}
	f.deps.Driver = d
	// A real agent of this build answers (it can re-identify restores).
	f.deps.Guest = newAgentGuest(f.h)
	f.svc = New(f.deps)
	return f, d
}

func TestPauseResume(t *testing.T) {
	f, d := snapFixture(t)
	ctx := context.Background()
	v := f.create(t, "dev")
	if _, err := f.svc.Pause(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	if !d.isPaused(v.Dir) || f.svc.View(mustVM(t, f, "dev")).State != api.StatePaused {
		t.Fatalf("after pause: driver paused %v, view %q", d.isPaused(v.Dir), f.svc.View(mustVM(t, f, "dev")).State)
	}
	// A paused guest cannot answer: guest operations are refused at once.
	if _, err := f.svc.Exec(ctx, "dev", guest.ExecRequest{Command: "true"}); !errors.Is(err, api.ErrBusy) || !strings.Contains(err.Error(), "paused") {
		t.Fatalf("exec on a paused vm: %v", err)
	}
	if _, _, err := f.svc.Agent(ctx, "dev"); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("agent on a paused vm: %v", err)
	}
	if _, err := f.svc.Resume(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	if d.isPaused(v.Dir) || f.svc.View(mustVM(t, f, "dev")).State != StateRunning {
		t.Fatal("still paused after resume")
	}
	// Stopping a paused VM lets it run first (it must sync and power off),
	// and a stopped VM carries no pause flag into its next start.
	if _, err := f.svc.Pause(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Stop(ctx, "dev", false); err != nil {
		t.Fatal(err)
	}
	if d.isPaused(v.Dir) {
		t.Fatal("stop left the vmm paused")
	}
	if st, _ := f.st.SnapshotState(ctx, v.ID); st.Paused {
		t.Fatal("pause flag survives a stop")
	}
	if _, err := f.svc.Pause(ctx, "dev"); !errors.Is(err, api.ErrNotRunning) {
		t.Fatalf("pause of a stopped vm: %v", err)
	}
}

func TestSnapshotRecordsAndRemoves(t *testing.T) {
	f, d := snapFixture(t)
	ctx := context.Background()
	v := f.create(t, "dev")
	sn, err := f.svc.Snapshot(ctx, "dev", "dev-ready", nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.isPaused(v.Dir) {
		t.Fatal("vm left paused after its snapshot")
	}
	dir := f.layout.Snapshot(sn.ID)
	for _, fn := range []string{"state", snapRootFile, snapWorkFile, snapMetaFile} {
		if _, err := os.Stat(filepath.Join(dir, fn)); err != nil {
			t.Errorf("snapshot file %s: %v", fn, err)
		}
	}
	if sn.SourceVM != "dev" || sn.Image != "default" || sn.SizeBytes <= 0 {
		t.Fatalf("row %+v", sn)
	}
	if _, err := f.svc.Snapshot(ctx, "dev", "dev-ready", nil); !errors.Is(err, api.ErrExists) {
		t.Fatalf("same name twice: %v", err)
	}
	for _, bad := range []string{"Bad", "0123456789ab", ""} {
		if _, err := f.svc.Snapshot(ctx, "dev", bad, nil); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("snapshot name %q: %v", bad, err)
		}
	}
	// A VM restored from it pins it.
	child := f.create(t, "child")
	if err := f.st.SetOrigin(ctx, child.ID, sn.ID, "raw"); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.DeleteSnapshot(ctx, "dev-ready"); !errors.Is(err, api.ErrBusy) || !strings.Contains(err.Error(), "child") {
		t.Fatalf("rm while used: %v", err)
	}
	if err := f.svc.Delete(ctx, "child", true); err != nil {
		t.Fatal(err)
	}
	// Not auto: deleting its last user keeps it.
	if _, err := f.st.GetSnapshot(ctx, sn.ID); err != nil {
		t.Fatalf("a named snapshot went with its last vm: %v", err)
	}
	if err := f.svc.DeleteSnapshot(ctx, "dev-ready"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("snapshot dir left: %v", err)
	}
}

func TestFailedSnapshotLeavesNothing(t *testing.T) {
	f, d := snapFixture(t)
	ctx := context.Background()
	v := f.create(t, "dev")
	d.failErr = errors.New("disk full")
	if _, err := f.svc.Snapshot(ctx, "dev", "s1", nil); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("snapshot: %v", err)
	}
	if d.isPaused(v.Dir) {
		t.Fatal("a failed snapshot left the vm paused")
	}
	if ents, _ := os.ReadDir(f.layout.SnapshotsDir()); len(ents) != 0 {
		t.Fatalf("a failed snapshot left %d entries", len(ents))
	}
	if sns, _ := f.st.ListSnapshots(ctx); len(sns) != 0 {
		t.Fatalf("rows: %+v", sns)
	}
}

// A daemon killed mid-snapshot leaves a .tmp- dir (or, between rename and
// insert, an unrecorded dir) and a VM paused without the user's flag;
// the next daemon's reconcile removes both dirs and resumes the VM. A VM the
// user paused stays paused.
func TestReconcileAfterInterruptedSnapshot(t *testing.T) {
	f, d := snapFixture(t)
	ctx := context.Background()
	a := f.create(t, "a")
	b := f.create(t, "b")
	if _, err := f.svc.Pause(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	kept, err := f.svc.Snapshot(ctx, "a", "kept", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = d.Pause(ctx, vmm.Spec{Dir: a.Dir}) // the dead daemon's pause
	for _, n := range []string{snapTmpPref + "0123456789ab", "ba9876543210"} {
		if err := os.MkdirAll(filepath.Join(f.layout.SnapshotsDir(), n), 0o700); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(f.layout.SnapshotsDir(), n, "state"), []byte("x"), 0o600)
	}
	next := New(f.deps)
	if err := next.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(f.layout.SnapshotsDir())
	if len(ents) != 1 || ents[0].Name() != kept.ID {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("snapshots dir after reconcile: %v, want only %s", names, kept.ID)
	}
	if d.isPaused(a.Dir) {
		t.Error("vm paused by the interrupted snapshot was not resumed")
	}
	if !d.isPaused(b.Dir) {
		t.Error("vm the user paused was resumed")
	}
}

// Restores are re-identified by the guest's agent: a VM whose agent does
// not answer is not snapshotted (it would make VMs answering as it).
func TestSnapshotNeedsTheAgent(t *testing.T) {
	f, d := snapFixture(t)
	f.deps.Guest = fakeGuest{f.h} // no agent
	f.svc = New(f.deps)
	ctx := context.Background()
	v := f.create(t, "dev")
	_, err := f.svc.Snapshot(ctx, "dev", "s1", nil)
	if err == nil || !strings.Contains(err.Error(), "agent must answer") {
		t.Fatalf("snapshot without an agent: %v", err)
	}
	if d.isPaused(v.Dir) {
		t.Fatal("vm paused")
	}
	if ents, _ := os.ReadDir(f.layout.SnapshotsDir()); len(ents) != 0 {
		t.Fatalf("%d entries left", len(ents))
	}
}

// A snapshot of a VM restored from A reads through A's files (overlays):
// A stays while that snapshot exists, and an auto snapshot is released
// along the chain once nothing uses it.
func TestSnapshotParentChain(t *testing.T) {
	f, _ := snapFixture(t)
	ctx := context.Background()
	f.create(t, "dev")
	a, err := f.svc.Snapshot(ctx, "dev", "a", nil)
	if err != nil {
		t.Fatal(err)
	}
	child := f.create(t, "child")
	if err := f.st.SetOrigin(ctx, child.ID, a.ID, "qcow2"); err != nil {
		t.Fatal(err)
	}
	b, err := f.svc.Snapshot(ctx, "child", "b", nil)
	if err != nil {
		t.Fatal(err)
	}
	if b.Parent != a.ID {
		t.Fatalf("snapshot of a restored vm: parent %q, want %q", b.Parent, a.ID)
	}
	if err := f.svc.Delete(ctx, "child", true); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.DeleteSnapshot(ctx, "a"); !errors.Is(err, api.ErrBusy) || !strings.Contains(err.Error(), `snapshot b`) {
		t.Fatalf("rm of a parent: %v", err)
	}
	// Make a an auto (fork) snapshot: removing b releases it too.
	if _, err := f.st.GetSnapshot(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := f.st.DeleteSnapshot(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	a.Auto = true
	if err := f.st.CreateSnapshot(ctx, &a); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.DeleteSnapshot(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.GetSnapshot(ctx, "a"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("auto parent kept after its last user went: %v", err)
	}
	if _, err := os.Stat(f.layout.Snapshot(a.ID)); !os.IsNotExist(err) {
		t.Fatalf("auto parent's dir kept: %v", err)
	}
}

// An auto snapshot nothing uses (its daemon died before releasing it) is
// removed at the next reconcile.
func TestReconcileReleasesUnusedAutoSnapshot(t *testing.T) {
	f, _ := snapFixture(t)
	ctx := context.Background()
	f.create(t, "dev")
	sn, err := f.svc.Snapshot(ctx, "dev", "fork-x", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.st.DeleteSnapshot(ctx, sn.ID); err != nil {
		t.Fatal(err)
	}
	sn.Auto = true
	if err := f.st.CreateSnapshot(ctx, &sn); err != nil {
		t.Fatal(err)
	}
	if err := New(f.deps).Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.GetSnapshot(ctx, sn.ID); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("unused fork snapshot kept: %v", err)
	}
}
