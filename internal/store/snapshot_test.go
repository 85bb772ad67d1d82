package store

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func init() {
	migrationChecks[7] = func(t *testing.T, db *sql.DB) {
		wantColumns(t, db, "snapshots", "id", "name", "source_vm", "source_vm_id", "image", "kernel", "vcpu",
			"memory_mib", "disk_bytes", "work_disk_bytes", "root_format", "work_format", "size_bytes", "meta",
			"warm_for", "auto", "parent", "created_at")
		wantIndexes(t, db, "snapshots", "snapshots_warm_for")
		if _, err := db.Exec(`INSERT INTO vms (id, name, state, created_at, updated_at) VALUES ('v7', 'v7', 'running', 0, 0)`); err != nil {
			t.Fatal(err)
		}
		var paused int
		var origin, wf string
		if err := db.QueryRow(`SELECT paused, origin_snapshot, work_format FROM vms WHERE id = 'v7'`).Scan(&paused, &origin, &wf); err != nil {
			t.Fatal(err)
		}
		if paused != 0 || origin != "" || wf != "raw" {
			t.Errorf("defaults: paused %d origin %q work_format %q", paused, origin, wf)
		}
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	sn := Snapshot{ID: "aaaaaaaaaaaa", Name: "dev-ready", SourceVM: "dev", SourceVMID: "bbbbbbbbbbbb", Image: "default",
		Kernel: "k", VCPU: 2, MemoryMiB: 1024, DiskBytes: 1 << 30, WorkDiskBytes: 8 << 30, RootFormat: "raw",
		WorkFormat: "raw", SizeBytes: 123, Meta: `{"vmm":"qemu"}`, WarmFor: "default"}
	if err := s.CreateSnapshot(ctx, &sn); err != nil {
		t.Fatal(err)
	}
	dup := sn
	dup.ID = "cccccccccccc"
	if err := s.CreateSnapshot(ctx, &dup); !errors.Is(err, api.ErrExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	for _, key := range []string{sn.ID, sn.Name} {
		got, err := s.GetSnapshot(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if got != sn {
			t.Fatalf("got %+v\nwant %+v", got, sn)
		}
	}
	if w, err := s.WarmSnapshot(ctx, "default"); err != nil || w.ID != sn.ID {
		t.Fatalf("warm: %+v %v", w, err)
	}
	if _, err := s.WarmSnapshot(ctx, "other"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("warm of other image: %v", err)
	}
	v := VM{ID: "dddddddddddd", Name: "child", Image: "default", Kernel: "k", State: "stopped", Dir: "/x"}
	if err := s.CreateVM(ctx, &v); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOrigin(ctx, v.ID, sn.ID, "qcow2"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPaused(ctx, v.ID, true); err != nil {
		t.Fatal(err)
	}
	// UpdateVM knows nothing of these columns and must not reset them.
	v.State = "running"
	if err := s.UpdateVM(ctx, &v); err != nil {
		t.Fatal(err)
	}
	st, err := s.SnapshotState(ctx, v.ID)
	if err != nil || st != (VMSnapshotState{Paused: true, OriginSnapshot: sn.ID, WorkFormat: "qcow2"}) {
		t.Fatalf("state %+v %v", st, err)
	}
	if names, err := s.VMsFrom(ctx, sn.ID); err != nil || len(names) != 1 || names[0] != "child" {
		t.Fatalf("VMsFrom %v %v", names, err)
	}
	if err := s.DeleteSnapshot(ctx, sn.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetSnapshot(ctx, sn.ID); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s.SetPaused(ctx, "nope", true); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("unknown vm: %v", err)
	}
}
