//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/paths"
)

// BenchmarkCreateDisks compares, in one run on the harness's state dir
// (this host: ext4, no FICLONE), N `banger vm create --no-start` in a row
// (BANGER_BENCH_CREATES, default 100) made
//
//	overlay: the default method, a qcow2 overlay on the image's file
//	copy:    bangerd --disk-clone copy (BANGER_DISK_CLONE=copy), the full
//	         hole-preserving copy every create made before overlays
//
// and reports per method the median seconds of one create, the seconds of
// all N, the space the N root disks take (allocated blocks) and the space
// the N VM directories take (root + work + seed disks, host key), and the
// ratios copy/overlay. The VMs are deleted after each method. Then one VM
// with an overlay is booted and stopped, and its root disk measured. Run with
// go test -tags e2e -run '^$' -bench CreateDisks -benchtime 1x ./test/e2e/
// (several minutes and, for the copy baseline, N × the image's data on disk:
// not part of the default e2e run, which runs no benchmark).
func BenchmarkCreateDisks(b *testing.B) {
	n := 100
	if s := os.Getenv("BANGER_BENCH_CREATES"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			b.Fatalf("BANGER_BENCH_CREATES=%q", s)
		}
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(E.stateDir, &sfs); err != nil {
		b.Fatal(err)
	}
	b.Logf("state dir %s: file system magic %#x (ext4 0xef53), %d creates per method", E.stateDir, sfs.Type, n)
	if sfs.Type != unix.EXT4_SUPER_MAGIC {
		b.Logf("not ext4: where FICLONE works both methods make reflinks and the comparison says nothing")
	}
	defer os.Unsetenv("BANGER_DISK_CLONE")
	type result struct {
		method           string
		perCreate        []float64
		total            float64
		rootBytes, bytes int64
	}
	var res []result
	for i := 0; i < b.N; i++ {
		for _, m := range []struct{ name, env, want string }{
			{"overlay", "", "qcow2-overlay"},
			{"copy", "copy", "sparse-copy"},
		} {
			// A daemon of the method's own: the CLI auto-starts it with this env.
			mustB(b, "daemon", "stop")
			if m.env == "" {
				os.Unsetenv("BANGER_DISK_CLONE")
			} else {
				os.Setenv("BANGER_DISK_CLONE", m.env)
			}
			mustB(b, "vm", "list")
			r := result{method: m.name}
			names := make([]string, 0, n)
			t0 := time.Now()
			for j := 0; j < n; j++ {
				name := fmt.Sprintf("cd-%s-%d", m.name, j)
				t1 := time.Now()
				mustB(b, "vm", "create", "--no-start", "--name", name)
				r.perCreate = append(r.perCreate, time.Since(t1).Seconds())
				names = append(names, name)
			}
			r.total = time.Since(t0).Seconds()
			if got := cloneMethod(b, names[0]); got != m.want {
				b.Fatalf("%s: vm create made a %q root disk, want %q", m.name, got, m.want)
			}
			r.rootBytes, r.bytes = vmDirsAllocated(b, names)
			for k := 0; k < len(names); k += 25 {
				mustB(b, append([]string{"vm", "delete"}, names[k:min(k+25, len(names))]...)...)
			}
			res = append(res, r)
			b.Logf("%s: %d creates in %.1fs (median %.3fs each), root disks %.1f MiB, vm dirs %.1f MiB",
				m.name, n, r.total, median(r.perCreate), mib(r.rootBytes), mib(r.bytes))
		}
	}
	// What an overlay grows to once its guest has booted (journal, logs,
	// first-boot writes) and shut down cleanly.
	mustB(b, "daemon", "stop")
	os.Unsetenv("BANGER_DISK_CLONE")
	mustB(b, "vm", "create", "--name", "cd-boot")
	mustB(b, "vm", "stop", "cd-boot")
	booted, _ := vmDirsAllocated(b, []string{"cd-boot"})
	mustB(b, "vm", "delete", "cd-boot")
	b.Logf("overlay of a vm booted once and stopped: %.1f MiB", mib(booted))
	mustB(b, "daemon", "stop")
	ov, cp := res[len(res)-2], res[len(res)-1]
	b.ReportMetric(mib(booted), "overlay_root_booted_MiB")
	b.ReportMetric(median(ov.perCreate), "overlay_create_s")
	b.ReportMetric(median(cp.perCreate), "copy_create_s")
	b.ReportMetric(ov.total, "overlay_all_s")
	b.ReportMetric(cp.total, "copy_all_s")
	b.ReportMetric(mib(ov.rootBytes), "overlay_root_MiB")
	b.ReportMetric(mib(cp.rootBytes), "copy_root_MiB")
	b.ReportMetric(mib(ov.bytes), "overlay_vmdirs_MiB")
	b.ReportMetric(mib(cp.bytes), "copy_vmdirs_MiB")
	b.ReportMetric(cp.total/ov.total, "time_copy/overlay")
	b.ReportMetric(float64(cp.rootBytes)/float64(max(ov.rootBytes, 1)), "root_space_copy/overlay")
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func cloneMethod(b *testing.B, name string) string {
	b.Helper()
	r := E.bangerRes("vm", "show", name, "--json")
	var v struct {
		CloneMethod string `json:"clone_method"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil {
		b.Fatalf("vm show %s: %d %s %s", name, r.code, r.stdout, r.stderr)
	}
	return v.CloneMethod
}

// vmDirsAllocated sums the allocated blocks of the named VMs' root disks and
// of everything in their directories.
func vmDirsAllocated(b *testing.B, names []string) (root, all int64) {
	b.Helper()
	unix.Sync()
	for _, name := range names {
		r := E.bangerRes("vm", "show", name, "--json")
		var v vmView
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil || v.Dir == "" {
			b.Fatalf("vm show %s: %d %s %s", name, r.code, r.stdout, r.stderr)
		}
		err := filepath.WalkDir(v.Dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			all += st.Blocks * 512
			if d.Name() == paths.VMRootFile {
				root += st.Blocks * 512
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return root, all
}
