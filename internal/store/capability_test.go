package store

import (
	"context"
	"database/sql"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func init() {
	migrationChecks[10] = func(t *testing.T, db *sql.DB) {
		// Rows of earlier VMs: none; a row needs its VM and goes with it.
		_, err := db.Exec(`INSERT INTO vm_capabilities (vm_id, name, pos, updated_at) VALUES ('nope', 'nat', 0, 0)`)
		if err == nil || !strings.Contains(err.Error(), "FOREIGN KEY") {
			t.Errorf("a capability of no VM accepted: %v", err)
		}
		if _, err := db.Exec(`INSERT INTO vms (id, name, state, created_at, updated_at) VALUES ('v10', 'v10', 'stopped', 0, 0)`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`INSERT INTO vm_capabilities (vm_id, name, pos, updated_at) VALUES ('v10', 'nat', 0, 0)`); err != nil {
			t.Fatal(err)
		}
		var st string
		if err := db.QueryRow(`SELECT state FROM vm_capabilities WHERE vm_id = 'v10'`).Scan(&st); err != nil || st != "pending" {
			t.Errorf("default state %q %v", st, err)
		}
	}
}

func TestCapabilitiesRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	a := VM{Name: "a", State: StateCreating}
	b := VM{Name: "b", State: StateCreating}
	for _, v := range []*VM{&a, &b} {
		if err := s.CreateVM(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	// The order given at create is kept (post-start hooks run in it).
	if err := s.AddCapabilities(ctx, a.ID, []Capability{{Name: "opencode", Version: "1.2.3"}, {Name: "nat"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddCapabilities(ctx, b.ID, []Capability{{Name: "nat"}}); err != nil {
		t.Fatal(err)
	}
	// The same capability twice on one VM is refused as a whole.
	if err := s.AddCapabilities(ctx, b.ID, []Capability{{Name: "opencode"}, {Name: "nat"}}); err == nil {
		t.Fatal("a second nat on b accepted")
	}
	if err := s.SetCapabilityState(ctx, a.ID, "opencode", "failed", "boom"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Capabilities(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []Capability{{Name: "opencode", Version: "1.2.3", State: "failed", Error: "boom"}, {Name: "nat", State: "pending"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("capabilities %+v, want %+v", got, want)
	}
	if got, _ := s.Capabilities(ctx, b.ID); len(got) != 1 {
		t.Fatalf("b's capabilities %+v (the refused batch left a row?)", got)
	}
	if err := s.SetCapabilityState(ctx, b.ID, "opencode", "ready", ""); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("state of a capability b lacks: %v", err)
	}
	users, err := s.CapabilityUsers(ctx)
	if err != nil || len(users) != 3 {
		t.Fatalf("users %+v %v", users, err)
	}
	// They go with the VM.
	if err := s.DeleteVM(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if users, _ := s.CapabilityUsers(ctx); len(users) != 1 || users[0].VMName != "b" {
		t.Fatalf("after delete: %+v", users)
	}
}
