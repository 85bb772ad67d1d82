//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// processGone reports whether pid has exited (a zombie counts as gone).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}

// TestDaemonStopDuringCreate: `daemon stop` while a create is booting. The
// daemon has no grace period here (BANGER_SHUTDOWN_GRACE=0s), so the create
// is interrupted: `daemon stop` returns only once bangerd has exited, the
// create says the daemon shut down and that it was rolled back, nothing of
// the VM is left, and the next command starts a fresh daemon.
func TestDaemonStopDuringCreate(t *testing.T) {
	const name = "stopcreate"
	deleteOnCleanup(t, name)
	stopDaemon(t)
	if r := bangerWithEnv([]string{"BANGER_SHUTDOWN_GRACE=0s"}, "vm", "list"); r.code != 0 {
		t.Fatalf("start a daemon with no grace: %+v", r)
	}
	pid := daemonPID(t)
	create := E.cmd("vm", "create", "--name", name, "--nat")
	var so, se bytes.Buffer
	create.Stdout, create.Stderr = &so, &se
	if err := create.Start(); err != nil {
		t.Fatal(err)
	}
	createDone := make(chan error, 1)
	go func() { createDone <- create.Wait() }()

	// Wait until the VMM runs and the create waits for the guest.
	var v vmView
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the create never reached its boot; last view %+v", v)
		}
		r := E.bangerRes("vm", "show", name, "--json")
		if r.code == 0 && json.Unmarshal([]byte(r.stdout), &v) == nil && v.State == "running" && v.PID > 0 {
			break
		}
	}
	t0 := time.Now()
	r := E.bangerRes("daemon", "stop")
	took := time.Since(t0)
	if !processGone(pid) {
		t.Fatalf("daemon stop returned (exit %d, %s) while bangerd %d still runs", r.code, took, pid)
	}
	if r.code != 0 || r.stdout != fmt.Sprintf("bangerd stopped (pid %d)\n", pid) {
		t.Fatalf("daemon stop: %+v", r)
	}
	t.Logf("daemon stop mid-create took %s", took.Round(time.Millisecond))

	select {
	case err := <-createDone:
		if err == nil {
			t.Fatalf("create succeeded although interrupted:\n%s", so.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the create did not end with its daemon")
	}
	errs := se.String()
	for _, want := range []string{"the daemon is shutting down; vm.create was interrupted", "rolled back", "[shutting_down, op "} {
		if !strings.Contains(errs, want) {
			t.Errorf("create stderr lacks %q:\n%s", want, errs)
		}
	}
	if strings.Contains(errs, "client went away") {
		t.Errorf("create stderr blames the client:\n%s", errs)
	}

	// The next command starts a fresh daemon; the VM is not there.
	out := must(t, "vm", "list", "--json")
	if strings.Contains(out, `"`+name+`"`) {
		t.Fatalf("interrupted create left its VM:\n%s", out)
	}
	if np := daemonPID(t); np == pid || np == 0 {
		t.Fatalf("daemon pid after restart = %d (was %d)", np, pid)
	}
	assertGone(t, v)
}
