package image

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
)

// BenchmarkPull compares banger's pull (download, flatten, Customize,
// mkfs.ext4 -d) with what `crane export | tar -x` + `mkfs.ext4 -d` does
// (go-containerregistry's mutate.Extract piped into GNU tar), on the same
// image from the same loopback registry, in the same run. Opt in with
// BANGER_BENCH_ROOTFS_TAR=/path/to/rootfs.tar (~150-200 MB); scripts/bench.sh
// makes one from the e2e rootfs cache. Reports medians and their ratio.
func BenchmarkPull(t *testing.B) {
	src := os.Getenv("BANGER_BENCH_ROOTFS_TAR")
	if src == "" {
		t.Skip("set BANGER_BENCH_ROOTFS_TAR to a rootfs tarball")
	}
	needRoot(t)
	needTools(t, "mkfs.ext4", "tar")
	l, err := tarball.LayerFromFile(src, tarball.WithCompressedCaching)
	if err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(t)
	img, _ := mutate.AppendLayers(empty.Image, l)
	ref := reg.host + "/bench/rootfs:1"
	if err := remote.Write(mustRef(t, ref), img); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var oursS, theirsS []float64
	for round := range 2 * t.N {
		b := pullBuilder(t)
		t0 := time.Now()
		if _, err := b.Pull(ctx, PullOptions{Ref: ref, Insecure: true}, nil); err != nil {
			t.Fatal(err)
		}
		ours := time.Since(t0)

		dir := t.TempDir()
		t0 = time.Now()
		rimg, err := remote.Image(mustRef(t, ref))
		if err != nil {
			t.Fatal(err)
		}
		rc := mutate.Extract(rimg)
		var out bytes.Buffer
		code, err := system.Exec{}.Stream(ctx, system.StreamSpec{Name: "tar",
			Args:  []string{"--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", "-", "-C", dir},
			Stdin: rc, Stdout: &out, Stderr: &out})
		if err != nil || code != 0 {
			t.Fatalf("tar: %d %v %s", code, err, out.String())
		}
		_, _ = io.Copy(io.Discard, rc)
		rc.Close()
		used, _ := treeSize(dir)
		if err := disk.CreateExt4(ctx, system.Exec{}, filepath.Join(t.TempDir(), paths.RootfsFile), imageSize(used), RootfsLabel, dir); err != nil {
			t.Fatal(err)
		}
		theirs := time.Since(t0)
		t.Logf("round %d: banger pull %.2fs, crane-export|tar+mkfs %.2fs, ratio %.2f", round+1, ours.Seconds(), theirs.Seconds(), ours.Seconds()/theirs.Seconds())
		oursS, theirsS = append(oursS, ours.Seconds()), append(theirsS, theirs.Seconds())
	}
	mo, mt := medianOf(oursS), medianOf(theirsS)
	t.ReportMetric(mo, "banger_pull_s")
	t.ReportMetric(mt, "export_tar_mkfs_s")
	t.ReportMetric(mo/mt, "banger/baseline")
}

func medianOf(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	slices.Sort(s)
	return s[len(s)/2]
}
