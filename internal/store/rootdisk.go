package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/banger-dev/banger/internal/api"
)

// rootFormat is the format written for a VM row: "" means raw (rows from
// before migration 0008, callers that make raw disks without saying so).
func rootFormat(f string) string {
	if f == "" {
		return FormatRaw
	}
	return f
}

// ImageUsers names the VMs that depend on image name, oldest first: those
// made from it (vms.image) and those whose root disk reads through path, the
// image's file (vms.root_backing; path "" matches none).
func (s *Store) ImageUsers(ctx context.Context, name, path string) ([]string, error) {
	return imageUsers(ctx, s.db, name, path)
}

type rowsQuerier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func imageUsers(ctx context.Context, q rowsQuerier, name, path string) ([]string, error) {
	out, err := names(ctx, q, `SELECT name FROM vms
		WHERE image = ? OR (root_backing <> '' AND root_backing = ?) ORDER BY created_at, rowid`, name, path)
	if err != nil {
		return nil, fmt.Errorf("users of image %q: %w", name, err)
	}
	return out, nil
}

// ImageInUseError is an image that VMs or snapshots depend on; it wraps
// api.ErrBusy.
type ImageInUseError struct {
	Image string
	VMs   []string // ImageUsers
	// Backed are those of VMs whose root disk is a qcow2 overlay of the image's file.
	Backed []string
	// Snapshots are the snapshots of the image whose root disk is qcow2 (a
	// captured overlay, which reads the image's file when restored).
	Snapshots []string
}

func (e *ImageInUseError) Error() string {
	var parts []string
	if len(e.VMs) > 0 {
		p := fmt.Sprintf("%s %s", plural(len(e.VMs), "vm", "vms"), quoteList(e.VMs))
		if len(e.Backed) > 0 {
			p += fmt.Sprintf(" (the root %s of %s %s its file as a qcow2 overlay)",
				plural(len(e.Backed), "disk", "disks"), quoteList(e.Backed), plural(len(e.Backed), "reads", "read"))
		}
		parts = append(parts, p)
	}
	if len(e.Snapshots) > 0 {
		parts = append(parts, fmt.Sprintf("%s %s (qcow2 overlays of its file)", plural(len(e.Snapshots), "snapshot", "snapshots"), quoteList(e.Snapshots)))
	}
	return fmt.Sprintf("image %q is used by %s; delete those first", e.Image, strings.Join(parts, " and "))
}

func (e *ImageInUseError) Unwrap() error { return api.ErrBusy }

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// quoteList renders at most 10 names, then how many more.
func quoteList(names []string) string {
	const show = 10
	q := make([]string, 0, min(len(names), show))
	for _, n := range names[:min(len(names), show)] {
		q = append(q, fmt.Sprintf("%q", n))
	}
	out := strings.Join(q, ", ")
	if len(names) > show {
		out += fmt.Sprintf(" and %d more", len(names)-show)
	}
	return out
}

// CheckImageUnused returns an *ImageInUseError when a VM (ImageUsers) or a
// qcow2 snapshot depends on image name (whose file is path), else nil.
func (s *Store) CheckImageUnused(ctx context.Context, name, path string) error {
	return checkImageUnused(ctx, s.db, name, path)
}

func checkImageUnused(ctx context.Context, q rowsQuerier, name, path string) error {
	users, err := imageUsers(ctx, q, name, path)
	if err != nil {
		return err
	}
	e := &ImageInUseError{Image: name, VMs: users}
	if len(users) > 0 && path != "" {
		if e.Backed, err = names(ctx, q, `SELECT name FROM vms WHERE root_backing = ? ORDER BY created_at, rowid`, path); err != nil {
			return fmt.Errorf("users of image %q: %w", name, err)
		}
	}
	if e.Snapshots, err = names(ctx, q, `SELECT name FROM snapshots WHERE image = ? AND root_format = 'qcow2' ORDER BY created_at, rowid`, name); err != nil {
		return fmt.Errorf("users of image %q: %w", name, err)
	}
	if len(e.VMs) == 0 && len(e.Snapshots) == 0 {
		return nil
	}
	return e
}

func names(ctx context.Context, q rowsQuerier, query string, args ...any) ([]string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// DeleteImageUnused deletes image name's row unless a VM depends on it
// (*ImageInUseError), checked in the same transaction: a VM row inserted
// at the same time either makes it refuse or finds the image gone. An
// unknown name is api.ErrNotFound.
func (s *Store) DeleteImageUnused(ctx context.Context, name string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("delete image %q: %w", name, err)
	}
	defer tx.Rollback()
	var path string
	err = tx.QueryRowContext(ctx, `SELECT path FROM images WHERE name = ?`, name).Scan(&path)
	if errors.Is(err, sql.ErrNoRows) {
		return notFound("image", name)
	}
	if err != nil {
		return fmt.Errorf("delete image %q: %w", name, err)
	}
	if err := checkImageUnused(ctx, tx, name, path); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM images WHERE name = ?`, name); err != nil {
		return fmt.Errorf("delete image %q: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("delete image %q: %w", name, err)
	}
	return nil
}
