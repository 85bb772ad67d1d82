package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// migrationChecks describes, per migration version, what the schema must
// contain once that migration has run. Adding migrations/000N_*.sql without
// an entry here fails TestEveryMigrationHasACheck.
var migrationChecks = map[int]func(t *testing.T, db *sql.DB){
	1: func(t *testing.T, db *sql.DB) {
		wantColumns(t, db, "vms", "id", "name", "image", "kernel", "vcpu", "memory_mib", "disk_bytes",
			"work_disk_bytes", "guest_ip", "mac", "tap", "state", "last_error", "clone_method", "dir",
			"created_at", "updated_at")
		wantColumns(t, db, "kernels", "name", "version", "source", "path", "initrd", "sha256", "created_at")
		wantColumns(t, db, "images", "name", "source", "path", "kernel_ref", "size_bytes", "created_at")
		wantIndexes(t, db, "vms", "vms_created", "vms_guest_ip", "vms_mac", "vms_tap")
		// The CHECK on state holds even for writers that bypass the Go validation.
		_, err := db.Exec(`INSERT INTO vms (id, name, state, created_at, updated_at) VALUES ('i', 'n', 'bogus', 0, 0)`)
		if err == nil || !strings.Contains(err.Error(), "CHECK") {
			t.Errorf("bogus state accepted: %v", err)
		}
	},
}

func wantColumns(t *testing.T, db *sql.DB, table string, want ...string) {
	t.Helper()
	rows, err := db.Query(`SELECT name FROM pragma_table_info(?)`, table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("table %s columns = %v, want %v", table, got, want)
	}
}

func wantIndexes(t *testing.T, db *sql.DB, table string, want ...string) {
	t.Helper()
	rows, err := db.Query(`SELECT name FROM pragma_index_list(?) WHERE origin = 'c'`, table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
	}
	sort.Strings(got)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("table %s indexes = %v, want %v", table, got, want)
	}
}

func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", dsn(path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestEveryMigrationHasACheck(t *testing.T) {
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 {
		t.Fatal("no migrations embedded")
	}
	for _, m := range ms {
		if migrationChecks[m.version] == nil {
			t.Errorf("migration %04d_%s has no entry in migrationChecks", m.version, m.name)
		}
	}
}

// Each migration applied on top of the previous ones, on an empty database,
// yields the schema its check expects and records its version.
func TestMigrationsOneByOne(t *testing.T) {
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	db := rawDB(t, filepath.Join(t.TempDir(), "m.db"))
	for _, m := range ms {
		if err := migrate(ctx, db, m.version); err != nil {
			t.Fatalf("migrate to %d: %v", m.version, err)
		}
		v, err := schemaVersion(ctx, db, len(ms))
		if err != nil || v != m.version {
			t.Fatalf("after %04d_%s: version %d, err %v", m.version, m.name, v, err)
		}
		t.Run(m.name, func(t *testing.T) { migrationChecks[m.version](t, db) })
	}
}

func TestReopenIsNoop(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	vm := VM{Name: "keep", State: StateStopped}
	if err := s.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(ctx, path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	var n int
	if err := s.db.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	ms, _ := loadMigrations()
	if n != len(ms) {
		t.Fatalf("schema_migrations has %d rows after reopen, want %d", n, len(ms))
	}
	if got, err := s.GetVM(ctx, "keep"); err != nil || got.ID != vm.ID {
		t.Fatalf("data lost on reopen: %+v %v", got, err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)`); err != nil {
		t.Fatal(err)
	}
	s.Close()

	_, err = Open(ctx, path)
	if !errors.Is(err, ErrSchemaTooNew) || !strings.Contains(err.Error(), "999") || !strings.Contains(err.Error(), "upgrade banger") {
		t.Fatalf("err = %v, want a clear schema-too-new error", err)
	}
	// The refused database was not modified.
	var n int
	if err := rawDB(t, path).QueryRow(`SELECT COUNT(*) FROM schema_migrations WHERE version = 999`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("future row gone: n=%d err=%v", n, err)
	}
}

// Two processes starting at once must not both apply a migration.
func TestConcurrentOpenMigratesOnce(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	errc := make(chan error, 4)
	stores := make(chan *Store, 4)
	for range 4 {
		go func() {
			s, err := Open(ctx, path)
			errc <- err
			stores <- s
		}()
	}
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if s := <-stores; s != nil {
			defer s.Close()
		}
	}
	var n int
	if err := rawDB(t, path).QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	ms, _ := loadMigrations()
	if n != len(ms) {
		t.Fatalf("schema_migrations has %d rows, want %d", n, len(ms))
	}
}
