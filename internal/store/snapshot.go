package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Snapshot is a saved VM: device state, memory and disks in Dir.
type Snapshot struct {
	ID, Name                 string
	SourceVM, SourceVMID     string // the VM's name and id when it was taken
	Image, Kernel            string
	VCPU, MemoryMiB          int
	DiskBytes, WorkDiskBytes int64
	RootFormat, WorkFormat   string
	SizeBytes                int64  // on disk, allocated
	Meta                     string // vmm.SnapshotMeta as JSON
	WarmFor                  string // image whose warm template this is ('' = none)
	Auto                     bool   // made by `vm fork`; removed with its last VM
	Parent                   string // snapshot whose files this one's disks read through ('' = none)
	CreatedAt                time.Time
}

const snapshotColumns = `id, name, source_vm, source_vm_id, image, kernel, vcpu, memory_mib, disk_bytes,
	work_disk_bytes, root_format, work_format, size_bytes, meta, warm_for, auto, parent, created_at`

// CreateSnapshot inserts sn; CreatedAt is set here. A taken name is
// api.ErrConflict.
func (s *Store) CreateSnapshot(ctx context.Context, sn *Snapshot) error {
	if sn.ID == "" || sn.Name == "" {
		return fmt.Errorf("snapshot: empty id or name")
	}
	v := *sn
	v.CreatedAt = s.stamp()
	_, err := s.db.ExecContext(ctx, `INSERT INTO snapshots (`+snapshotColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		v.ID, v.Name, v.SourceVM, v.SourceVMID, v.Image, v.Kernel, v.VCPU, v.MemoryMiB, v.DiskBytes,
		v.WorkDiskBytes, v.RootFormat, v.WorkFormat, v.SizeBytes, v.Meta, v.WarmFor, boolInt(v.Auto),
		v.Parent, v.CreatedAt.UnixNano())
	if err != nil {
		return conflictErr("snapshot", v.Name, err)
	}
	*sn = v
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func scanSnapshot(r scanner) (Snapshot, error) {
	var v Snapshot
	var created int64
	var auto int
	err := r.Scan(&v.ID, &v.Name, &v.SourceVM, &v.SourceVMID, &v.Image, &v.Kernel, &v.VCPU, &v.MemoryMiB,
		&v.DiskBytes, &v.WorkDiskBytes, &v.RootFormat, &v.WorkFormat, &v.SizeBytes, &v.Meta, &v.WarmFor, &auto, &v.Parent, &created)
	v.Auto = auto == 1
	v.CreatedAt = fromNanos(created)
	return v, err
}

// GetSnapshot returns the snapshot whose id or name is nameOrID.
func (s *Store) GetSnapshot(ctx context.Context, nameOrID string) (Snapshot, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots
		WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1`, nameOrID)
	v, err := scanSnapshot(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Snapshot{}, notFound("snapshot", nameOrID)
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %q: %w", nameOrID, err)
	}
	return v, nil
}

// WarmSnapshot returns the newest warm template of image.
func (s *Store) WarmSnapshot(ctx context.Context, image string) (Snapshot, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots
		WHERE warm_for = ? ORDER BY created_at DESC LIMIT 1`, image)
	v, err := scanSnapshot(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Snapshot{}, notFound("warm snapshot of image", image)
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("warm snapshot of %q: %w", image, err)
	}
	return v, nil
}

// ListSnapshots returns every snapshot, oldest first.
func (s *Store) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots ORDER BY created_at, rowid`)
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		v, err := scanSnapshot(rows)
		if err != nil {
			return nil, fmt.Errorf("list snapshots: %w", err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// DeleteSnapshot removes the row (by id).
func (s *Store) DeleteSnapshot(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM snapshots WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("snapshot %q: delete: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return notFound("snapshot", id)
	}
	return nil
}

// VMsFrom returns the names of the VMs restored from snapshot id.
func (s *Store) VMsFrom(ctx context.Context, id string) ([]string, error) {
	out, err := names(ctx, s.db, `SELECT name FROM vms WHERE origin_snapshot = ? ORDER BY name`, id)
	if err != nil {
		return nil, fmt.Errorf("vms of snapshot %q: %w", id, err)
	}
	return out, nil
}

// SnapshotUsers names what depends on snapshot id: the VMs restored from it
// and the snapshots whose disks read through its files.
func (s *Store) SnapshotUsers(ctx context.Context, id string) (vms, snaps []string, err error) {
	if vms, err = s.VMsFrom(ctx, id); err != nil {
		return nil, nil, err
	}
	snaps, err = names(ctx, s.db, `SELECT name FROM snapshots WHERE parent = ? ORDER BY name`, id)
	if err != nil {
		return nil, nil, fmt.Errorf("snapshots of snapshot %q: %w", id, err)
	}
	return vms, snaps, nil
}

// VMSnapshotState is what a VM row carries about pausing and snapshots;
// like NetPolicy it lives outside VM so UpdateVM never resets it.
type VMSnapshotState struct {
	Paused         bool
	OriginSnapshot string
	WorkFormat     string
}

// SnapshotState returns the VM's (by id) pause flag, origin and work disk format.
func (s *Store) SnapshotState(ctx context.Context, id string) (VMSnapshotState, error) {
	var st VMSnapshotState
	var paused int
	err := s.db.QueryRowContext(ctx, `SELECT paused, origin_snapshot, work_format FROM vms WHERE id = ?`, id).
		Scan(&paused, &st.OriginSnapshot, &st.WorkFormat)
	if errors.Is(err, sql.ErrNoRows) {
		return st, notFound("vm", id)
	}
	if err != nil {
		return st, fmt.Errorf("vm %q: snapshot state: %w", id, err)
	}
	st.Paused = paused == 1
	return st, nil
}

// SetPaused records whether the user paused the VM (by id).
func (s *Store) SetPaused(ctx context.Context, id string, paused bool) error {
	return s.setVMColumn(ctx, id, "paused", boolInt(paused))
}

// SetOrigin records the snapshot the VM (by id) was restored from and its
// work disk's format.
func (s *Store) SetOrigin(ctx context.Context, id, snapshotID, workFormat string) error {
	if err := s.setVMColumn(ctx, id, "origin_snapshot", snapshotID); err != nil {
		return err
	}
	return s.setVMColumn(ctx, id, "work_format", workFormat)
}

// setVMColumn sets one of the columns above; col is never user input.
func (s *Store) setVMColumn(ctx context.Context, id, col string, v any) error {
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET `+col+` = ?, updated_at = ? WHERE id = ?`, v, s.stamp().UnixNano(), id)
	if err != nil {
		return fmt.Errorf("vm %q: set %s: %w", id, col, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return notFound("vm", id)
	}
	return nil
}
