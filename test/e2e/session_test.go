//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

type sessionView struct {
	Name       string
	Command    string
	State      string
	ExitCode   *int   `json:"exit_code"`
	Reason     string `json:"reason"`
	PID        int
	LastOutput string `json:"last_output"`
}

func sessions(t *testing.T, vm string) map[string]sessionView {
	t.Helper()
	out := must(t, "vm", "session", "list", vm, "--json")
	var list []sessionView
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("session list --json: %v\n%s", err, out)
	}
	m := map[string]sessionView{}
	for _, s := range list {
		m[s.Name] = s
	}
	return m
}

// waitSession polls the list until cond holds for the named session.
func waitSession(t *testing.T, vm, name, what string, cond func(sessionView) bool) sessionView {
	t.Helper()
	var last map[string]sessionView
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		r := E.bangerRes("vm", "session", "list", vm, "--json")
		if r.code != 0 {
			continue // e.g. the agent being restarted
		}
		var list []sessionView
		if json.Unmarshal([]byte(r.stdout), &list) != nil {
			continue
		}
		last = map[string]sessionView{}
		for _, s := range list {
			last[s.Name] = s
		}
		if s, ok := last[name]; ok && cond(s) {
			return s
		}
	}
	t.Fatalf("session %s never %s: %+v", name, what, last)
	return sessionView{}
}

func sessionLogs(t *testing.T, vm, name string, args ...string) string {
	t.Helper()
	return strings.ReplaceAll(must(t, append([]string{"vm", "session", "logs", vm, name}, args...)...), "\r", "")
}

func tickLines(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		if strings.HasPrefix(l, "tick ") {
			out = append(out, l)
		}
	}
	return out
}

// TestSession: `vm session` runs commands that outlive the CLI, a killed
// daemon and a killed guest agent; logs, send, attach/detach, kill and exit
// codes; after `vm stop` the sessions are listed as ended.
func TestSession(t *testing.T) {
	const vm = "sess"
	deleteOnCleanup(t, vm)
	must(t, "vm", "create", "--name", vm)

	t0 := time.Now()
	must(t, "vm", "session", "start", vm, "--name", "web", "--", "sh", "-c", `i=0; while :; do echo tick $i; i=$((i+1)); sleep 1; done`)
	if d := time.Since(t0); d > 10*time.Second {
		t.Errorf("session start took %s: it must return at once", d)
	}
	web := sessions(t, vm)["web"]
	if web.State != "running" || web.PID <= 0 || !strings.Contains(web.Command, "tick") {
		t.Fatalf("web after start: %+v", web)
	}
	var ticks []string
	for deadline := time.Now().Add(20 * time.Second); len(ticks) < 3; time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("logs --tail 3: %q", ticks)
		}
		ticks = tickLines(sessionLogs(t, vm, "web", "--tail", "3"))
	}
	if len(ticks) != 3 {
		t.Fatalf("logs --tail 3 gave %d tick lines: %q", len(ticks), ticks)
	}

	// send: stdin reaches a cat (echoed by the terminal, then by cat).
	must(t, "vm", "session", "start", vm, "--name", "cat", "--", "cat")
	cmd := E.cmd("vm", "session", "send", vm, "cat")
	cmd.Stdin = strings.NewReader("hello-from-send\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("session send: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(10 * time.Second); strings.Count(sessionLogs(t, vm, "cat"), "hello-from-send") < 2; time.Sleep(300 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("sent line not in cat's logs: %q", sessionLogs(t, vm, "cat"))
		}
	}

	// kill -9 of bangerd: the CLI starts a new one; sessions are still there.
	pidb, err := os.ReadFile(filepath.Join(E.stateDir, "bangerd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	dpid, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
	if err := syscall.Kill(dpid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, dpid)
	if s := sessions(t, vm)["web"]; s.State != "running" || s.PID != web.PID {
		t.Fatalf("web after the daemon was killed: %+v (was pid %d)", s, web.PID)
	}
	if len(tickLines(sessionLogs(t, vm, "web", "--tail", "2"))) != 2 {
		t.Fatal("logs after the daemon was killed")
	}

	// kill -9 of the guest agent: systemd restarts it; the session lives on
	// and the new agent reaches it.
	must(t, "vm", "ssh", vm, "--", "kill -9 $(systemctl show -p MainPID --value banger-agent)")
	waitSession(t, vm, "web", "reachable after the agent restarted", func(s sessionView) bool {
		return s.State == "running" && s.PID == web.PID
	})
	before := tickLines(sessionLogs(t, vm, "web", "--tail", "1"))
	time.Sleep(2500 * time.Millisecond)
	if after := tickLines(sessionLogs(t, vm, "web", "--tail", "1")); len(after) != 1 || len(before) != 1 || after[0] == before[0] {
		t.Fatalf("web stopped ticking after the agent restart: %q then %q", before, after)
	}

	// attach: the recent output, then a line typed and the detach key; the
	// session keeps running.
	cmd = E.cmd("vm", "session", "attach", vm, "web")
	cmd.Stdin = strings.NewReader("typed-in-attach\n\x1d")
	var so, se strings.Builder
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Run(); err != nil {
		t.Fatalf("attach: %v\nstdout %q\nstderr %q", err, so.String(), se.String())
	}
	if !strings.Contains(so.String(), "tick ") || !strings.Contains(so.String(), "typed-in-attach") || !strings.Contains(se.String(), "detach") {
		t.Fatalf("attach: stdout %q stderr %q", tailStr(so.String(), 400), se.String())
	}
	if s := sessions(t, vm)["web"]; s.State != "running" {
		t.Fatalf("web after detaching: %+v", s)
	}

	// kill records the exit code; so does a command's own exit.
	must(t, "vm", "session", "kill", vm, "web", "--signal", "TERM")
	web = waitSession(t, vm, "web", "exited", func(s sessionView) bool { return s.State == "exited" })
	if web.ExitCode == nil || *web.ExitCode != 143 {
		t.Fatalf("web after kill TERM: %+v, want exit code 143", web)
	}
	must(t, "vm", "session", "start", vm, "--name", "seven", "--", "sh", "-c", "exit 7")
	seven := waitSession(t, vm, "seven", "exited", func(s sessionView) bool { return s.State == "exited" })
	if seven.ExitCode == nil || *seven.ExitCode != 7 {
		t.Fatalf("seven: %+v, want exit code 7", seven)
	}

	// vm stop: the sessions are listed as ended, not gone.
	must(t, "vm", "stop", vm)
	stopped := sessions(t, vm)
	if c := stopped["cat"]; c.State != "ended" || c.Reason != "vm stopped" {
		t.Fatalf("cat after vm stop: %+v", c)
	}
	if w := stopped["web"]; w.State != "exited" || w.ExitCode == nil || *w.ExitCode != 143 {
		t.Fatalf("web after vm stop: %+v", w)
	}
	if table := must(t, "vm", "session", "list", vm); !strings.Contains(table, "ended (vm stopped)") {
		t.Fatalf("session list table after stop:\n%s", table)
	}
	// And after the next boot, from the guest's own record.
	must(t, "vm", "start", vm)
	if c := sessions(t, vm)["cat"]; c.State != "ended" || c.Reason != "vm stopped" {
		t.Fatalf("cat after vm start: %+v", c)
	}
	if r := E.bangerRes("vm", "session", "kill", vm, "cat"); r.code == 0 || !strings.Contains(r.stderr, "not_running") {
		t.Fatalf("kill of an ended session: exit %d %q", r.code, r.stderr)
	}
}
