package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Session is a row of vm_sessions: a session the daemon last saw in a VM.
type Session struct {
	Name       string
	Command    string
	Dir        string
	State      string // running | exited | ended
	ExitCode   *int
	Reason     string
	PID        int
	StartedAt  time.Time
	EndedAt    time.Time // zero while running
	LastOutput string
}

// ReplaceSessions makes ss the VM's (by id) recorded sessions.
func (s *Store) ReplaceSessions(ctx context.Context, vmID string, ss []Session) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("vm %q: sessions: %w", vmID, err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `DELETE FROM vm_sessions WHERE vm_id = ?`, vmID); err != nil {
		return fmt.Errorf("vm %q: sessions: %w", vmID, err)
	}
	for _, x := range ss {
		if err := upsertSession(ctx, tx, vmID, x); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// PutSession records one session of the VM (by id), replacing one of that name.
func (s *Store) PutSession(ctx context.Context, vmID string, x Session) error {
	return upsertSession(ctx, s.db, vmID, x)
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func upsertSession(ctx context.Context, db execer, vmID string, x Session) error {
	var code sql.NullInt64
	if x.ExitCode != nil {
		code = sql.NullInt64{Int64: int64(*x.ExitCode), Valid: true}
	}
	var ended int64
	if !x.EndedAt.IsZero() {
		ended = x.EndedAt.UTC().UnixNano()
	}
	_, err := db.ExecContext(ctx, `INSERT OR REPLACE INTO vm_sessions
		(vm_id, name, command, dir, state, exit_code, reason, pid, started_at, ended_at, last_output)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		vmID, x.Name, x.Command, x.Dir, x.State, code, x.Reason, x.PID, x.StartedAt.UTC().UnixNano(), ended, x.LastOutput)
	if err != nil {
		return fmt.Errorf("vm %q: session %q: %w", vmID, x.Name, err)
	}
	return nil
}

// ListSessions returns the VM's (by id) recorded sessions, oldest first.
func (s *Store) ListSessions(ctx context.Context, vmID string) ([]Session, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, command, dir, state, exit_code, reason, pid, started_at, ended_at, last_output
		FROM vm_sessions WHERE vm_id = ? ORDER BY started_at, name`, vmID)
	if err != nil {
		return nil, fmt.Errorf("vm %q: sessions: %w", vmID, err)
	}
	defer rows.Close()
	var out []Session
	for rows.Next() {
		var x Session
		var code sql.NullInt64
		var started, ended int64
		if err := rows.Scan(&x.Name, &x.Command, &x.Dir, &x.State, &code, &x.Reason, &x.PID, &started, &ended, &x.LastOutput); err != nil {
			return nil, fmt.Errorf("vm %q: sessions: %w", vmID, err)
		}
		if code.Valid {
			c := int(code.Int64)
			x.ExitCode = &c
		}
		x.StartedAt = fromNanos(started)
		if ended != 0 {
			x.EndedAt = fromNanos(ended)
		}
		out = append(out, x)
	}
	return out, rows.Err()
}

// EndSessions marks the VM's (by id) running sessions ended for reason, at
// at: the VM stopped under them.
func (s *Store) EndSessions(ctx context.Context, vmID, reason string, at time.Time) error {
	_, err := s.db.ExecContext(ctx, `UPDATE vm_sessions SET state = 'ended', reason = ?, pid = 0, ended_at = ?
		WHERE vm_id = ? AND state = 'running'`, reason, at.UTC().UnixNano(), vmID)
	if err != nil {
		return fmt.Errorf("vm %q: end sessions: %w", vmID, err)
	}
	return nil
}
