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
	migrationChecks[4] = func(t *testing.T, db *sql.DB) {
		for _, col := range []string{"host_access", "nat_private"} {
			var dflt sql.NullString
			if err := db.QueryRow(`SELECT dflt_value FROM pragma_table_info('vms') WHERE name = ?`, col).Scan(&dflt); err != nil {
				t.Fatalf("vms.%s: %v", col, err)
			}
			if dflt.String != "0" {
				t.Errorf("vms.%s default = %q, want 0", col, dflt.String)
			}
			if _, err := db.Exec(`INSERT INTO vms (id, name, state, ` + col + `, created_at, updated_at) VALUES ('x4', 'x4', 'stopped', 2, 0, 0)`); err == nil {
				t.Errorf("%s = 2 accepted", col)
			}
		}
		// A row from before the migration reads as "no opt-in".
		var h, p int
		if _, err := db.Exec(`INSERT INTO vms (id, name, state, created_at, updated_at) VALUES ('o4', 'o4', 'stopped', 0, 0)`); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRow(`SELECT host_access, nat_private FROM vms WHERE id = 'o4'`).Scan(&h, &p); err != nil || h != 0 || p != 0 {
			t.Errorf("defaults: host_access %d nat_private %d err %v", h, p, err)
		}
	}
}

func TestNetPolicy(t *testing.T) {
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
	if p, err := s.NetPolicy(ctx, v.ID); err != nil || p != (NetPolicy{}) {
		t.Fatalf("new vm policy = %+v, %v; want all off", p, err)
	}
	want := NetPolicy{NAT: true, NATPrivate: true, HostAccess: true}
	if err := s.SetNetPolicy(ctx, v.ID, want); err != nil {
		t.Fatal(err)
	}
	v.VCPU = 2
	if err := s.UpdateVM(ctx, &v); err != nil { // must not reset the opt-ins
		t.Fatal(err)
	}
	if p, err := s.NetPolicy(ctx, v.ID); err != nil || p != want {
		t.Fatalf("policy = %+v, %v; want %+v", p, err, want)
	}
	if on, err := s.NAT(ctx, v.ID); err != nil || !on {
		t.Fatalf("NAT() = %v, %v", on, err)
	}
	if err := s.SetNetPolicy(ctx, "nope", want); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("SetNetPolicy unknown: %v", err)
	}
	if _, err := s.NetPolicy(ctx, "nope"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("NetPolicy unknown: %v", err)
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
