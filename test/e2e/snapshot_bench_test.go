//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkWarm measures, in one run:
//
//	run_cold / run_warm: `banger vm run --rm [--cold] -- true`, CLI to exit, before
//	                     and after `image warm default` (median of rounds)
//	fork_s:              `vm fork` of a running 1 GiB VM (one child) to the child
//	                     answering `vm exec -- true`; create_s is a cold
//	                     `vm create` + the same exec, its baseline
//	snapshot_s/_MiB:     `vm snapshot` of that running VM, time and size on disk;
//	                     snapshot_512M/2048M: the same of fresh 512 MiB / 2 GiB VMs
//	pss4_forks/pss4_cold: summed PSS (MiB) of the VMMs of 4 forks vs 4 cold VMs,
//	                     each after `vm exec -- true`; rss likewise
//
// go test -tags e2e -run '^$' -bench Warm -benchtime 1x ./test/e2e/
func BenchmarkWarm(b *testing.B) {
	rounds := 3
	if s := os.Getenv("BANGER_BENCH_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	timeCLI := func(args ...string) float64 {
		t0 := time.Now()
		mustB(b, args...)
		return time.Since(t0).Seconds()
	}
	var runCold, runWarm, fork, create, snap []float64
	var snapMiB float64
	var pssForks, pssCold, rssForks, rssCold float64
	const parent = "warmbench"
	cleanup := func(names ...string) {
		for _, n := range names {
			_, _ = E.banger("vm", "delete", "--force", n)
		}
	}
	b.Cleanup(func() {
		cleanup(parent, "bf-1", "bf-2", "bf-3", "bf-4", "bc-1", "bc-2", "bc-3", "bc-4", "bm-512", "bm-2048")
		_, _ = E.banger("snapshot", "rm", "default-warm")
	})
	for i := 0; i < b.N; i++ {
		for r := 0; r < rounds; r++ {
			runCold = append(runCold, timeCLI("vm", "run", "--rm", "--cold", "--", "true"))
		}
		mustB(b, "image", "warm", "default")
		for r := 0; r < rounds; r++ {
			runWarm = append(runWarm, timeCLI("vm", "run", "--rm", "--", "true"))
		}
		mustB(b, "snapshot", "rm", "default-warm")

		mustB(b, "vm", "create", "--name", parent)
		for r := 0; r < rounds; r++ {
			t0 := time.Now()
			mustB(b, "vm", "snapshot", parent, "--name", "bsnap")
			snap = append(snap, time.Since(t0).Seconds())
			var sv []struct {
				Name      string
				SizeBytes int64 `json:"size_bytes"`
			}
			_ = json.Unmarshal([]byte(bangerOutB(b, "snapshot", "list", "--json")), &sv)
			for _, s := range sv {
				if s.Name == "bsnap" {
					snapMiB = float64(s.SizeBytes) / (1 << 20)
				}
			}
			mustB(b, "snapshot", "rm", "bsnap")

			t0 = time.Now()
			mustB(b, "vm", "fork", parent, "--count", "1", "--name-prefix", "bf")
			mustB(b, "vm", "exec", "bf-1", "--", "true")
			fork = append(fork, time.Since(t0).Seconds())
			cleanup("bf-1")

			t0 = time.Now()
			mustB(b, "vm", "create", "--name", "bc-1")
			mustB(b, "vm", "exec", "bc-1", "--", "true")
			create = append(create, time.Since(t0).Seconds())
			cleanup("bc-1")
		}
		// Snapshot time and size against guest memory (what a snapshot
		// costs is the memory the guest touched, not its size).
		for _, mem := range []int{512, 2048} {
			name := fmt.Sprintf("bm-%d", mem)
			mustB(b, "vm", "create", "--name", name, "--memory", strconv.Itoa(mem))
			t0 := time.Now()
			mustB(b, "vm", "snapshot", name, "--name", "bsnap-"+strconv.Itoa(mem))
			b.ReportMetric(time.Since(t0).Seconds(), fmt.Sprintf("snapshot_%dM_s", mem))
			var sv []struct {
				Name      string
				SizeBytes int64 `json:"size_bytes"`
			}
			_ = json.Unmarshal([]byte(bangerOutB(b, "snapshot", "list", "--json")), &sv)
			for _, s := range sv {
				if s.Name == "bsnap-"+strconv.Itoa(mem) {
					b.ReportMetric(float64(s.SizeBytes)/(1<<20), fmt.Sprintf("snapshot_%dM_MiB", mem))
				}
			}
			mustB(b, "snapshot", "rm", "bsnap-"+strconv.Itoa(mem))
			cleanup(name)
		}
		// Host memory: 4 forks against 4 cold VMs.
		mustB(b, "vm", "fork", parent, "--count", "4", "--name-prefix", "bf")
		for n := 1; n <= 4; n++ {
			mustB(b, "vm", "create", "--name", fmt.Sprintf("bc-%d", n))
		}
		for n := 1; n <= 4; n++ {
			for _, p := range []string{"bf", "bc"} {
				name := fmt.Sprintf("%s-%d", p, n)
				mustB(b, "vm", "exec", name, "--", "true")
				pss, rss := vmmMemMiB(b, name)
				if p == "bf" {
					pssForks, rssForks = pssForks+pss, rssForks+rss
				} else {
					pssCold, rssCold = pssCold+pss, rssCold+rss
				}
			}
		}
		cleanup(parent, "bf-1", "bf-2", "bf-3", "bf-4", "bc-1", "bc-2", "bc-3", "bc-4")
	}
	rc, rw := median(runCold), median(runWarm)
	b.ReportMetric(rc, "run_cold_s")
	b.ReportMetric(rw, "run_warm_s")
	b.ReportMetric(rw/rc, "warm/cold")
	b.ReportMetric(median(fork), "fork_s")
	b.ReportMetric(median(create), "create_s")
	b.ReportMetric(median(fork)/median(create), "fork/create")
	b.ReportMetric(median(snap), "snapshot_s")
	b.ReportMetric(snapMiB, "snapshot_MiB")
	b.ReportMetric(pssForks, "pss4_forks_MiB")
	b.ReportMetric(pssCold, "pss4_cold_MiB")
	b.ReportMetric(rssForks, "rss4_forks_MiB")
	b.ReportMetric(rssCold, "rss4_cold_MiB")
	b.Logf("run cold %v\nrun warm %v\nfork %v\ncreate %v\nsnapshot %v", fmtAll(runCold), fmtAll(runWarm), fmtAll(fork), fmtAll(create), fmtAll(snap))
}

// vmmMemMiB is the PSS and RSS of the VM's VMM (smaps_rollup).
func vmmMemMiB(b *testing.B, name string) (pss, rss float64) {
	b.Helper()
	var v struct {
		PID int
		Dir string
	}
	if err := json.Unmarshal([]byte(bangerOutB(b, "vm", "show", name, "--json")), &v); err != nil || v.PID == 0 {
		b.Fatalf("vm show %s: pid %d %v", name, v.PID, err)
	}
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(v.PID), "smaps_rollup"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(fs[1], 64)
		switch fs[0] {
		case "Pss:":
			pss = kb / 1024
		case "Rss:":
			rss = kb / 1024
		}
	}
	return pss, rss
}

// bangerOutB is mustB returning stdout.
func bangerOutB(b *testing.B, args ...string) string {
	b.Helper()
	r := E.bangerRes(args...)
	if r.code != 0 {
		b.Fatalf("banger %v: %d\n%s\n%s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}
