package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func init() {
	migrationChecks[3] = func(t *testing.T, db *sql.DB) {
		var dflt sql.NullString
		if err := db.QueryRow(`SELECT dflt_value FROM pragma_table_info('vms') WHERE name = 'nat'`).Scan(&dflt); err != nil {
			t.Fatalf("vms.nat: %v", err)
		}
		if dflt.String != "0" {
			t.Errorf("vms.nat default = %q, want 0", dflt.String)
		}
		_, err := db.Exec(`INSERT INTO vms (id, name, state, nat, created_at, updated_at) VALUES ('n3', 'n3', 'stopped', 2, 0, 0)`)
		if err == nil {
			t.Error("nat = 2 accepted")
		}
	}
}

func TestNATFlag(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "b.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v := VM{Name: "web", State: StateStopped}
	if err := s.CreateVM(ctx, &v); err != nil {
		t.Fatal(err)
	}
	if on, err := s.NAT(ctx, v.ID); err != nil || on {
		t.Fatalf("new vm nat = %v, %v; want false", on, err)
	}
	if err := s.SetNAT(ctx, v.ID, true); err != nil {
		t.Fatal(err)
	}
	// UpdateVM (which knows nothing of nat) must not reset it.
	v.VCPU = 4
	if err := s.UpdateVM(ctx, &v); err != nil {
		t.Fatal(err)
	}
	if on, err := s.NAT(ctx, v.ID); err != nil || !on {
		t.Fatalf("nat = %v, %v; want true", on, err)
	}
	if err := s.SetNAT(ctx, "nope", true); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("SetNAT unknown: %v", err)
	}
	if _, err := s.NAT(ctx, "nope"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("NAT unknown: %v", err)
	}
}
