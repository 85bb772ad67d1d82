package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
)

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	testenv.RequireTools(t, tools...)
}

// superblock returns dumpe2fs -h fields.
func superblock(t *testing.T, path string) map[string]string {
	t.Helper()
	out, err := system.Exec{}.Run(context.Background(), "dumpe2fs", "-h", path)
	if err != nil {
		t.Fatalf("dumpe2fs: %v", err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m
}

func fsBytes(t *testing.T, sb map[string]string) int64 {
	t.Helper()
	bc, err1 := strconv.ParseInt(sb["Block count"], 10, 64)
	bs, err2 := strconv.ParseInt(sb["Block size"], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("bad superblock: %v", sb)
	}
	return bc * bs
}

func TestCreateExt4AndGrow(t *testing.T) {
	needTools(t, "mkfs.ext4", "dumpe2fs", "debugfs", "e2fsck", "resize2fs")
	ctx := context.Background()
	r := system.Exec{}
	dir := t.TempDir()
	src := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(src, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "etc", "hello"), []byte("hi there\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "work.ext4")
	if err := CreateExt4(ctx, r, img, 64<<20, "work", src); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(img)
	if st.Size() != 64<<20 {
		t.Fatalf("image is %d bytes", st.Size())
	}
	if a := allocated(t, img); a >= 64<<20 {
		t.Fatalf("image is not sparse: %d bytes allocated", a)
	}
	sb := superblock(t, img)
	if sb["Filesystem volume name"] != "work" || fsBytes(t, sb) != 64<<20 || sb["Block size"] != "4096" {
		t.Fatalf("superblock: name %q, %d bytes, block %s", sb["Filesystem volume name"], fsBytes(t, sb), sb["Block size"])
	}
	out, err := r.Run(ctx, "debugfs", "-R", "cat /etc/hello", img)
	if err != nil || !strings.Contains(string(out), "hi there") {
		t.Fatalf("debugfs cat: %v %q", err, out)
	}
	out, err = r.Run(ctx, "debugfs", "-R", "stat /", img)
	if err != nil || !regexp.MustCompile(`User:\s+0\s+Group:\s+0`).Match(out) {
		t.Fatalf("root dir not owned by 0:0: %v %s", err, out)
	}

	if err := Grow(ctx, r, img, 256<<20); err != nil {
		t.Fatal(err)
	}
	if got := fsBytes(t, superblock(t, img)); got != 256<<20 {
		t.Fatalf("after grow the file system is %d bytes", got)
	}
	out, err = r.Run(ctx, "debugfs", "-R", "cat /etc/hello", img)
	if err != nil || !strings.Contains(string(out), "hi there") {
		t.Fatalf("content lost in grow: %v %q", err, out)
	}
	if _, err := r.Run(ctx, "e2fsck", "-fn", img); err != nil {
		t.Fatalf("file system not clean after grow: %v", err)
	}
	// Same size: nothing to do.
	if err := Grow(ctx, r, img, 256<<20); err != nil {
		t.Fatal(err)
	}
	if err := Grow(ctx, r, img, 128<<20); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("shrink: %v, want ErrInvalid", err)
	}
	if err := Grow(ctx, r, filepath.Join(dir, "missing"), 1<<30); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("grow missing: %v, want ErrNotFound", err)
	}

	// An empty image without a source tree.
	empty := filepath.Join(dir, "empty.ext4")
	if err := CreateExt4(ctx, r, empty, 16<<20, "x", ""); err != nil {
		t.Fatal(err)
	}
	if sb := superblock(t, empty); sb["Filesystem volume name"] != "x" {
		t.Fatalf("label %q", sb["Filesystem volume name"])
	}
}

// fakeRunner records commands and fails the ones listed in fail with that exit code.
type fakeRunner struct {
	fail map[string]int
	log  []string
}

func (f *fakeRunner) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	line := name + " " + strings.Join(args, " ")
	f.log = append(f.log, line)
	if code, ok := f.fail[name]; ok {
		return nil, &system.ExitError{Cmd: line, Code: code, Output: "injected failure"}
	}
	return nil, nil
}

func (f *fakeRunner) Start(context.Context, system.ProcSpec) (int, error) {
	return 0, fmt.Errorf("fake runner: start not supported")
}

func TestCreateExt4Invalid(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	cases := []struct {
		name  string
		size  int64
		label string
		src   string
	}{
		{"zero size", 0, "ok", ""},
		{"negative size", -1 << 30, "ok", ""},
		{"tiny", 4096, "ok", ""},
		{"unaligned", 64<<20 + 1, "ok", ""},
		{"empty label", 64 << 20, "", ""},
		{"long label", 64 << 20, "seventeen-chars-x", ""},
		{"label with slash", 64 << 20, "a/b", ""},
		{"label with space", 64 << 20, "a b", ""},
		{"label with newline", 64 << 20, "a\nb", ""},
		{"label not utf8", 64 << 20, "a\xff", ""},
		{"source is a file", 64 << 20, "ok", file},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeRunner{}
			err := CreateExt4(context.Background(), f, filepath.Join(dir, "img"), c.size, c.label, c.src)
			if !errors.Is(err, api.ErrInvalid) {
				t.Fatalf("err %v, want ErrInvalid", err)
			}
			if len(f.log) != 0 {
				t.Fatalf("ran %v", f.log)
			}
		})
	}
}

func TestCreateExt4FailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	f := &fakeRunner{fail: map[string]int{"mkfs.ext4": 1}}
	img := filepath.Join(dir, "img")
	if err := CreateExt4(context.Background(), f, img, 64<<20, "rootfs", dir); err == nil {
		t.Fatal("expected error")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
	want := "mkfs.ext4 -q -F -b 4096 -L rootfs -d " + dir + " -E root_owner=0:0 " + dir + "/.img.tmp-"
	if len(f.log) != 1 || !strings.HasPrefix(f.log[0], want) || !strings.HasSuffix(f.log[0], " 65536k") {
		t.Fatalf("ran %q", f.log)
	}
}

func TestGrowExitCodes(t *testing.T) {
	for _, c := range []struct {
		fail    map[string]int
		ok      bool
		grown   bool
		wantLog string
	}{
		{nil, true, true, "e2fsck -fy IMG|resize2fs IMG"},
		{map[string]int{"e2fsck": 1}, true, true, "e2fsck -fy IMG|resize2fs IMG"},
		{map[string]int{"e2fsck": 4}, false, false, "e2fsck -fy IMG"},
		{map[string]int{"e2fsck": 8}, false, false, "e2fsck -fy IMG"},
		{map[string]int{"resize2fs": 1}, false, true, "e2fsck -fy IMG|resize2fs IMG"},
	} {
		t.Run(fmt.Sprint(c.fail), func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "img")
			os.WriteFile(img, make([]byte, 4096), 0o600)
			f := &fakeRunner{fail: c.fail}
			err := Grow(context.Background(), f, img, 1<<20)
			if (err == nil) != c.ok {
				t.Fatalf("err %v, want ok=%v", err, c.ok)
			}
			if got := strings.ReplaceAll(strings.Join(f.log, "|"), img, "IMG"); got != c.wantLog {
				t.Fatalf("ran %q, want %q", got, c.wantLog)
			}
			st, _ := os.Stat(img)
			if (st.Size() == 1<<20) != c.grown {
				t.Fatalf("size %d, grown want %v", st.Size(), c.grown)
			}
		})
	}
}
