//go:build e2e

package e2e

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// BenchmarkAgent compares, in one run, the guest agent's channel with SSH:
//
//	exec_agent / exec_ssh:   `banger vm exec --via agent|ssh -- true`, CLI to exit code
//	rpc:                     `banger vm show NAME --json`: the same CLI start and
//	                         one daemon round trip, no guest; exec - rpc is
//	                         the transport's share (guest_agent_s, guest_ssh_s)
//	put_agent / put_ssh:     100 MiB of stdin into `vm exec --via agent|ssh -- cat > /dev/null`
//	ready_agent / ready_ssh: `banger vm create` (returns when the guest is ready)
//	                         with the default daemon, then with bangerd
//	                         --guest-via ssh (readiness = sshd answers)
//
// and reports medians and the ratios exec_ssh/exec_agent, ready_ssh/ready_agent.
// The transfer figure is BenchmarkWorkspace's prepare (over the agent) against
// its tar_ssh baseline. Run with
// go test -tags e2e -run '^$' -bench Agent -benchtime 1x ./test/e2e/
func BenchmarkAgent(b *testing.B) {
	rounds := 3
	if s := os.Getenv("BANGER_BENCH_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	timeCLI := func(args ...string) float64 {
		t0 := time.Now()
		mustB(b, args...)
		return time.Since(t0).Seconds()
	}
	const name = "agentbench"
	var execAgent, execSSH, rpcOnly, readyAgent, readySSH, putAgent, putSSH []float64
	blob := filepath.Join(b.TempDir(), "blob")
	if err := os.WriteFile(blob, randomBytes(100<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	timePut := func(via string) float64 {
		f, err := os.Open(blob)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		cmd := E.cmd("vm", "exec", name, "--via", via, "--", "cat > /dev/null")
		cmd.Stdin = f
		t0 := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("put over %s: %v\n%s", via, err, out)
		}
		return time.Since(t0).Seconds()
	}
	b.Cleanup(func() { _, _ = E.banger("vm", "delete", "--force", name) })
	for i := 0; i < b.N; i++ {
		for r := 0; r < rounds; r++ {
			readyAgent = append(readyAgent, timeCLI("vm", "create", "--name", name))
			for range 5 {
				execAgent = append(execAgent, timeCLI("vm", "exec", name, "--via", "agent", "--", "true"))
				execSSH = append(execSSH, timeCLI("vm", "exec", name, "--via", "ssh", "--", "true"))
				rpcOnly = append(rpcOnly, timeCLI("vm", "show", name, "--json"))
			}
			if r == 0 {
				putAgent = append(putAgent, timePut("agent"))
				putSSH = append(putSSH, timePut("ssh"))
			}
			mustB(b, "vm", "delete", "--force", name)
		}
		// The same creates with a daemon that never uses the agent.
		mustB(b, "daemon", "stop")
		os.Setenv("BANGER_GUEST_VIA", "ssh")
		for r := 0; r < rounds; r++ {
			readySSH = append(readySSH, timeCLI("vm", "create", "--name", name))
			mustB(b, "vm", "delete", "--force", name)
		}
		os.Unsetenv("BANGER_GUEST_VIA")
		mustB(b, "daemon", "stop")
	}
	ea, es, ra, rs := median(execAgent), median(execSSH), median(readyAgent), median(readySSH)
	rp := median(rpcOnly)
	pa, ps := median(putAgent), median(putSSH)
	b.ReportMetric(pa, "put100M_agent_s")
	b.ReportMetric(ps, "put100M_ssh_s")
	b.ReportMetric(ps/pa, "put_ssh/agent")
	b.ReportMetric(rp, "rpc_s")
	b.ReportMetric(ea-rp, "guest_agent_s")
	b.ReportMetric(es-rp, "guest_ssh_s")
	if ea > rp {
		b.ReportMetric((es-rp)/(ea-rp), "guest_ssh/agent")
	}
	b.ReportMetric(ea, "exec_agent_s")
	b.ReportMetric(es, "exec_ssh_s")
	b.ReportMetric(ra, "ready_agent_s")
	b.ReportMetric(rs, "ready_ssh_s")
	b.ReportMetric(es/ea, "exec_ssh/agent")
	b.ReportMetric(rs/ra, "ready_ssh/agent")
	b.Logf("exec agent %v\nexec ssh %v\nrpc %v\nready agent %v\nready ssh %v", fmtAll(execAgent), fmtAll(execSSH), fmtAll(rpcOnly), fmtAll(readyAgent), fmtAll(readySSH))
}

func fmtAll(xs []float64) string {
	s := ""
	for _, x := range xs {
		s += fmt.Sprintf(" %.3f", x)
	}
	return s
}

// randomBytes is incompressible data (nothing on the way may shrink it).
func randomBytes(n int) []byte {
	r := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}
