package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

func init() {
	migrationChecks[5] = func(t *testing.T, db *sql.DB) {
		for col, want := range map[string]string{"idle_timeout_s": "0", "stop_reason": "''", "stopped_at": "0"} {
			var dflt sql.NullString
			if err := db.QueryRow(`SELECT dflt_value FROM pragma_table_info('vms') WHERE name = ?`, col).Scan(&dflt); err != nil {
				t.Fatalf("vms.%s: %v", col, err)
			}
			if dflt.String != want {
				t.Errorf("vms.%s default = %q, want %s", col, dflt.String, want)
			}
		}
		if _, err := db.Exec(`INSERT INTO vms (id, name, state, idle_timeout_s, created_at, updated_at) VALUES ('x5', 'x5', 'stopped', -1, 0, 0)`); err == nil {
			t.Error("idle_timeout_s = -1 accepted")
		}
		// A row from before the migration has no timeout and no stop record.
		var secs, at int64
		var reason string
		if _, err := db.Exec(`INSERT INTO vms (id, name, state, created_at, updated_at) VALUES ('o5', 'o5', 'running', 0, 0)`); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRow(`SELECT idle_timeout_s, stop_reason, stopped_at FROM vms WHERE id = 'o5'`).Scan(&secs, &reason, &at); err != nil ||
			secs != 0 || reason != "" || at != 0 {
			t.Errorf("defaults: %d %q %d %v", secs, reason, at, err)
		}
	}
}

func TestIdle(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "b.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v := VM{Name: "dev", State: StateRunning}
	other := VM{Name: "other", State: StateStopped}
	for _, vm := range []*VM{&v, &other} {
		if err := s.CreateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.Idle(ctx, v.ID); err != nil || got != (Idle{}) {
		t.Fatalf("new vm idle = %+v, %v", got, err)
	}
	if err := s.SetIdleTimeout(ctx, v.ID, 30*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.SetIdleTimeout(ctx, other.ID, time.Minute); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	if err := s.SetStopReason(ctx, v.ID, "idle for 30m0s", at); err != nil {
		t.Fatal(err)
	}
	v.VCPU = 3
	if err := s.UpdateVM(ctx, &v); err != nil { // must not reset the idle columns
		t.Fatal(err)
	}
	want := Idle{Timeout: 30 * time.Minute, StopReason: "idle for 30m0s", StoppedAt: at}
	if got, err := s.Idle(ctx, v.ID); err != nil || got != want {
		t.Fatalf("idle = %+v, %v; want %+v", got, err, want)
	}
	// Only running VMs with a timeout are watched.
	if m, err := s.IdleTimeouts(ctx); err != nil || len(m) != 1 || m[v.ID] != 30*time.Minute {
		t.Fatalf("IdleTimeouts = %v, %v", m, err)
	}
	if err := s.SetStopReason(ctx, v.ID, "", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetIdleTimeout(ctx, v.ID, 0); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Idle(ctx, v.ID); err != nil || got != (Idle{}) {
		t.Fatalf("cleared idle = %+v, %v", got, err)
	}
	for _, d := range []time.Duration{-time.Second, 1500 * time.Millisecond, MaxIdleTimeout + time.Second} {
		if err := s.SetIdleTimeout(ctx, v.ID, d); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("SetIdleTimeout(%s): %v", d, err)
		}
	}
	if err := s.SetIdleTimeout(ctx, "nope", time.Minute); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("SetIdleTimeout unknown: %v", err)
	}
	if _, err := s.Idle(ctx, "nope"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Idle unknown: %v", err)
	}
}
