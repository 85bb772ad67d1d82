package workspace

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/tarsafe"
)

const testTip = "0123456789abcdef0123456789abcdef01234567"

// The crafted sparse entries really are sparse bombs to archive/tar: a few
// KiB of tar that it expands to the logical size.
func TestCraftedSparseTarsExpand(t *testing.T) {
	for _, format := range sparseFormats {
		data := new(tarBuilder).sparse(format, "bundle", 300<<20).bytes()
		tr := tar.NewReader(bytes.NewReader(data))
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		n, err := io.Copy(io.Discard, tr)
		if err != nil || n != 300<<20 || h.Name != "bundle" || !tarsafe.IsSparse(h) || len(data) > 10<<10 {
			t.Fatalf("%s: %d-byte tar → %q %d bytes (%v), sparse=%v", format, len(data), h.Name, n, err, tarsafe.IsSparse(h))
		}
	}
}

func smallLimits() pullLimits {
	return pullLimits{Total: 8 << 10, Bundle: 6 << 10, Patch: 2 << 10, Tip: pullTipLimit, Count: pullCountLimit}
}

// untarDir runs untarStream into a fresh directory and returns what is
// left in it.
func untarDir(t *testing.T, data []byte, l pullLimits) (map[string][]byte, []string, error) {
	t.Helper()
	dir := t.TempDir()
	files, err := untarStream(bytes.NewReader(data), dir, l)
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	return files, left, err
}

func TestUntarAcceptsThePullTar(t *testing.T) {
	data := new(tarBuilder).file("tip", testTip+"\n").file("count", "2\n").file("bundle", "# v2 git bundle\n").file("patch", "diff").bytes()
	files, left, err := untarDir(t, data, defaultPullLimits())
	if err != nil || string(files["tip"]) != testTip+"\n" || string(files["count"]) != "2\n" || string(files["patch"]) != "diff" || strings.Join(left, ",") != "bundle" {
		t.Fatalf("files %q left %v err %v", files, left, err)
	}
}

func TestUntarRefusesSparseEntries(t *testing.T) {
	for _, format := range sparseFormats {
		for _, name := range []string{"bundle", "patch", "tip"} {
			data := new(tarBuilder).file("tip", testTip+"\n").sparse(format, name, 300<<20).bytes()
			_, left, err := untarDir(t, data, defaultPullLimits())
			if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), `tar entry "`+name+`" from the guest is a sparse file: refused`) {
				t.Errorf("%s %s: err %v", format, name, err)
			}
			if len(left) != 0 {
				t.Errorf("%s %s: left %v", format, name, left)
			}
		}
	}
}

