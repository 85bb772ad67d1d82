package kernel

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/tartest"
)

// usage sums logical sizes and allocated blocks of the files under dir.
func usage(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			sz := fi.Size()
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Blocks*512 > sz {
				sz = st.Blocks * 512
			}
			n += sz
		}
		return nil
	})
	return n
}

// TestUnpackModulesRefusesSparse: a modules tarball from a catalog is
// hostile input; a sparse entry (a few hundred bytes expanding to 300 MiB)
// is refused before anything is written.
func TestUnpackModulesRefusesSparse(t *testing.T) {
	for _, kind := range tartest.Kinds {
		t.Run(kind, func(t *testing.T) {
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			_, _ = zw.Write(tartest.Archive(tartest.SparseEntry(kind, "lib/modules/6.1.0/kernel/big.ko", 300<<20, []byte("x"))))
			_ = zw.Close()
			tarPath := filepath.Join(t.TempDir(), "modules.tar.gz")
			if err := os.WriteFile(tarPath, buf.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			_, err := unpackModules(tarPath, dir, "6.1.0")
			t.Logf("%d-byte tarball: %v; %d bytes written", buf.Len(), err, usage(dir))
			if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "sparse") {
				t.Fatalf("unpack: %v, want ErrInvalid naming the sparse entry", err)
			}
			if u := usage(dir); u > 0 {
				t.Fatalf("%d bytes written", u)
			}
		})
	}
}

// TestUnpackModulesEntryLimit: a tarball of countless empty entries is cut
// off at a stated entry limit.
func TestUnpackModulesEntryLimit(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := range maxModulesEntries + 1 {
		_ = tw.WriteHeader(&tar.Header{Name: "doc/x" + strings.Repeat("x", i%7), Typeflag: tar.TypeDir, Mode: 0o755})
	}
	_ = tw.Close()
	tarPath := filepath.Join(t.TempDir(), "modules.tar")
	if err := os.WriteFile(tarPath, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := unpackModules(tarPath, t.TempDir(), "6.1.0")
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "entries") {
		t.Fatalf("unpack: %v, want an entry-limit error", err)
	}
}
