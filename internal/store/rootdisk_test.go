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
	migrationChecks[8] = func(t *testing.T, db *sql.DB) {
		// Rows from before: raw, standing alone.
		if _, err := db.Exec(`INSERT INTO vms (id, name, state, created_at, updated_at) VALUES ('v8', 'v8', 'stopped', 0, 0)`); err != nil {
			t.Fatal(err)
		}
		var format, backing string
		if err := db.QueryRow(`SELECT root_format, root_backing FROM vms WHERE id = 'v8'`).Scan(&format, &backing); err != nil {
			t.Fatal(err)
		}
		if format != "raw" || backing != "" {
			t.Errorf("defaults: root_format %q root_backing %q", format, backing)
		}
		// The CHECK holds for writers that bypass the Go validation.
		_, err := db.Exec(`INSERT INTO vms (id, name, state, root_format, created_at, updated_at) VALUES ('w8', 'w8', 'stopped', 'vmdk', 0, 0)`)
		if err == nil || !strings.Contains(err.Error(), "CHECK") {
			t.Errorf("root_format vmdk accepted: %v", err)
		}
	}
}

func TestRootFormatRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	v := VM{Name: "plain", State: StateCreating}
	if err := s.CreateVM(ctx, &v); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetVM(ctx, "plain"); got.RootFormat != FormatRaw || got.RootBacking != "" {
		t.Fatalf("unset format stored as %q backing %q; want raw, none", got.RootFormat, got.RootBacking)
	}
	v.RootFormat, v.RootBacking, v.CloneMethod = FormatQcow2, "/state/images/default/rootfs.ext4", CloneQcow2
	if err := s.UpdateVM(ctx, &v); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.RootFormat != FormatQcow2 || got.RootBacking != "/state/images/default/rootfs.ext4" || got.CloneMethod != CloneQcow2 {
		t.Fatalf("row = %+v", got)
	}
	v.RootFormat = "vmdk"
	if err := s.UpdateVM(ctx, &v); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("format vmdk: %v", err)
	}
	if err := s.CreateVM(ctx, &VM{Name: "odd", State: StateCreating, RootFormat: "qcow2,file=/etc/shadow"}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("odd format: %v", err)
	}
}

func TestImageDependents(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	const path = "/state/images/base/rootfs.ext4"
	for _, img := range []Image{{Name: "base", Path: path}, {Name: "free", Path: "/state/images/free/rootfs.ext4"}} {
		if err := s.CreateImage(ctx, &img); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(name, image, format, backing string) {
		t.Helper()
		if err := s.CreateVM(ctx, &VM{Name: name, Image: image, State: StateStopped, RootFormat: format, RootBacking: backing}); err != nil {
			t.Fatal(err)
		}
	}
	mk("copied", "base", FormatRaw, "")
	mk("layered", "base", FormatQcow2, path)
	// Made from another image but reading through base's file (a restored VM, say).
	mk("through", "other", FormatQcow2, path)

	err := s.DeleteImageUnused(ctx, "base")
	var iu *ImageInUseError
	if !errors.As(err, &iu) || !errors.Is(err, api.ErrBusy) {
		t.Fatalf("delete used image: %v", err)
	}
	if got := strings.Join(iu.VMs, ","); got != "copied,layered,through" {
		t.Errorf("users = %s", got)
	}
	if got := strings.Join(iu.Backed, ","); got != "layered,through" {
		t.Errorf("backed = %s", got)
	}
	want := `image "base" is used by vms "copied", "layered", "through" (the root disks of "layered", "through" read its file as a qcow2 overlay); delete those first`
	if err.Error() != want {
		t.Errorf("error:\n%s\nwant\n%s", err, want)
	}
	if _, err := s.GetImage(ctx, "base"); err != nil {
		t.Fatalf("refused delete removed the row: %v", err)
	}
	if err := s.DeleteImageUnused(ctx, "free"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteImageUnused(ctx, "free"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	for _, n := range []string{"copied", "layered", "through"} {
		v, _ := s.GetVM(ctx, n)
		if err := s.DeleteVM(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
	}
	// A snapshot whose root disk is a captured overlay needs the file too;
	// a raw one does not.
	for _, sn := range []Snapshot{
		{ID: "s1", Name: "warm", Image: "base", RootFormat: FormatQcow2, WorkFormat: FormatRaw, Meta: "{}"},
		{ID: "s2", Name: "flat", Image: "base", RootFormat: FormatRaw, WorkFormat: FormatRaw, Meta: "{}"},
	} {
		if err := s.CreateSnapshot(ctx, &sn); err != nil {
			t.Fatal(err)
		}
	}
	err = s.DeleteImageUnused(ctx, "base")
	if want := `image "base" is used by snapshot "warm" (qcow2 overlays of its file); delete those first`; err == nil || err.Error() != want {
		t.Fatalf("delete with a qcow2 snapshot: %v", err)
	}
	if err := s.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteImageUnused(ctx, "base"); err != nil {
		t.Fatalf("delete after the last user: %v", err)
	}
}
