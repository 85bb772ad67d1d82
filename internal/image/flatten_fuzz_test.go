package image

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/banger-dev/banger/internal/tartest"
)

// FuzzFlatten builds layers from a small script (one entry per line,
// "TYPE NAME [TARGET]", TYPE one of f d l h; "s NAME SIZE" is a sparse file of
// logical size SIZE; a line "--" starts the next layer) and flattens them
// into a root two levels below the temp dir. Whatever the entries, nothing
// may appear anywhere in the temp tree outside the root, and the files in
// the root may not add up to more than the limit.
func FuzzFlatten(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("needs root (owners)")
	}
	for _, s := range []string{
		"d a\nf a/b\nl c a\nf c/d",
		"l up ../..\nf up/escape",
		"l up ../../..\nf up/escape",
		"l abs /\nf abs/etc/x",
		"d d\nl d/l ../../outside\n--\nf d/l/x",
		"h h ../outside/x",
		"h h ../../../outside/x",
		"l s ../../..\nh h s/etc/passwd",
		"f a/.wh..wh..opq\nf .wh.a\nl a ..\nf a/a/a/x",
		"l loop loop\nf loop/x",
		"s big 314572800",
		"s a 900000\n--\ns b 900000\n--\ns c 900000",
		"l up ../../outside\ns up/big 4096",
	} {
		f.Add(s)
	}
	const maxLayer, maxTotal = 1 << 20, 2 << 20
	f.Fuzz(func(t *testing.T, script string) {
		base := t.TempDir()
		root := filepath.Join(base, "a", "b", "root")
		// Expected tree outside the root: these and nothing else, all empty
		// but for the path down to the root.
		expected := map[string]bool{"a": true, "a/b": true, "a/b/root": true, "outside": true, "a/outside": true, "a/b/outside": true}
		for p := range expected {
			_ = os.MkdirAll(filepath.Join(base, p), 0o755)
		}
		var layers []v1.Layer
		for _, part := range strings.Split(script, "\n--\n") {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, line := range strings.Split(part, "\n") {
				fl := strings.Fields(line)
				if len(fl) < 2 {
					continue
				}
				if fl[0] == "s" {
					size := int64(1)
					if len(fl) > 2 {
						size, _ = strconv.ParseInt(fl[2], 10, 64)
					}
					if size < 1 || size > 1<<30 || len(fl[1]) > 90 {
						continue
					}
					_ = tw.Flush()
					buf.Write(tartest.SparseEntry(tartest.PAX01, fl[1], size, []byte("x")))
					continue
				}
				h := &tar.Header{Name: fl[1], Mode: 0o755}
				if len(fl) > 2 {
					h.Linkname = fl[2]
				}
				switch fl[0] {
				case "f":
					h.Typeflag, h.Size = tar.TypeReg, 1
				case "d":
					h.Typeflag = tar.TypeDir
				case "l":
					h.Typeflag = tar.TypeSymlink
				case "h":
					h.Typeflag = tar.TypeLink
				default:
					continue
				}
				if tw.WriteHeader(h) != nil {
					continue
				}
				if h.Size == 1 {
					_, _ = tw.Write([]byte("x"))
				}
			}
			_ = tw.Close()
			layers = append(layers, static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer))
		}
		_, _ = Flatten(context.Background(), root, layers, Limits{MaxLayerBytes: maxLayer, MaxTotalBytes: maxTotal, MaxEntries: 1000}, nil, nil)

		// The whole temp tree: outside the root only the expected dirs.
		_ = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatalf("walk %s: %v", p, err)
			}
			rel, _ := filepath.Rel(base, p)
			switch {
			case rel == ".":
			case rel == "a/b/root":
				if !d.IsDir() || d.Type()&fs.ModeSymlink != 0 {
					t.Fatalf("script %q replaced the root with %v", script, d.Type())
				}
				return filepath.SkipDir
			case !expected[rel]:
				t.Fatalf("script %q wrote %s outside the root", script, rel)
			case !d.IsDir() || d.Type()&fs.ModeSymlink != 0:
				t.Fatalf("script %q replaced %s", script, rel)
			}
			return nil
		})

		// The limit: logical sizes (and allocated blocks) of distinct files.
		seen := map[uint64]bool{}
		var total int64
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return nil
			}
			st := fi.Sys().(*syscall.Stat_t)
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
			total += max(fi.Size(), st.Blocks*512)
			return nil
		})
		if total > maxTotal {
			t.Fatalf("script %q left %d bytes in the root, limit %d", script, total, maxTotal)
		}
	})
}
