package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// fakeClock hands out strictly increasing times.
func fakeClock(s *Store) {
	var mu sync.Mutex
	t := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	s.now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t = t.Add(time.Second)
		return t
	}
}

func TestOpenPragmasAndMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "banger.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var mode string
	var fk, busy int
	if err := s.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q (%v), want wal", mode, err)
	}
	if err := s.db.QueryRow(`PRAGMA foreign_keys`).Scan(&fk); err != nil || fk != 1 {
		t.Errorf("foreign_keys = %d (%v)", fk, err)
	}
	if err := s.db.QueryRow(`PRAGMA busy_timeout`).Scan(&busy); err != nil || busy != int(busyTimeout.Milliseconds()) {
		t.Errorf("busy_timeout = %d (%v)", busy, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("db file mode = %v (%v), want 0600", fi.Mode(), err)
	}
}

// Paths with URI metacharacters must name the file, not leak into the query.
func TestOpenOddPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "we?ird #dir%20", "b&x=1.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at the given path: %v", err)
	}
}

func TestVMCRUD(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	fakeClock(s)

	vm := VM{
		Name: "web", Image: "debian-12", Kernel: "6.1", VCPU: 2, MemoryMiB: 1024,
		DiskBytes: 4 << 30, WorkDiskBytes: 8 << 30, GuestIP: "172.30.0.2", MAC: "02:00:00:00:00:02",
		State: StateCreating, CloneMethod: CloneReflink, Dir: "/state/vms/x",
	}
	if err := s.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	if len(vm.ID) != 16 || vm.CreatedAt.IsZero() || !vm.UpdatedAt.Equal(vm.CreatedAt) {
		t.Fatalf("create did not fill id/timestamps: %+v", vm)
	}
	byName, err := s.GetVM(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(byName, vm) {
		t.Fatalf("read back\n got %+v\nwant %+v", byName, vm)
	}
	byID, err := s.GetVM(ctx, vm.ID)
	if err != nil || byID.ID != vm.ID {
		t.Fatalf("get by id: %+v %v", byID, err)
	}

	vm.State = StateRunning
	vm.Tap = "tap3"
	vm.LastError = ""
	created := vm.CreatedAt
	if err := s.UpdateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetVM(ctx, vm.ID)
	if got.State != StateRunning || got.Tap != "tap3" || !got.CreatedAt.Equal(created) || !got.UpdatedAt.After(created) {
		t.Fatalf("after update: %+v", got)
	}
	if !reflect.DeepEqual(got, vm) {
		t.Fatalf("update result differs from row\n got %+v\nwant %+v", got, vm)
	}

	second := VM{Name: "db", State: StateStopped, GuestIP: "172.30.0.3"}
	if err := s.CreateVM(ctx, &second); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListVMs(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "web" || list[1].Name != "db" {
		t.Fatalf("list = %+v, %v", list, err)
	}
	ips, err := s.UsedIPs(ctx)
	if err != nil || !reflect.DeepEqual(ips, []string{"172.30.0.2", "172.30.0.3"}) {
		t.Fatalf("used ips = %v, %v", ips, err)
	}

	if err := s.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetVM(ctx, "web"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if err := s.DeleteVM(ctx, vm.ID); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	if ips, _ := s.UsedIPs(ctx); !reflect.DeepEqual(ips, []string{"172.30.0.3"}) {
		t.Fatalf("ip not released: %v", ips)
	}
}

// An id that equals another VM's name resolves to the VM with that id.
func TestGetVMIDWins(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	a := VM{ID: "aaaa", Name: "first", State: StateStopped}
	b := VM{ID: "bbbb", Name: "aaaa", State: StateStopped}
	for _, v := range []*VM{&a, &b} {
		if err := s.CreateVM(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.GetVM(ctx, "aaaa")
	if err != nil || got.Name != "first" {
		t.Fatalf("GetVM(aaaa) = %+v, %v; want the VM whose id is aaaa", got, err)
	}
}

func TestVMConflictsAndNotFound(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	vm := VM{Name: "web", State: StateStopped, GuestIP: "10.0.0.2", MAC: "m1", Tap: "tap0"}
	if err := s.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	for name, dup := range map[string]VM{
		"name": {Name: "web", State: StateStopped},
		"id":   {ID: vm.ID, Name: "other", State: StateStopped},
		"ip":   {Name: "b", State: StateStopped, GuestIP: "10.0.0.2"},
		"mac":  {Name: "c", State: StateStopped, MAC: "m1"},
		"tap":  {Name: "d", State: StateStopped, Tap: "tap0"},
	} {
		err := s.CreateVM(ctx, &dup)
		if !errors.Is(err, api.ErrExists) {
			t.Errorf("duplicate %s: err = %v, want ErrExists", name, err)
		}
	}
	// Renaming onto a taken name is a conflict too.
	other := VM{Name: "other", State: StateStopped}
	if err := s.CreateVM(ctx, &other); err != nil {
		t.Fatal(err)
	}
	other.Name = "web"
	if err := s.UpdateVM(ctx, &other); !errors.Is(err, api.ErrExists) {
		t.Fatalf("rename onto taken name: %v", err)
	}
	ghost := VM{ID: "nope", Name: "ghost", State: StateStopped}
	if err := s.UpdateVM(ctx, &ghost); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("update unknown: %v", err)
	}
	if _, err := s.GetVM(ctx, "ghost"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
	// Several VMs may have no IP/MAC/TAP yet.
	for _, n := range []string{"x1", "x2"} {
		if err := s.CreateVM(ctx, &VM{Name: n, State: StateCreating}); err != nil {
			t.Fatalf("empty ip/mac/tap treated as taken: %v", err)
		}
	}
}

func TestVMValidation(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	for name, vm := range map[string]VM{
		"empty name":    {State: StateStopped},
		"bad state":     {Name: "a", State: "paused"},
		"no state":      {Name: "a"},
		"negative vcpu": {Name: "a", State: StateStopped, VCPU: -1},
		"negative disk": {Name: "a", State: StateStopped, DiskBytes: -5},
	} {
		if err := s.CreateVM(ctx, &vm); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
	if vms, _ := s.ListVMs(ctx); len(vms) != 0 {
		t.Fatalf("invalid VMs stored: %+v", vms)
	}
}

// Hostile strings are data, never SQL.
func TestHostileNames(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	evil := `x'); DROP TABLE vms; --`
	vm := VM{Name: evil, State: StateStopped, Dir: "/tmp/\x00nul"}
	if err := s.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, evil)
	if err != nil || got.Name != evil || got.Dir != vm.Dir {
		t.Fatalf("got %+v, %v", got, err)
	}
	if _, err := s.GetVM(ctx, `' OR 1=1 --`); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("injection matched a row: %v", err)
	}
}

func TestKernelCRUD(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	fakeClock(s)
	k := Kernel{Name: "deb-6.1", Version: "6.1.0-28", Source: "deb", Path: "/k/vmlinuz", Initrd: "/k/initrd", SHA256: "ab"}
	if err := s.CreateKernel(ctx, &k); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetKernel(ctx, "deb-6.1")
	if err != nil || !reflect.DeepEqual(got, k) {
		t.Fatalf("got %+v %v, want %+v", got, err, k)
	}
	if err := s.CreateKernel(ctx, &Kernel{Name: "deb-6.1"}); !errors.Is(err, api.ErrExists) {
		t.Fatalf("dup kernel: %v", err)
	}
	if err := s.CreateKernel(ctx, &Kernel{}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("empty kernel name: %v", err)
	}
	k2 := Kernel{Name: "boot"}
	if err := s.CreateKernel(ctx, &k2); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListKernels(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "deb-6.1" || list[1].Name != "boot" {
		t.Fatalf("list = %+v %v", list, err)
	}
	if err := s.DeleteKernel(ctx, "deb-6.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetKernel(ctx, "deb-6.1"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("get deleted kernel: %v", err)
	}
	if err := s.DeleteKernel(ctx, "deb-6.1"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("delete missing kernel: %v", err)
	}
}

func TestImageCRUD(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	fakeClock(s)
	img := Image{Name: "debian", Source: "docker.io/library/debian:12", Path: "/i/rootfs.ext4", KernelRef: "deb-6.1", SizeBytes: 2 << 30}
	if err := s.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetImage(ctx, "debian")
	if err != nil || !reflect.DeepEqual(got, img) {
		t.Fatalf("got %+v %v, want %+v", got, err, img)
	}
	if err := s.CreateImage(ctx, &Image{Name: "debian"}); !errors.Is(err, api.ErrExists) {
		t.Fatalf("dup image: %v", err)
	}
	if err := s.CreateImage(ctx, &Image{Name: "neg", SizeBytes: -1}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("negative size: %v", err)
	}
	img2 := Image{Name: "alpine"}
	if err := s.CreateImage(ctx, &img2); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListImages(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "debian" || list[1].Name != "alpine" {
		t.Fatalf("list = %+v %v", list, err)
	}
	if err := s.DeleteImage(ctx, "debian"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetImage(ctx, "debian"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("get deleted image: %v", err)
	}
	if err := s.DeleteImage(ctx, "nope"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("delete missing image: %v", err)
	}
}

// Writers in goroutines of one Store, and a second Store on the same file
// (a second process), must wait for each other instead of failing with
// SQLITE_BUSY.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	a, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	const perWriter = 50
	var wg sync.WaitGroup
	errc := make(chan error, 4*perWriter)
	for w, s := range []*Store{a, a, b, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				vm := VM{Name: fmt.Sprintf("w%d-%d", w, i), State: StateCreating, GuestIP: fmt.Sprintf("10.%d.0.%d", w, i)}
				if err := s.CreateVM(ctx, &vm); err != nil {
					errc <- err
					return
				}
				vm.State = StateRunning
				if err := s.UpdateVM(ctx, &vm); err != nil {
					errc <- err
					return
				}
				if _, err := s.ListVMs(ctx); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatalf("concurrent writer failed: %v", err)
	}
	vms, err := a.ListVMs(ctx)
	if err != nil || len(vms) != 4*perWriter {
		t.Fatalf("got %d vms (%v), want %d", len(vms), err, 4*perWriter)
	}
	for _, vm := range vms {
		if vm.State != StateRunning {
			t.Fatalf("lost update: %+v", vm)
		}
	}
}
