package vm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
	"github.com/banger-dev/banger/internal/vmm"
)

// namedDriver is the fake driver under another name ("qemu": the VMM that
// takes qcow2), keeping every Spec it was asked to start.
type namedDriver struct {
	fakeDriver
	name  string
	mu    sync.Mutex
	specs []vmm.Spec
}

func (d *namedDriver) Name() string { return d.name }
func (d *namedDriver) Start(ctx context.Context, s vmm.Spec) (int, error) {
	d.mu.Lock()
	d.specs = append(d.specs, s)
	d.mu.Unlock()
	return d.fakeDriver.Start(ctx, s)
}

// rootDisk is the root disk of the last VMM started, as handed to it.
func (d *namedDriver) rootDisk(t *testing.T) vmm.Disk {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.specs) == 0 {
		t.Fatal("no VMM started")
	}
	return d.specs[len(d.specs)-1].Disks[0]
}

// withDriver rebuilds f's service with a driver called name and the given
// root disk method.
func (f *fixture) withDriver(name, diskClone string) *namedDriver {
	d := &namedDriver{fakeDriver: fakeDriver{f.h}, name: name}
	f.deps.Driver, f.deps.DiskClone = d, diskClone
	f.svc = New(f.deps)
	return d
}

func (f *fixture) imagePath() string {
	return filepath.Join(f.layout.Image("default"), paths.RootfsFile)
}

type overlayInfo struct {
	Format        string `json:"format"`
	Backing       string `json:"backing-filename"`
	BackingFormat string `json:"backing-filename-format"`
}

func qcow2Info(t *testing.T, path string) overlayInfo {
	t.Helper()
	out, err := system.Exec{}.Run(context.Background(), "qemu-img", "info", "--output=json", "-f", "qcow2", path)
	if err != nil {
		t.Fatal(err)
	}
	var i overlayInfo
	if err := json.Unmarshal(out, &i); err != nil {
		t.Fatal(err)
	}
	return i
}

// skipOnReflink stops a test of the overlay or copy path where the test dir
// shares extents (XFS, btrfs): Layer takes FICLONE there.
func skipOnReflink(t *testing.T, v store.VM) {
	t.Helper()
	if v.CloneMethod == string(disk.MethodReflink) {
		testenv.Missing(t, "the test dir's file system supports FICLONE; this test needs one that does not (ext4)")
	}
}

func TestRootDiskIsAQcow2OverlayUnderQEMU(t *testing.T) {
	testenv.RequireTools(t, "qemu-img")
	f := newFixture(t)
	ctx := context.Background()
	// The row says what the disk is as soon as it exists (a crash before
	// the record step leaves a row image rm and start read right).
	var atStep store.VM
	f.deps.AfterStep = func(step string) {
		if step == "root_disk" {
			atStep, _ = f.st.GetVM(ctx, "layered")
		}
	}
	drv := f.withDriver("qemu", "")
	v := f.create(t, "layered")
	skipOnReflink(t, v)
	if v.CloneMethod != store.CloneQcow2 || v.RootFormat != store.FormatQcow2 || v.RootBacking != f.imagePath() {
		t.Fatalf("vm = method %q format %q backing %q", v.CloneMethod, v.RootFormat, v.RootBacking)
	}
	if atStep.RootFormat != store.FormatQcow2 || atStep.RootBacking != f.imagePath() {
		t.Fatalf("row right after root_disk = format %q backing %q", atStep.RootFormat, atStep.RootBacking)
	}
	row, err := f.st.GetVM(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if row.CloneMethod != store.CloneQcow2 || row.RootFormat != store.FormatQcow2 || row.RootBacking != f.imagePath() {
		t.Fatalf("row = method %q format %q backing %q", row.CloneMethod, row.RootFormat, row.RootBacking)
	}
	if d := drv.rootDisk(t); d.Format != disk.FormatQcow2 || d.Path != filepath.Join(v.Dir, paths.VMRootFile) {
		t.Fatalf("root disk handed to the VMM = %+v", d)
	}
	if i := qcow2Info(t, filepath.Join(v.Dir, paths.VMRootFile)); i.Backing != f.imagePath() || i.BackingFormat != "raw" {
		t.Fatalf("overlay = %+v", i)
	}
	if got := f.svc.View(row).CloneMethod; got != store.CloneQcow2 {
		t.Errorf("vm show says %q", got)
	}
}

func TestRootDiskIsRawOtherwise(t *testing.T) {
	for _, c := range []struct {
		name, driver, clone, disk string
	}{
		{"firecracker", "firecracker", "", ""},     // Firecracker takes raw only
		{"forced copy", "qemu", DiskCloneCopy, ""}, // bangerd --disk-clone copy
		{"grown", "qemu", "", "64M"},               // resize2fs needs raw
		{"forced copy grown", "qemu", DiskCloneCopy, "48M"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			drv := f.withDriver(c.driver, c.clone)
			v, err := f.svc.Create(context.Background(), api.CreateVMParams{Name: "plain", WorkDisk: "32M", Disk: c.disk}, nil)
			if err != nil {
				t.Fatal(err)
			}
			skipOnReflink(t, v)
			if v.CloneMethod != store.CloneSparseCopy || v.RootFormat != store.FormatRaw || v.RootBacking != "" {
				t.Fatalf("vm = method %q format %q backing %q", v.CloneMethod, v.RootFormat, v.RootBacking)
			}
			if d := drv.rootDisk(t); d.Format != disk.FormatRaw {
				t.Fatalf("root disk handed to the VMM as %q", d.Format)
			}
			st, err := os.Stat(filepath.Join(v.Dir, paths.VMRootFile))
			if err != nil {
				t.Fatal(err)
			}
			if want := max(v.DiskBytes, 32<<20); st.Size() != want {
				t.Fatalf("root disk is %d bytes, want %d", st.Size(), want)
			}
		})
	}
}

