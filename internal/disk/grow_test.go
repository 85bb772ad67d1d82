package disk

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
)

// workImage makes a 64 MiB ext4 image holding /data/keep, as a work disk the
// guest wrote to.
func workImage(t *testing.T, dir string) string {
	t.Helper()
	needTools(t, "mkfs.ext4", "dumpe2fs", "debugfs", "e2fsck", "resize2fs")
	src := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(src, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "data", "keep"), []byte("written before the grow\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "work.ext4")
	if err := CreateExt4(context.Background(), system.Exec{}, img, 64<<20, "bangerwork", src); err != nil {
		t.Fatal(err)
	}
	return img
}

// imageState is what a test compares before and after: size, mode, content
// digest, file system size, whether e2fsck finds it clean, /data/keep.
func imageState(t *testing.T, img string) string {
	t.Helper()
	ctx := context.Background()
	st, err := os.Stat(img)
	if err != nil {
		return "missing: " + err.Error()
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	clean := "clean"
	if _, err := (system.Exec{}).Run(ctx, "e2fsck", "-fn", img); err != nil {
		clean = "NOT clean"
	}
	out, _ := (system.Exec{}).Run(ctx, "debugfs", "-R", "cat /data/keep", img)
	var keep []string // its banner goes to stderr, which the runner combines
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasPrefix(l, "debugfs ") {
			keep = append(keep, l)
		}
	}
	fs := "unreadable"
	if _, err := (system.Exec{}).Run(ctx, "dumpe2fs", "-h", img); err == nil {
		fs = fmt.Sprint(fsBytes(t, superblock(t, img)))
	}
	sum := sha256.Sum256(b)
	return fmt.Sprintf("size=%d mode=%v sha=%x fs=%s %s keep=%q", st.Size(), st.Mode().Perm(), sum[:6],
		fs, clean, strings.Join(keep, "\n"))
}

// leftovers lists the files in dir besides the image and its source tree.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if n := e.Name(); n != "work.ext4" && n != "tree" {
			out = append(out, n)
		}
	}
	return out
}

func TestGrowCopy(t *testing.T) {
	dir := t.TempDir()
	img := workImage(t, dir)
	ctx := context.Background()
	if err := GrowCopy(ctx, system.Exec{}, img, 256<<20); err != nil {
		t.Fatal(err)
	}
	st := imageState(t, img)
	if !strings.HasPrefix(st, "size=268435456 mode=-rw------- ") ||
		!strings.HasSuffix(st, fmt.Sprintf(" fs=%d clean keep=%q", 256<<20, "written before the grow")) {
		t.Fatalf("after grow: %s", st)
	}
	if sb := superblock(t, img); sb["Filesystem volume name"] != "bangerwork" {
		t.Fatalf("label after grow: %q", sb["Filesystem volume name"])
	}
	if l := leftovers(t, dir); len(l) != 0 {
		t.Fatalf("left behind: %v", l)
	}
	// Same size: nothing to do, nothing rewritten.
	if err := GrowCopy(ctx, system.Exec{}, img, 256<<20); err != nil {
		t.Fatal(err)
	}
	if got := imageState(t, img); got != st {
		t.Fatalf("same-size grow changed the image:\n%s\n%s", st, got)
	}
	if err := GrowCopy(ctx, system.Exec{}, img, 128<<20); !errors.Is(err, api.ErrInvalid) ||
		!strings.Contains(err.Error(), "268435456") || !strings.Contains(err.Error(), "134217728") {
		t.Fatalf("shrink: %v, want ErrInvalid naming both sizes", err)
	}
	if err := GrowCopy(ctx, system.Exec{}, filepath.Join(dir, "missing"), 1<<30); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("grow missing: %v, want ErrNotFound", err)
	}
	if err := GrowCopy(ctx, system.Exec{}, dir, 1<<30); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("grow a directory: %v, want ErrInvalid", err)
	}
}

// wreckRunner runs the real commands, except that the command named in fail
// (matched on its first arguments) first scribbles over the file it was given
// and then exits 8: the worst a failing e2fsck or resize2fs could leave.
type wreckRunner struct {
	fail string
	ran  []string
}

func (w *wreckRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	line := name + " " + strings.Join(args, " ")
	w.ran = append(w.ran, line)
	if strings.HasPrefix(line, w.fail+" ") {
		f, err := os.OpenFile(args[len(args)-1], os.O_WRONLY, 0)
		if err == nil {
			f.WriteAt(make([]byte, 64<<10), 0) // superblock and group descriptors
			f.Close()
		}
		return nil, &system.ExitError{Cmd: line, Code: 8, Output: "injected failure"}
	}
	return system.Exec{}.Run(ctx, name, args...)
}

func (w *wreckRunner) Start(context.Context, system.ProcSpec) (int, error) {
	return 0, errors.New("wreck runner: start not supported")
}

// A grow that fails at any of its commands, or is cancelled, leaves the
// original image exactly as it was and no temporary file.
func TestGrowCopyFailureKeepsOriginal(t *testing.T) {
	for _, fail := range []string{"e2fsck -fy", "resize2fs", "e2fsck -fn", "cancel"} {
		t.Run(fail, func(t *testing.T) {
			dir := t.TempDir()
			img := workImage(t, dir)
			before := imageState(t, img)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if fail == "cancel" {
				cancel()
			}
			w := &wreckRunner{fail: fail}
			err := GrowCopy(ctx, w, img, 256<<20)
			if err == nil {
				t.Fatalf("grow succeeded; ran %q", w.ran)
			}
			if fail != "cancel" && !strings.Contains(err.Error(), "injected failure") {
				t.Fatalf("error does not carry the command's: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "grow "+img+": ") {
				t.Errorf("error = %v", err)
			}
			if after := imageState(t, img); after != before {
				t.Fatalf("original changed by a failed grow:\nbefore %s\nafter  %s", before, after)
			}
			if l := leftovers(t, dir); len(l) != 0 {
				t.Fatalf("left behind: %v", l)
			}
			for _, line := range w.ran {
				if strings.HasSuffix(line, " "+img) {
					t.Errorf("ran on the original: %s", line)
				}
			}
		})
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{
		8 << 30: "8G", 64 << 20: "64M", 1536 << 10: "1536K", 1000: "1000", 0: "0", 3 << 40: "3T", (1 << 30) + 4096: "1048580K",
	} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
		if n > 0 {
			if back, err := ParseSize(FormatSize(n)); err != nil || back != n {
				t.Errorf("ParseSize(FormatSize(%d)) = %d, %v", n, back, err)
			}
		}
	}
}

func TestRemoveTemps(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"work.ext4", ".work.ext4.tmp-123", ".work.ext4.tmp-abc", ".root.ext4.tmp-1", ".work.ext4x.tmp-1"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, ".work.ext4.tmp-dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := RemoveTemps(filepath.Join(dir, "work.ext4")); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if got := strings.Join(left, " "); got != ".root.ext4.tmp-1 .work.ext4.tmp-dir .work.ext4x.tmp-1 work.ext4" {
		t.Fatalf("left: %s", got)
	}
}
