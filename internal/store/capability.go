package store

import (
	"context"
	"fmt"
)

// Capability is one of a VM's capabilities (migration 0010).
type Capability struct {
	Name    string
	Version string // "" for the capability's default
	State   string // pending, preparing, starting, ready, failed, stopped
	Error   string // why it failed, first line
}

// AddCapabilities records the VM's (by id) capabilities, in order, pending.
func (s *Store) AddCapabilities(ctx context.Context, id string, caps []Capability) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	now := s.stamp().UnixNano()
	for i, c := range caps {
		if _, err := tx.ExecContext(ctx, `INSERT INTO vm_capabilities (vm_id, name, version, pos, state, updated_at) VALUES (?, ?, ?, ?, 'pending', ?)`,
			id, c.Name, c.Version, i, now); err != nil {
			return fmt.Errorf("vm %q: capability %s: %w", id, c.Name, err)
		}
	}
	return tx.Commit()
}

// Capabilities returns the VM's (by id) capabilities in the order given at
// create; none is an empty list.
func (s *Store) Capabilities(ctx context.Context, id string) ([]Capability, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, version, state, error FROM vm_capabilities WHERE vm_id = ? ORDER BY pos`, id)
	if err != nil {
		return nil, fmt.Errorf("vm %q: capabilities: %w", id, err)
	}
	defer rows.Close()
	var out []Capability
	for rows.Next() {
		var c Capability
		if err := rows.Scan(&c.Name, &c.Version, &c.State, &c.Error); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// SetCapabilityState records one capability's state (and error, "" to
// clear it). A capability the VM does not have is api.ErrNotFound.
func (s *Store) SetCapabilityState(ctx context.Context, id, name, state, errText string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE vm_capabilities SET state = ?, error = ?, updated_at = ? WHERE vm_id = ? AND name = ?`,
		state, errText, s.stamp().UnixNano(), id, name)
	if err != nil {
		return fmt.Errorf("vm %q: capability %s: %w", id, name, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return notFound("capability", id+"/"+name)
	}
	return nil
}

// CapabilityUser is a VM that has a capability.
type CapabilityUser struct {
	VMID, VMName  string
	Name, Version string
}

// CapabilityUsers returns every VM's capabilities (what each cache entry is
// in use by).
func (s *Store) CapabilityUsers(ctx context.Context) ([]CapabilityUser, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT c.vm_id, v.name, c.name, c.version FROM vm_capabilities c JOIN vms v ON v.id = c.vm_id ORDER BY v.name, c.pos`)
	if err != nil {
		return nil, fmt.Errorf("capability users: %w", err)
	}
	defer rows.Close()
	var out []CapabilityUser
	for rows.Next() {
		var u CapabilityUser
		if err := rows.Scan(&u.VMID, &u.VMName, &u.Name, &u.Version); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}
