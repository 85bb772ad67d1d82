//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"
)

// BenchmarkAgent compares, in one run, the guest agent's channel with SSH:
//
//	exec_agent / exec_ssh:   `banger vm exec --via agent|ssh -- true`, CLI to exit code
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
	var execAgent, execSSH, readyAgent, readySSH []float64
	const name = "agentbench"
	b.Cleanup(func() { _, _ = E.banger("vm", "delete", "--force", name) })
	for i := 0; i < b.N; i++ {
		for r := 0; r < rounds; r++ {
			readyAgent = append(readyAgent, timeCLI("vm", "create", "--name", name))
			for range 5 {
				execAgent = append(execAgent, timeCLI("vm", "exec", name, "--via", "agent", "--", "true"))
				execSSH = append(execSSH, timeCLI("vm", "exec", name, "--via", "ssh", "--", "true"))
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
	b.ReportMetric(ea, "exec_agent_s")
	b.ReportMetric(es, "exec_ssh_s")
	b.ReportMetric(ra, "ready_agent_s")
	b.ReportMetric(rs, "ready_ssh_s")
	b.ReportMetric(es/ea, "exec_ssh/agent")
	b.ReportMetric(rs/ra, "ready_ssh/agent")
	b.Logf("exec agent %v\nexec ssh %v\nready agent %v\nready ssh %v", fmtAll(execAgent), fmtAll(execSSH), fmtAll(readyAgent), fmtAll(readySSH))
}

func fmtAll(xs []float64) string {
	s := ""
	for _, x := range xs {
		s += fmt.Sprintf(" %.3f", x)
	}
	return s
}
