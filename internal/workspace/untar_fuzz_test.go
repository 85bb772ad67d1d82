package workspace

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzUntar: the pull stream comes from the guest, so it is untrusted. untar
// must never panic, write outside dir, or return names it does not know.
func FuzzUntar(f *testing.F) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range []struct{ name, data string }{{"tip", "0123456789012345678901234567890123456789\n"}, {"count", "2\n"}, {"bundle", "# v2 git bundle\n"}, {"../evil", "x"}, {"patch", "diff"}} {
		_ = tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: tar.TypeReg})
		_, _ = tw.Write([]byte(e.data))
	}
	_ = tw.Close()
	f.Add(b.Bytes())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		files, err := untar(bytes.NewReader(data), dir)
		if err != nil {
			return
		}
		for name := range files {
			switch name {
			case "tip", "count", "bundle", "patch":
			default:
				t.Fatalf("unexpected name %q", name)
			}
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.Name() != "bundle" {
				t.Fatalf("unexpected file %s", filepath.Join(dir, e.Name()))
			}
		}
	})
}
