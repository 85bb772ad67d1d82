package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/tartest"
)

// TestFlattenSparseChargedAtLogicalSize: a gzip layer of a few hundred bytes
// holding a sparse entry of 300 MiB must fail against a 1 MiB limit before
// anything is written (the old code charged the bytes read from the stream
// and wrote a 300 MiB file).
func TestFlattenSparseChargedAtLogicalSize(t *testing.T) {
	needRoot(t)
	for _, kind := range tartest.Kinds {
		t.Run(kind, func(t *testing.T) {
			raw := tartest.Archive(tartest.SparseEntry(kind, "big", 300<<20, []byte("x")))
			l := static.NewLayer(gz(t, raw), types.DockerLayer)
			sz, _ := l.Size()
			dir := t.TempDir()
			_, err := Flatten(context.Background(), dir, []v1.Layer{l}, Limits{MaxLayerBytes: 1 << 20}, nil, nil)
			t.Logf("%d-byte layer -> %d bytes on disk", sz, diskUsage(t, dir))
			if err == nil || !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "1048576") {
				t.Fatalf("flatten: %v, want ErrInvalid naming the 1048576-byte limit", err)
			}
			t.Logf("error: %v", err)
			if _, err := os.Lstat(filepath.Join(dir, "big")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("partial file left: %v", err)
			}
			if used := diskUsage(t, dir); used > 1<<20 {
				t.Errorf("flatten wrote %d bytes with a 1 MiB limit", used)
			}
		})
	}
	// The image-wide limit counts logical sizes too.
	t.Run("total", func(t *testing.T) {
		mk := func() v1.Layer {
			return static.NewLayer(gz(t, tartest.Archive(tartest.SparseEntry(tartest.PAX01, "f", 3<<20, []byte("x")))), types.DockerLayer)
		}
		dir := t.TempDir()
		_, err := Flatten(context.Background(), dir, []v1.Layer{mk(), mk()}, Limits{MaxLayerBytes: 4 << 20, MaxTotalBytes: 5 << 20}, nil, nil)
		if err == nil || !strings.Contains(err.Error(), "5242880") || !strings.Contains(err.Error(), "layer 2/2") {
			t.Fatalf("flatten: %v, want the 5242880-byte image limit in layer 2", err)
		}
	})
}

// diskUsage sums the allocated blocks and logical sizes of regular files
// under dir (the larger of the two per file).
func diskUsage(t testing.TB, dir string) int64 {
	t.Helper()
	var total int64
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		n := fi.Size()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Blocks*512 > n {
			n = st.Blocks * 512
		}
		total += n
		return nil
	})
	return total
}
