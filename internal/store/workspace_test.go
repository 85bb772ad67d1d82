package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

// The check for migration 0002 registers itself here so the shared
// migrationChecks table needs no edit.
func init() {
	migrationChecks[2] = func(t *testing.T, db *sql.DB) {
		wantColumns(t, db, "workspaces", "vm_id", "host_path", "guest_path", "head", "branch", "tips",
			"files", "bytes", "prepared_at", "synced_at")
		// A workspace must belong to a VM, and goes with it.
		_, err := db.Exec(`INSERT INTO workspaces (vm_id, host_path, guest_path, prepared_at, synced_at) VALUES ('nope', '/h', '/root/r', 0, 0)`)
		if err == nil || !strings.Contains(err.Error(), "FOREIGN KEY") {
			t.Errorf("workspace without a vm accepted: %v", err)
		}
		if _, err := db.Exec(`INSERT INTO vms (id, name, state, created_at, updated_at) VALUES ('w1', 'ws', 'stopped', 0, 0)`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`INSERT INTO workspaces (vm_id, host_path, guest_path, prepared_at, synced_at) VALUES ('w1', '/h', '/root/r', 0, 0)`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`DELETE FROM vms WHERE id = 'w1'`); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := db.QueryRow(`SELECT COUNT(*) FROM workspaces`).Scan(&n); err != nil || n != 0 {
			t.Errorf("workspace outlived its vm: n=%d err=%v", n, err)
		}
	}
}

func TestWorkspaceRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "b.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vm := VM{Name: "dev", State: StateStopped}
	if err := s.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetWorkspace(ctx, vm.ID); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("missing workspace: %v", err)
	}
	w := Workspace{VMID: vm.ID, HostPath: "/home/u/src", GuestPath: "/root/repo", Head: "abc", Branch: "main",
		Tips: []string{"abc", "def"}, Files: 3, Bytes: 42}
	if err := s.PutWorkspace(ctx, &w); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetWorkspace(ctx, vm.ID)
	if err != nil || !reflect.DeepEqual(got, w) {
		t.Fatalf("got %+v %v, want %+v", got, err, w)
	}
	// A resync keeps PreparedAt and moves SyncedAt.
	w2 := got
	w2.Head = "xyz"
	if err := s.PutWorkspace(ctx, &w2); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetWorkspace(ctx, vm.ID); got.Head != "xyz" || !got.PreparedAt.Equal(w.PreparedAt) {
		t.Fatalf("after resync: %+v", got)
	}
	if err := s.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetWorkspace(ctx, vm.ID); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("workspace after vm delete: %v", err)
	}
	if err := s.PutWorkspace(ctx, &Workspace{VMID: "x"}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("invalid workspace: %v", err)
	}
}
