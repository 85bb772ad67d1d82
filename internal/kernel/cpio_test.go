package kernel

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
)

type cpioEntry struct {
	Name       string
	Mode       uint32
	Rmaj, Rmin uint32
	Data       string
}

// readCpio is an independent newc reader for round-trip tests.
func readCpio(t *testing.T, data []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	align := func() { off = (off + 3) &^ 3 }
	for {
		if off+110 > len(data) {
			t.Fatalf("truncated header at %d", off)
		}
		h := string(data[off : off+110])
		if h[:6] != "070701" {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(h[6+8*i:14+8*i], 16, 32)
			if err != nil {
				t.Fatalf("field %d: %v", i, err)
			}
			return uint32(v)
		}
		mode, size, rmaj, rmin, nsize := field(1), field(6), field(9), field(10), field(11)
		off += 110
		name := string(data[off : off+int(nsize)-1])
		if data[off+int(nsize)-1] != 0 {
			t.Fatalf("name %q not NUL-terminated", name)
		}
		off += int(nsize)
		align()
		if name == "TRAILER!!!" {
			if off != len(data) {
				t.Fatalf("%d bytes after trailer", len(data)-off)
			}
			return out
		}
		body := string(data[off : off+int(size)])
		off += int(size)
		align()
		out = append(out, cpioEntry{name, mode, rmaj, rmin, body})
	}
}

func TestCpioRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	cw := newCpioWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(cw.Dir("dev", 0o755))
	must(cw.CharDev("/dev/console", 0o600, 5, 1))
	must(cw.File("init", 0o755, 5, strings.NewReader("hello")))
	must(cw.File("empty", 0o644, 0, strings.NewReader("")))
	must(cw.File("odd", 0o644, 3, strings.NewReader("abcdef"))) // only size bytes are taken
	must(cw.Close())
	if buf.Len()%4 != 0 {
		t.Fatalf("archive length %d not 4-aligned", buf.Len())
	}
	got := readCpio(t, buf.Bytes())
	want := []cpioEntry{
		{"dev", 0o040755, 0, 0, ""},
		{"dev/console", 0o020600, 5, 1, ""},
		{"init", 0o100755, 0, 0, "hello"},
		{"empty", 0o100644, 0, 0, ""},
		{"odd", 0o100644, 0, 0, "abc"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
	if err := cw.Dir("late", 0o755); err == nil {
		t.Fatal("write after close accepted")
	}
}

func TestCpioRejects(t *testing.T) {
	cw := newCpioWriter(io.Discard)
	if err := cw.Dir("", 0o755); err == nil {
		t.Error("empty name accepted")
	}
	if err := cw.Dir("a\x00b", 0o755); err == nil {
		t.Error("NUL in name accepted")
	}
	if err := cw.File("short", 0o644, 10, strings.NewReader("abc")); err == nil {
		t.Error("short reader accepted")
	}
}

// TestCpioWithRealTool checks the archive against GNU cpio's own reader.
func TestCpioWithRealTool(t *testing.T) {
	testenv.RequireTools(t, "cpio")
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	if err := os.WriteFile(agent, fakeModuleELF("x=y"), 0o755); err != nil {
		t.Fatal(err)
	}
	ko := filepath.Join(dir, "virtio.ko")
	if err := os.WriteFile(ko, fakeModuleELF("name=virtio"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "initramfs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := BuildInitramfs(f, agent, []Module{{Name: "virtio", Path: ko}}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := system.Exec{}.Run(context.Background(), "cpio", "-t", "-F", img)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" && !strings.HasSuffix(l, "blocks") && !strings.HasSuffix(l, "block") {
			names = append(names, l)
		}
	}
	sort.Strings(names)
	want := "dev dev/console etc etc/banger etc/banger/modules init lib lib/modules lib/modules/virtio.ko newroot proc sys"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("cpio -t:\n got %s\nwant %s", got, want)
	}
	// Extract and compare contents byte for byte.
	x := filepath.Join(dir, "x")
	os.Mkdir(x, 0o755)
	if _, err := (system.Exec{}).Run(context.Background(), "cpio", "-i", "-d", "--no-absolute-filenames", "-D", x, "-F", img, "init", "etc/banger/modules"); err != nil {
		t.Fatal(err)
	}
	gotAgent, _ := os.ReadFile(filepath.Join(x, "init"))
	wantAgent, _ := os.ReadFile(agent)
	if !bytes.Equal(gotAgent, wantAgent) {
		t.Fatal("init differs after extraction")
	}
	list, _ := os.ReadFile(filepath.Join(x, "etc/banger/modules"))
	if string(list) != "/lib/modules/virtio.ko\n" {
		t.Fatalf("module list = %q", list)
	}
}
