package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// SetNAT records whether the VM (by id) gets NAT at its next start. An
// unknown id is api.ErrNotFound.
func (s *Store) SetNAT(ctx context.Context, id string, on bool) error {
	v := 0
	if on {
		v = 1
	}
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET nat = ?, updated_at = ? WHERE id = ?`, v, s.stamp().UnixNano(), id)
	if err != nil {
		return fmt.Errorf("vm %q: set nat: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("vm %q: set nat: %w", id, err)
	} else if n == 0 {
		return notFound("vm", id)
	}
	return nil
}

// NAT reports whether the VM (by id) has NAT enabled.
func (s *Store) NAT(ctx context.Context, id string) (bool, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT nat FROM vms WHERE id = ?`, id).Scan(&v)
	if err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return false, notFound("vm", id)
		}
		return false, fmt.Errorf("vm %q: nat: %w", id, err)
	}
	return v == 1, nil
}
