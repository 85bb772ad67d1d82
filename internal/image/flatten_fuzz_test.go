package image

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// FuzzFlatten builds layers from a small script (one entry per line,
// "TYPE NAME [TARGET]", TYPE one of f d l h; a line "--" starts the next
// layer) and flattens them. Whatever the entries, nothing may appear next
// to the staging root.
func FuzzFlatten(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("needs root (owners)")
	}
	for _, s := range []string{
		"d a\nf a/b\nl c a\nf c/d",
		"l up ../..\nf up/escape",
		"l abs /\nf abs/etc/x",
		"d d\nl d/l ../../outside\n--\nf d/l/x",
		"h h ../outside/x",
		"l s ../../..\nh h s/etc/passwd",
		"f a/.wh..wh..opq\nf .wh.a\nl a ..\nf a/a/a/x",
		"l loop loop\nf loop/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, script string) {
		base := t.TempDir()
		root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
		_ = os.Mkdir(root, 0o755)
		_ = os.Mkdir(outside, 0o755)
		var layers []v1.Layer
		for _, part := range strings.Split(script, "\n--\n") {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, line := range strings.Split(part, "\n") {
				fl := strings.Fields(line)
				if len(fl) < 2 {
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
		_, _ = Flatten(context.Background(), root, layers, Limits{MaxLayerBytes: 1 << 20, MaxEntries: 1000}, nil, nil)
		ents, _ := os.ReadDir(outside)
		if len(ents) > 0 {
			t.Fatalf("script %q wrote %s outside the root", script, ents[0].Name())
		}
		top, _ := os.ReadDir(base)
		if len(top) != 2 {
			t.Fatalf("script %q created %d entries next to the root", script, len(top))
		}
	})
}
