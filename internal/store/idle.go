package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// MaxIdleTimeout bounds a VM's idle timeout.
const MaxIdleTimeout = 365 * 24 * time.Hour

// Idle is a VM's idle auto-stop setting and the record of its last stop by
// the daemon. Like the network opt-ins it lives outside VM, so UpdateVM
// never resets it.
type Idle struct {
	Timeout    time.Duration // 0: never stopped for idleness
	StopReason string        // why the daemon stopped the VM on its own; "" otherwise
	StoppedAt  time.Time     // when; zero with no StopReason
}

// Idle returns the VM's (by id) idle setting and stop record.
func (s *Store) Idle(ctx context.Context, id string) (Idle, error) {
	var secs, stopped int64
	var reason string
	err := s.db.QueryRowContext(ctx, `SELECT idle_timeout_s, stop_reason, stopped_at FROM vms WHERE id = ?`, id).
		Scan(&secs, &reason, &stopped)
	if err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Idle{}, notFound("vm", id)
		}
		return Idle{}, fmt.Errorf("vm %q: idle: %w", id, err)
	}
	out := Idle{Timeout: time.Duration(secs) * time.Second, StopReason: reason}
	if stopped != 0 {
		out.StoppedAt = fromNanos(stopped)
	}
	return out, nil
}

// SetIdleTimeout records the VM's (by id) idle timeout, whole seconds, 0 to
// turn it off. An unknown id is api.ErrNotFound.
func (s *Store) SetIdleTimeout(ctx context.Context, id string, d time.Duration) error {
	if d < 0 || d > MaxIdleTimeout || d%time.Second != 0 {
		return fmt.Errorf("idle timeout %s: whole seconds, 0 to %s: %w", d, MaxIdleTimeout, api.ErrInvalid)
	}
	return s.updateIdle(ctx, id, "set idle timeout", `idle_timeout_s = ?`, int64(d/time.Second))
}

// SetStopReason records why and when the daemon stopped the VM (by id) on
// its own; an empty reason clears the record (a start does).
func (s *Store) SetStopReason(ctx context.Context, id, reason string, at time.Time) error {
	var n int64
	if reason != "" && !at.IsZero() {
		n = at.UTC().UnixNano()
	}
	return s.updateIdle(ctx, id, "set stop reason", `stop_reason = ?, stopped_at = ?`, reason, n)
}

func (s *Store) updateIdle(ctx context.Context, id, what, set string, args ...any) error {
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET `+set+`, updated_at = ? WHERE id = ?`,
		append(args, s.stamp().UnixNano(), id)...)
	if err != nil {
		return fmt.Errorf("vm %q: %s: %w", id, what, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("vm %q: %s: %w", id, what, err)
	} else if n == 0 {
		return notFound("vm", id)
	}
	return nil
}

// IdleTimeouts maps the id of every VM whose row says running and that has
// an idle timeout to that timeout.
func (s *Store) IdleTimeouts(ctx context.Context) (map[string]time.Duration, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, idle_timeout_s FROM vms WHERE idle_timeout_s > 0 AND state = ?`, StateRunning)
	if err != nil {
		return nil, fmt.Errorf("idle timeouts: %w", err)
	}
	defer rows.Close()
	out := map[string]time.Duration{}
	for rows.Next() {
		var id string
		var secs int64
		if err := rows.Scan(&id, &secs); err != nil {
			return nil, fmt.Errorf("idle timeouts: %w", err)
		}
		out[id] = time.Duration(secs) * time.Second
	}
	return out, rows.Err()
}
