package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"
)

func init() {
	migrationChecks[6] = func(t *testing.T, db *sql.DB) {
		if _, err := db.Exec(`INSERT INTO vms (id, name, state, created_at, updated_at) VALUES ('v6', 'v6', 'running', 0, 0)`); err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{
			`INSERT INTO vm_sessions (vm_id, name, command, state, started_at) VALUES ('v6', 'a', 'x', 'weird', 0)`,
			`INSERT INTO vm_sessions (vm_id, name, command, state, exit_code, started_at) VALUES ('v6', 'a', 'x', 'exited', 256, 0)`,
			`INSERT INTO vm_sessions (vm_id, name, command, state, started_at) VALUES ('nope', 'a', 'x', 'running', 0)`,
		} {
			if _, err := db.Exec(bad); err == nil {
				t.Errorf("accepted: %s", bad)
			}
		}
		if _, err := db.Exec(`INSERT INTO vm_sessions (vm_id, name, command, state, started_at) VALUES ('v6', 'a', 'x', 'running', 0)`); err != nil {
			t.Fatal(err)
		}
		// Sessions go with their VM.
		if _, err := db.Exec(`DELETE FROM vms WHERE id = 'v6'`); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM vm_sessions`).Scan(&n); err != nil || n != 0 {
			t.Errorf("sessions after their vm was deleted: %d %v", n, err)
		}
	}
}

// dump renders the recorded sessions as text, one per line.
func dump(t *testing.T, s *Store, vmID string) string {
	t.Helper()
	ss, err := s.ListSessions(context.Background(), vmID)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, x := range ss {
		code := "-"
		if x.ExitCode != nil {
			code = fmt.Sprint(*x.ExitCode)
		}
		ended := "-"
		if !x.EndedAt.IsZero() {
			ended = x.EndedAt.Format(time.TimeOnly)
		}
		fmt.Fprintf(&b, "%s %q %s code=%s reason=%q pid=%d started=%s ended=%s last=%q\n", x.Name, x.Command, x.State, code, x.Reason, x.PID,
			x.StartedAt.Format(time.TimeOnly), ended, x.LastOutput)
	}
	return b.String()
}

func TestSessions(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	vm := VM{Name: "dev", State: "running", Dir: "/x"}
	if err := s.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 10, 0, 0, 0, time.UTC)
	seven := 7
	if err := s.ReplaceSessions(ctx, vm.ID, []Session{
		{Name: "web", Command: "npm run dev", State: "running", PID: 42, StartedAt: t0.Add(time.Minute), LastOutput: "ready"},
		{Name: "job", Command: "exit 7", State: "exited", ExitCode: &seven, StartedAt: t0, EndedAt: t0.Add(time.Second)},
	}); err != nil {
		t.Fatal(err)
	}
	want := `job "exit 7" exited code=7 reason="" pid=0 started=10:00:00 ended=10:00:01 last=""
web "npm run dev" running code=- reason="" pid=42 started=10:01:00 ended=- last="ready"
`
	if got := dump(t, s, vm.ID); got != want {
		t.Fatalf("after replace:\n%s\nwant:\n%s", got, want)
	}
	if err := s.PutSession(ctx, vm.ID, Session{Name: "db", Command: "postgres", State: "running", PID: 50, StartedAt: t0.Add(2 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if err := s.EndSessions(ctx, vm.ID, "vm stopped", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	want = `job "exit 7" exited code=7 reason="" pid=0 started=10:00:00 ended=10:00:01 last=""
web "npm run dev" ended code=- reason="vm stopped" pid=0 started=10:01:00 ended=11:00:00 last="ready"
db "postgres" ended code=- reason="vm stopped" pid=0 started=10:02:00 ended=11:00:00 last=""
`
	if got := dump(t, s, vm.ID); got != want {
		t.Fatalf("after the vm stopped:\n%s\nwant:\n%s", got, want)
	}
	if err := s.ReplaceSessions(ctx, vm.ID, nil); err != nil {
		t.Fatal(err)
	}
	if got := dump(t, s, vm.ID); got != "" {
		t.Fatalf("after an empty replace:\n%s", got)
	}
}
