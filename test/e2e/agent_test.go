//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAgent: guest operations go over banger-agent's channel by default,
// survive the agent being killed (systemd restarts it) and the daemon being
// killed (the new daemon reconnects), and fall back to SSH while the agent
// is down. `vm ssh` stays SSH.
func TestAgent(t *testing.T) {
	const name = "agent"
	deleteOnCleanup(t, name)
	t0 := time.Now()
	must(t, "vm", "create", "--name", name)
	t.Logf("create→ready %.1fs", time.Since(t0).Seconds())

	// Which process started the command says which transport ran it.
	parent := "cat /proc/$PPID/comm"
	if out := must(t, "vm", "exec", name, "--", parent); out != "banger-agent\n" {
		t.Fatalf("vm exec ran under %q, want banger-agent (the default transport is the agent)", out)
	}
	if out := must(t, "vm", "ssh", name, "--", parent); !strings.HasPrefix(out, "sshd") {
		t.Fatalf("vm ssh ran under %q, want sshd", out)
	}
	if out := must(t, "vm", "exec", name, "--via", "ssh", "--", parent); !strings.HasPrefix(out, "sshd") {
		t.Fatalf("vm exec --via ssh ran under %q, want sshd", out)
	}

	// Streams, exit code, stdin, PTY, env, workdir and signals over the agent.
	r := E.bangerRes("vm", "exec", name, "--via", "agent", "--", "echo hi; echo oops >&2; exit 3")
	if r.code != 3 || r.stdout != "hi\n" || !strings.Contains(r.stderr, "oops") {
		t.Fatalf("agent exec streams/code: code=%d stdout=%q stderr=%q", r.code, r.stdout, r.stderr)
	}
	cmd := E.cmd("vm", "exec", name, "--via", "agent", "--", "tr a-z A-Z")
	cmd.Stdin = strings.NewReader("piped stdin\n")
	if out, err := cmd.Output(); err != nil || string(out) != "PIPED STDIN\n" {
		t.Fatalf("agent stdin: %q %v", out, err)
	}
	out := must(t, "vm", "exec", name, "--via", "agent", "-t", "-e", "FOO=bar baz", "-w", "/tmp", "--", "tty; echo \"$FOO\"; pwd; echo $HOME")
	if lines := strings.Fields(strings.ReplaceAll(out, "\r", "")); len(lines) != 5 || !strings.HasPrefix(lines[0], "/dev/pts/") ||
		lines[1] != "bar" || lines[2] != "baz" || lines[3] != "/tmp" || lines[4] != "/root" {
		t.Fatalf("agent pty/env/workdir: %q", out)
	}
	if r := E.bangerRes("vm", "exec", name, "--via", "agent", "--", "kill -INT $$; sleep 5"); r.code != 130 {
		t.Fatalf("agent exec killed by SIGINT: exit %d, want 130 (%s)", r.code, r.stderr)
	}

	// kill -9 of the agent: systemd starts a new one; the next exec works
	// (over SSH at once, over the agent within seconds).
	mainPID := func() int {
		s := strings.TrimSpace(must(t, "vm", "ssh", name, "--", "systemctl show -p MainPID --value banger-agent"))
		pid, err := strconv.Atoi(s)
		if err != nil || pid <= 1 {
			t.Fatalf("banger-agent MainPID = %q", s)
		}
		return pid
	}
	before := mainPID()
	must(t, "vm", "ssh", name, "--", "kill -9 "+strconv.Itoa(before))
	if out := must(t, "vm", "exec", name, "--", "echo after-kill"); out != "after-kill\n" {
		t.Fatalf("exec right after the agent died: %q", out)
	}
	waitAgent(t, name, 15*time.Second)
	if after := mainPID(); after == before {
		t.Fatalf("agent pid unchanged (%d) after kill -9", after)
	}

	// The agent stopped for good: exec falls back to SSH, --via agent says why.
	must(t, "vm", "ssh", name, "--", "systemctl stop banger-agent")
	if out := must(t, "vm", "exec", name, "--", parent); !strings.HasPrefix(out, "sshd") {
		t.Fatalf("with the agent stopped exec ran under %q, want the sshd fallback", out)
	}
	if r := E.bangerRes("vm", "exec", name, "--via", "agent", "--", "true"); r.code == 0 || !strings.Contains(r.stderr, "agent") {
		t.Fatalf("--via agent with the agent stopped: exit %d, stderr %q", r.code, r.stderr)
	}
	must(t, "vm", "ssh", name, "--", "systemctl start banger-agent")
	waitAgent(t, name, 15*time.Second)

	// kill -9 of bangerd: the restarted daemon reconnects to the same agent.
	pidb, err := os.ReadFile(filepath.Join(E.stateDir, "bangerd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	dpid, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
	if err := syscall.Kill(dpid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, dpid)
	waitAgent(t, name, 20*time.Second)

	// Graceful stop over the agent: sync, poweroff, the VMM exits by itself.
	must(t, "vm", "exec", name, "--", "echo synced > /root/agent-marker")
	t0 = time.Now()
	must(t, "vm", "stop", name)
	t.Logf("stop over the agent %.1fs", time.Since(t0).Seconds())
	must(t, "vm", "start", name)
	if out := must(t, "vm", "exec", name, "--", "cat /root/agent-marker"); out != "synced\n" {
		t.Fatalf("data written before an agent stop: %q", out)
	}
}

// waitAgent polls `vm exec --via agent -- true` until it succeeds.
func waitAgent(t *testing.T, name string, within time.Duration) {
	t.Helper()
	t0 := time.Now()
	for {
		r := E.bangerRes("vm", "exec", name, "--via", "agent", "--", "true")
		if r.code == 0 {
			t.Logf("agent answered after %.1fs", time.Since(t0).Seconds())
			return
		}
		if time.Since(t0) > within {
			t.Fatalf("agent did not answer within %s: exit %d %s", within, r.code, r.stderr)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
