package store

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func init() {
	migrationChecks[9] = func(t *testing.T, db *sql.DB) {
		// Rows from before ran under QEMU.
		if _, err := db.Exec(`INSERT INTO vms (id, name, state, created_at, updated_at) VALUES ('v9', 'v9', 'stopped', 0, 0)`); err != nil {
			t.Fatal(err)
		}
		var vmm string
		if err := db.QueryRow(`SELECT vmm FROM vms WHERE id = 'v9'`).Scan(&vmm); err != nil {
			t.Fatal(err)
		}
		if vmm != "qemu" {
			t.Errorf("default vmm %q, want qemu", vmm)
		}
		// The CHECK holds for writers that bypass the Go validation.
		_, err := db.Exec(`INSERT INTO vms (id, name, state, vmm, created_at, updated_at) VALUES ('w9', 'w9', 'stopped', '', 0, 0)`)
		if err == nil || !strings.Contains(err.Error(), "CHECK") {
			t.Errorf("empty vmm accepted: %v", err)
		}
	}
}

func TestVMMRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	plain := VM{Name: "plain", State: StateCreating}
	if err := s.CreateVM(ctx, &plain); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetVM(ctx, "plain"); got.VMM != DefaultVMM || plain.VMM != DefaultVMM {
		t.Fatalf("unset vmm stored as %q (struct %q); want %s", got.VMM, plain.VMM, DefaultVMM)
	}
	fc := VM{Name: "fc", State: StateCreating, VMM: "firecracker"}
	if err := s.CreateVM(ctx, &fc); err != nil {
		t.Fatal(err)
	}
	fc.State = StateStopped
	if err := s.UpdateVM(ctx, &fc); err != nil {
		t.Fatal(err)
	}
	vms, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vms {
		got = append(got, v.Name+"="+v.VMM)
	}
	if strings.Join(got, " ") != "plain=qemu fc=firecracker" {
		t.Fatalf("vmms = %v", got)
	}
	for _, bad := range []string{"Qemu", "fire cracker", "../x", strings.Repeat("a", 33)} {
		v := VM{Name: "bad", State: StateCreating, VMM: bad}
		if err := s.CreateVM(ctx, &v); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("vmm %q: %v, want ErrInvalid", bad, err)
		}
	}
}
