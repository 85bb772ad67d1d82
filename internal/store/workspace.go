package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// Workspace is the durable record of a host repository prepared in a VM.
type Workspace struct {
	VMID       string
	HostPath   string   // repository top level on the host
	GuestPath  string   // where it lives in the guest (on the work disk)
	Head       string   // host HEAD commit at the last sync ("" for a repo without commits)
	Branch     string   // host branch at the last sync ("" when detached)
	Tips       []string // commit ids the guest's repository is known to have
	Files      int64
	Bytes      int64
	PreparedAt time.Time // first full prepare
	SyncedAt   time.Time // last sync
}

const wsColumns = `vm_id, host_path, guest_path, head, branch, tips, files, bytes, prepared_at, synced_at`

// PutWorkspace inserts or replaces the workspace of w.VMID. SyncedAt is set
// to now; PreparedAt too when it is zero.
func (s *Store) PutWorkspace(ctx context.Context, w *Workspace) error {
	if w.VMID == "" || w.HostPath == "" || w.GuestPath == "" {
		return fmt.Errorf("%w: workspace needs a vm id, host path and guest path", api.ErrInvalid)
	}
	now := s.stamp()
	v := *w
	v.SyncedAt = now
	if v.PreparedAt.IsZero() {
		v.PreparedAt = now
	}
	_, err := s.db.ExecContext(ctx, `INSERT OR REPLACE INTO workspaces (`+wsColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		v.VMID, v.HostPath, v.GuestPath, v.Head, v.Branch, strings.Join(v.Tips, " "), v.Files, v.Bytes,
		v.PreparedAt.UnixNano(), v.SyncedAt.UnixNano())
	if err != nil {
		return fmt.Errorf("workspace of vm %s: %w", v.VMID, err)
	}
	*w = v
	return nil
}

// GetWorkspace returns the workspace of a VM (by id); none is api.ErrNotFound.
func (s *Store) GetWorkspace(ctx context.Context, vmID string) (Workspace, error) {
	var w Workspace
	var tips string
	var prepared, synced int64
	err := s.db.QueryRowContext(ctx, `SELECT `+wsColumns+` FROM workspaces WHERE vm_id = ?`, vmID).Scan(
		&w.VMID, &w.HostPath, &w.GuestPath, &w.Head, &w.Branch, &tips, &w.Files, &w.Bytes, &prepared, &synced)
	if errors.Is(err, sql.ErrNoRows) {
		return Workspace{}, notFound("workspace of vm", vmID)
	}
	if err != nil {
		return Workspace{}, fmt.Errorf("workspace of vm %s: %w", vmID, err)
	}
	w.Tips = strings.Fields(tips)
	w.PreparedAt, w.SyncedAt = fromNanos(prepared), fromNanos(synced)
	return w, nil
}

// DeleteWorkspace forgets a VM's workspace; none is api.ErrNotFound.
func (s *Store) DeleteWorkspace(ctx context.Context, vmID string) error {
	return s.deleteRow(ctx, "workspace of vm", `DELETE FROM workspaces WHERE vm_id = ?`, vmID)
}