// The guest owns its root disk's bytes: a qcow2 header it writes at the
// start of a raw disk (here one naming a host file as backing) must not
// change what the VMM is told at the next boot.
func TestRawRootDiskWithAQcow2HeaderStaysRaw(t *testing.T) {
	testenv.RequireTools(t, "qemu-img")
	f := newFixture(t)
	drv := f.withDriver("qemu", DiskCloneCopy)
	ctx := context.Background()
	v := f.create(t, "hostile")
	if v.RootFormat != store.FormatRaw {
		t.Fatalf("root format %q", v.RootFormat)
	}
	hostile := filepath.Join(t.TempDir(), "h.qcow2")
	if _, err := (system.Exec{}).Run(ctx, "qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", hostile, "32M"); err != nil {
		t.Fatal(err)
	}
	hdr, err := os.ReadFile(hostile)
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenFile(filepath.Join(v.Dir, paths.VMRootFile), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.WriteAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	root.Close()
	if i := qcow2Info(t, filepath.Join(v.Dir, paths.VMRootFile)); i.Backing != "/etc/shadow" {
		t.Fatalf("the planted header does not read as qcow2: %+v", i)
	}
	if _, err := f.svc.Stop(ctx, v.Name, true); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Start(ctx, v.Name, nil); err != nil {
		t.Fatal(err)
	}
	if d := drv.rootDisk(t); d.Format != disk.FormatRaw {
		t.Fatalf("raw root disk with a qcow2 header handed to the VMM as %q", d.Format)
	}
}

// image rm between create reading the image and making the overlay: the
// create fails, leaving nothing, rather than making a disk whose backing
// file is about to go.
func TestCreateFailsWhenItsImageGoesMidway(t *testing.T) {
	testenv.RequireTools(t, "qemu-img")
	f := newFixture(t)
	f.withDriver("qemu", "")
	ctx := context.Background()
	f.deps.AfterStep = func(step string) {
		if step == "identity" {
			if err := f.st.DeleteImageUnused(ctx, "default"); !errors.As(err, new(*store.ImageInUseError)) {
				t.Errorf("image rm during create: %v", err)
			}
			// The row of the VM being made already protects the image, so
			// the race needs the image row gone by another way.
			if err := f.st.DeleteImage(ctx, "default"); err != nil {
				t.Error(err)
			}
		}
	}
	f.svc = New(f.deps)
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "late", WorkDisk: "32M"}, nil)
	if err == nil {
		skipOnReflink(t, v)
	}
	if !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("create with its image gone midway: %v", err)
	}
	if _, err := f.st.GetVM(ctx, "late"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("row left: %v", err)
	}
	ents, _ := os.ReadDir(f.layout.VMsDir())
	if len(ents) != 0 {
		t.Fatalf("vm dirs left: %v", ents)
	}
}