func TestUntarEnforcesLimits(t *testing.T) {
	l := smallLimits()
	big := func(n int64) string { return strings.Repeat("x", int(n)) }
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"bundle over its limit", new(tarBuilder).file("bundle", big(l.Bundle+1)).bytes(), `tar entry "bundle" from the guest exceeds the 6 KiB limit`},
		{"bundle header over its limit", new(tarBuilder).header("bundle", 1<<40).bytes(), `tar entry "bundle" from the guest exceeds the 6 KiB limit`},
		{"patch over its limit", new(tarBuilder).file("patch", big(l.Patch+1)).bytes(), `tar entry "patch" from the guest exceeds the 2 KiB limit`},
		{"tip over its limit", new(tarBuilder).file("tip", big(pullTipLimit+1)).bytes(), `tar entry "tip" from the guest exceeds the 128 bytes limit`},
		{"count over its limit", new(tarBuilder).file("count", big(pullCountLimit+1)).bytes(), `tar entry "count" from the guest exceeds the 32 bytes limit`},
		{"entries over the total", new(tarBuilder).file("patch", big(l.Patch)).file("bundle", big(l.Bundle)).bytes(), "pull stream from the guest exceeds the 8 KiB limit"},
		{"junk after the tar", append(new(tarBuilder).file("tip", testTip).bytes(), big(l.Total)...), "pull stream from the guest exceeds the 8 KiB limit"},
		{"endless headers", bytes.Repeat(checksum(rawHeader("tip", 'x', 0, false)), 64), "pull stream from the guest exceeds the 8 KiB limit"},
		{"unknown name", new(tarBuilder).file("../evil", "x").bytes(), `unexpected tar entry "../evil" from the guest: refused`},
		{"path as name", new(tarBuilder).file("/tmp/bundle", "x").bytes(), `unexpected tar entry "/tmp/bundle" from the guest: refused`},
		{"symlink", new(tarBuilder).typed("bundle", '2').bytes(), `tar entry "bundle" from the guest is not a regular file`},
		{"directory", new(tarBuilder).typed("bundle", '5').bytes(), `tar entry "bundle" from the guest is not a regular file`},
		{"twice", new(tarBuilder).file("bundle", "a").file("bundle", "b").bytes(), `tar entry "bundle" from the guest appears twice`},
	} {
		_, left, err := untarDir(t, tc.data, l)
		if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
		if len(left) != 0 {
			t.Errorf("%s: left %v", tc.name, left)
		}
	}
	// At the limits exactly: accepted.
	data := new(tarBuilder).file("bundle", big(l.Bundle)).bytes()
	if _, left, err := untarDir(t, data, l); err != nil || len(left) != 1 {
		t.Fatalf("at the limit: %v %v", err, left)
	}
	var le *guest.LimitError
	_, _, err := untarDir(t, new(tarBuilder).file("patch", big(l.Patch+1)).bytes(), l)
	if !errors.As(err, &le) || le.Limit != l.Patch {
		t.Fatalf("not a LimitError: %v", err)
	}
}

// FuzzUntar: the pull stream comes from the guest. Whatever it holds, untar
// never panics, never writes anything but dir/bundle (nothing at all when
// it fails), and never returns more than the limits allow.
func FuzzUntar(f *testing.F) {
	l := smallLimits()
	f.Add(new(tarBuilder).file("tip", testTip+"\n").file("count", "2\n").file("bundle", "# v2 git bundle\n").file("patch", "diff").bytes())
	f.Add(new(tarBuilder).file("../evil", "x").file("bundle", "b").bytes())
	for _, format := range sparseFormats {
		f.Add(new(tarBuilder).file("tip", testTip).sparse(format, "bundle", 1<<20).bytes())
	}
	f.Add(new(tarBuilder).header("bundle", 1<<20).bytes())
	f.Add(new(tarBuilder).typed("bundle", '2').file("bundle", "x").bytes())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		root := t.TempDir()
		dir := filepath.Join(root, "a", "pull")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		files, err := untarStream(bytes.NewReader(data), dir, l)
		var total int64
		werr := filepath.WalkDir(root, func(p string, d os.DirEntry, werr error) error {
			if werr != nil {
				return werr
			}
			rel, _ := filepath.Rel(root, p)
			switch rel {
			case ".", "a", filepath.Join("a", "pull"):
				if !d.IsDir() {
					t.Fatalf("%s is not a directory", rel)
				}
			case filepath.Join("a", "pull", "bundle"):
				st, serr := os.Lstat(p)
				if err != nil || serr != nil || !st.Mode().IsRegular() || st.Size() > l.Bundle {
					t.Fatalf("bundle left: %v (untar err %v)", st, err)
				}
				total += st.Size()
			default:
				t.Fatalf("untar wrote %s", rel)
			}
			return nil
		})
		if werr != nil {
			t.Fatal(werr)
		}
		if err != nil {
			return
		}
		for name, b := range files {
			lim, ok := l.entry(name)
			if !ok || int64(len(b)) > lim {
				t.Fatalf("entry %q: %d bytes", name, len(b))
			}
			total += int64(len(b))
		}
		if _, ok := files["bundle"]; ok != fileExists(filepath.Join(dir, "bundle")) {
			t.Fatalf("bundle reported %v but file exists %v", ok, fileExists(filepath.Join(dir, "bundle")))
		}
		if total > l.Total {
			t.Fatalf("%d bytes kept, limit %d", total, l.Total)
		}
	})
}

func fileExists(p string) bool { _, err := os.Lstat(p); return err == nil }
