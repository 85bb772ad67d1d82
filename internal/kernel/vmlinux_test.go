package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
)

// fakeBzImage wraps payload in a minimal x86 boot header.
func fakeBzImage(payload []byte) []byte {
	setupSects := 1
	bz := make([]byte, (setupSects+1)*512)
	bz[0x1f1] = byte(setupSects)
	copy(bz[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(bz[0x206:], 0x20f)
	binary.LittleEndian.PutUint32(bz[0x248:], 100) // payload_offset
	binary.LittleEndian.PutUint32(bz[0x24c:], uint32(len(payload)))
	bz = append(bz, make([]byte, 100)...)
	bz = append(bz, payload...)
	return append(bz, make([]byte, 64)...)
}

func withSizeTrailer(stream []byte, size int) []byte {
	return binary.LittleEndian.AppendUint32(append([]byte(nil), stream...), uint32(size))
}

func TestExtractVmlinuxGzip(t *testing.T) {
	elfData := fakeModuleELF("kernel=1", strings.Repeat("x", 5000))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(elfData)
	zw.Close()
	dir := t.TempDir()
	src := filepath.Join(dir, "vmlinuz")
	os.WriteFile(src, fakeBzImage(withSizeTrailer(gz.Bytes(), len(elfData))), 0o644)
	imp := &Importer{Runner: &fakeHost{}}
	dst := filepath.Join(dir, "vmlinux")
	if err := imp.extractVmlinux(context.Background(), src, dst, dir); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, elfData) {
		t.Fatalf("vmlinux differs (%d vs %d bytes)", len(got), len(elfData))
	}
}

func TestExtractVmlinuxRejects(t *testing.T) {
	dir := t.TempDir()
	imp := &Importer{Runner: &fakeHost{}}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("this is not an ELF file"))
	zw.Close()
	for name, img := range map[string][]byte{
		"not a bzImage":   []byte(strings.Repeat("A", 4096)),
		"unknown codec":   fakeBzImage([]byte("BZh91AY&SY")),
		"payload not ELF": fakeBzImage(gz.Bytes()),
		"payload too long": func() []byte {
			b := fakeBzImage([]byte{1, 2, 3})
			binary.LittleEndian.PutUint32(b[0x24c:], 1<<30)
			return b
		}(),
	} {
		src := filepath.Join(dir, "vmlinuz")
		os.WriteFile(src, img, 0o644)
		dst := filepath.Join(dir, "out-"+strings.ReplaceAll(name, " ", "-"))
		if err := imp.extractVmlinux(context.Background(), src, dst, dir); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if _, err := os.Stat(dst); err == nil {
			t.Errorf("%s: output written", name)
		}
	}
}

func TestLZ4BlockHandmade(t *testing.T) {
	// "abc" literal, then a match of offset 3, length 9 (overlapping), then "Z".
	block := []byte{0x35, 'a', 'b', 'c', 3, 0, 0x10, 'Z'}
	got, err := lz4Block(nil, block, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "abcabcabcabcZ" {
		t.Fatalf("got %q", got)
	}
	for name, b := range map[string][]byte{
		"zero offset":      {0x10, 'a', 0, 0, 0x00},
		"offset too far":   {0x10, 'a', 5, 0, 0x00},
		"truncated lits":   {0x50, 'a'},
		"truncated off":    {0x10, 'a', 1},
		"endless length":   {0xf0, 255, 255},
		"match past limit": {0x1f, 'a', 1, 0, 255, 255, 255, 255, 10, 0x10, 'x'},
	} {
		if _, err := lz4Block(nil, b, 1000); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A back-reference into the previous block is corrupt in legacy frames.
	if _, err := lz4Block([]byte("previous"), []byte{0x00, 3, 0, 0x10, 'x'}, 1000); err == nil {
		t.Error("cross-block reference accepted")
	}
}

// TestLZ4LegacyRealTool decodes what the real lz4 -l (the kernel's format) wrote.
func TestLZ4LegacyRealTool(t *testing.T) {
	testenv.RequireTools(t, "lz4")
	rng := rand.New(rand.NewSource(1))
	var data []byte
	words := []string{"virtio ", "kernel ", "\x00\x00\x00\x00", "banger ", "x"}
	for len(data) < 9<<20 { // > one 8 MiB legacy block
		if rng.Intn(10) == 0 {
			data = append(data, byte(rng.Intn(256)))
		} else {
			data = append(data, words[rng.Intn(len(words))]...)
		}
	}
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "in.lz4")
	os.WriteFile(in, data, 0o644)
	if _, err := (system.Exec{}).Run(context.Background(), "lz4", "-l", "-9", "-q", "-f", in, out); err != nil {
		t.Fatal(err)
	}
	comp, _ := os.ReadFile(out)
	got, err := lz4Legacy(withSizeTrailer(comp, len(data)), maxVmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("round trip differs: %d vs %d bytes", len(got), len(data))
	}
	if _, err := lz4Legacy(comp[:len(comp)/2], maxVmlinux); err == nil {
		t.Error("truncated stream accepted")
	}
	if _, err := lz4Legacy(withSizeTrailer(comp, len(data)+1), maxVmlinux); err == nil {
		t.Error("wrong size trailer accepted")
	}
	if got, err := lz4Legacy(comp, maxVmlinux); err != nil || len(got) != len(data) {
		t.Errorf("stream without trailer: %d bytes, %v", len(got), err)
	}
	if _, err := lz4Legacy(withSizeTrailer(comp, len(data)), 1<<20); err == nil {
		t.Error("limit not enforced")
	}
}

func FuzzLZ4Legacy(f *testing.F) {
	f.Add([]byte{0x02, 0x21, 0x4c, 0x18, 8, 0, 0, 0, 0x35, 'a', 'b', 'c', 3, 0, 0x10, 'Z'})
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := lz4Legacy(b, 1<<20)
		if err == nil && len(out) > 1<<20 {
			t.Fatalf("limit exceeded: %d", len(out))
		}
	})
}

// TestExtractVmlinuxBoundsTheImage: a kernel file from a catalog is read into
// memory only up to a stated limit (a 300 MiB file is refused unread).
func TestExtractVmlinuxBoundsTheImage(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "vmlinuz")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write(fakeBzImage([]byte{0x1f, 0x8b}))
	if err := f.Truncate(300 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	imp := &Importer{Runner: &fakeHost{}}
	err = imp.extractVmlinux(context.Background(), src, filepath.Join(dir, "out"), dir)
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "268435456") {
		t.Fatalf("300 MiB kernel image: %v, want ErrInvalid naming the 268435456-byte limit", err)
	}
}
