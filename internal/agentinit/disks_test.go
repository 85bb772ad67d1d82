package agentinit

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
)

func mkfsExt4(t *testing.T, path, label string) {
	t.Helper()
	testenv.RequireTools(t, "mkfs.ext4")
	args := []string{"-q", "-F"}
	if label != "" {
		args = append(args, "-L", label)
	}
	args = append(args, path, "4M")
	if _, err := (system.Exec{}).Run(context.Background(), "mkfs.ext4", args...); err != nil {
		t.Fatal(err)
	}
}

func tarImage(t *testing.T, path string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "etc/hostname", Mode: 0o644, Size: 3, Typeflag: tar.TypeReg, Format: tar.FormatUSTAR})
	tw.Write([]byte("vm\n"))
	tw.Close()
	b := append(buf.Bytes(), make([]byte, 64<<10)...)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func classifyFile(t *testing.T, p string) DiskKind {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Classify(f)
}

func TestClassifyRealFilesystems(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		label string
		want  DiskKind
	}{{"rootfs", DiskRoot}, {"bangerwork", DiskWork}, {"rootfs2", DiskUnknown}, {"", DiskUnknown}, {"exactly16charsxx", DiskUnknown}}
	for _, c := range cases {
		p := filepath.Join(dir, "fs-"+c.label)
		mkfsExt4(t, p, c.label)
		f, _ := os.Open(p)
		label, ok := Ext4Label(f)
		f.Close()
		if !ok || label != c.label {
			t.Errorf("label of %q fs = %q, %v", c.label, label, ok)
		}
		if got := classifyFile(t, p); got != c.want {
			t.Errorf("label %q: kind %v, want %v", c.label, got, c.want)
		}
	}
}

func TestClassifyOther(t *testing.T) {
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed")
	tarImage(t, seed)
	if got := classifyFile(t, seed); got != DiskSeed {
		t.Errorf("tar image: %v", got)
	}
	zero := filepath.Join(dir, "zero")
	os.WriteFile(zero, make([]byte, 8192), 0o644)
	if got := classifyFile(t, zero); got != DiskUnknown {
		t.Errorf("zeros: %v", got)
	}
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("tiny"), 0o644)
	if got := classifyFile(t, short); got != DiskUnknown {
		t.Errorf("short: %v", got)
	}
	// An ext4 magic with a label but the wrong magic byte order is not ext4.
	fake := make([]byte, 4096)
	fake[1024+56], fake[1024+57] = 0xEF, 0x53
	copy(fake[1024+120:], "rootfs")
	if got := Classify(bytes.NewReader(fake)); got != DiskUnknown {
		t.Errorf("byte-swapped magic: %v", got)
	}
	fake[1024+56], fake[1024+57] = 0x53, 0xEF
	if got := Classify(bytes.NewReader(fake)); got != DiskRoot {
		t.Errorf("hand-made superblock: %v", got)
	}
}

// ScanDisks must go by content, whatever the device order.
func TestScanDisks(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	add := func(name string, make func(string)) {
		os.Mkdir(filepath.Join(sys, name), 0o755)
		make(filepath.Join(dev, name))
	}
	add("vda", func(p string) { tarImage(t, p) })
	add("vdb", func(p string) { mkfsExt4(t, p, "bangerwork") })
	add("vdc", func(p string) { mkfsExt4(t, p, "rootfs") })
	add("vdd", func(p string) { os.WriteFile(p, make([]byte, 4096), 0o644) })
	add("loop0", func(p string) { mkfsExt4(t, p, "rootfs") }) // not a virtio disk: ignored
	got, err := ScanDisks(sys, dev)
	if err != nil {
		t.Fatal(err)
	}
	want := Disks{DiskRoot: filepath.Join(dev, "vdc"), DiskWork: filepath.Join(dev, "vdb"), DiskSeed: filepath.Join(dev, "vda")}
	if len(got) != len(want) || got[DiskRoot] != want[DiskRoot] || got[DiskWork] != want[DiskWork] || got[DiskSeed] != want[DiskSeed] {
		t.Fatalf("got %v, want %v", got, want)
	}

	add("vde", func(p string) { mkfsExt4(t, p, "rootfs") })
	if _, err := ScanDisks(sys, dev); err == nil || !strings.Contains(err.Error(), "two root disks") {
		t.Fatalf("duplicate root: err = %v", err)
	}
}

func TestScanDisksUnreadable(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	os.Mkdir(filepath.Join(sys, "vda"), 0o755) // no /dev node
	os.Mkdir(filepath.Join(sys, "vdb"), 0o755)
	mkfsExt4(t, filepath.Join(dev, "vdb"), "rootfs")
	got, err := ScanDisks(sys, dev)
	if got[DiskRoot] != filepath.Join(dev, "vdb") {
		t.Fatalf("root not found past an unreadable disk: %v", got)
	}
	if err == nil {
		t.Fatal("unreadable disk not reported")
	}
}
