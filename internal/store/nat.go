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

// NetPolicy is a VM's network opt-ins. Like nat they live outside VM so that
// UpdateVM, which knows nothing of them, never resets them.
type NetPolicy struct {
	NAT        bool // masquerade beyond the bridge
	NATPrivate bool // with NAT, private/special ranges too (never link-local)
	HostAccess bool // host services on any host address, not just DNS
}

// NetPolicy returns the VM's (by id) network opt-ins.
func (s *Store) NetPolicy(ctx context.Context, id string) (NetPolicy, error) {
	var nat, priv, host int
	err := s.db.QueryRowContext(ctx, `SELECT nat, nat_private, host_access FROM vms WHERE id = ?`, id).Scan(&nat, &priv, &host)
	if err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return NetPolicy{}, notFound("vm", id)
		}
		return NetPolicy{}, fmt.Errorf("vm %q: network policy: %w", id, err)
	}
	return NetPolicy{NAT: nat == 1, NATPrivate: priv == 1, HostAccess: host == 1}, nil
}

// SetNetPolicy records the VM's (by id) network opt-ins. An unknown id is
// api.ErrNotFound.
func (s *Store) SetNetPolicy(ctx context.Context, id string, p NetPolicy) error {
	b := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET nat = ?, nat_private = ?, host_access = ?, updated_at = ? WHERE id = ?`,
		b(p.NAT), b(p.NATPrivate), b(p.HostAccess), s.stamp().UnixNano(), id)
	if err != nil {
		return fmt.Errorf("vm %q: set network policy: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("vm %q: set network policy: %w", id, err)
	} else if n == 0 {
		return notFound("vm", id)
	}
	return nil
}
