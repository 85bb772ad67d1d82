// Package store is banger's durable state: one SQLite file (modernc.org/sqlite,
// no cgo) holding what VMs, kernels and images *are*. What is true right now
// (pids, devices) lives elsewhere. The schema evolves only through the
// numbered files in migrations/, applied in order at Open.
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/banger-dev/banger/internal/api"
)

// ErrSchemaTooNew means the database was written by a newer banger.
var ErrSchemaTooNew = errors.New("database schema too new")

// VM states.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateStopped  = "stopped"
	StateError    = "error"
)

// Disk clone methods recorded per VM.
const (
	CloneReflink    = "reflink"
	CloneSparseCopy = "sparse-copy"
	CloneQcow2      = "qcow2-overlay" // RootBacking is the file it reads through
)

// Root disk formats (vms.root_format, migration 0008).
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// DefaultVMM is the VMM of rows that name none: those from before
// migration 0009 and callers that do not say.
const DefaultVMM = "qemu"

// busyTimeout is how long a writer waits for another writer's lock.
const busyTimeout = 10 * time.Second

// VM is a VM's durable row.
type VM struct {
	ID, Name, Image, Kernel  string
	VCPU, MemoryMiB          int
	DiskBytes, WorkDiskBytes int64
	GuestIP, MAC, Tap        string
	State                    string // StateCreating | StateRunning | StateStopped | StateError
	LastError                string
	CloneMethod              string // CloneReflink | CloneSparseCopy | CloneQcow2
	Dir                      string // VM directory; per-VM paths derive from it
	// RootFormat is the root disk's format as banger made it (FormatRaw,
	// FormatQcow2; "" is written as raw). It is what the VMM is told,
	// never read back from the file, whose bytes the guest owns.
	RootFormat string
	// RootBacking is the absolute path of the file a qcow2 root disk reads
	// through (an image's rootfs.ext4), "" when the disk stands alone. That
	// file must not change or go while the VM exists (ImageUsers).
	RootBacking string
	// VMM is the driver that runs the VM ("qemu", "firecracker"; "" is
	// written as DefaultVMM), chosen at create (migration 0009).
	VMM                  string
	CreatedAt, UpdatedAt time.Time
}

// Kernel is an imported kernel.
type Kernel struct {
	Name, Version, Source, Path, Initrd, SHA256 string
	CreatedAt                                   time.Time
}

// Image is a root filesystem image.
type Image struct {
	Name, Source, Path, KernelRef string
	SizeBytes                     int64
	CreatedAt                     time.Time
}

// Store is the open database. Safe for concurrent use.
type Store struct {
	db  *sql.DB
	now func() time.Time
}

// Open opens (creating if needed, mode 0600) the database at path and
// migrates it to the current schema.
func Open(ctx context.Context, path string) (*Store, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	// Create the file ourselves so it is never world-readable; SQLite gives
	// the -wal and -shm files the same mode.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	f.Close()

	db, err := openDB(ctx, abs)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	if err := migrate(ctx, db, -1); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	return &Store{db: db, now: time.Now}, nil
}

// openDB opens and pings the database. Switching a new file to WAL takes an
// exclusive lock that SQLite's busy handler does not wait for, so processes
// opening a fresh store at once get SQLITE_BUSY from the first statement;
// that one case is retried until busyTimeout.
func openDB(ctx context.Context, abs string) (*sql.DB, error) {
	deadline := time.Now().Add(busyTimeout)
	for {
		db, err := sql.Open("sqlite", dsn(abs))
		if err != nil {
			return nil, err
		}
		err = db.PingContext(ctx)
		if err == nil {
			return db, nil
		}
		db.Close()
		var se *sqlite.Error
		if !errors.As(err, &se) || se.Code()&0xff != sqliteBusy || time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// sqliteBusy is SQLITE_BUSY, the primary result code (extended codes keep it in the low byte).
const sqliteBusy = 5

// dsn builds a URI whose pragmas apply to every pooled connection: WAL so
// readers never block the writer, busy_timeout so concurrent writers wait
// instead of failing, and IMMEDIATE transactions so a transaction never has
// to upgrade a read lock (which fails with SQLITE_BUSY regardless of timeout).
func dsn(abs string) string {
	u := url.URL{Scheme: "file", Path: abs}
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	return u.String() + "?" + q.Encode()
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// stamp is the current time as stored: UTC, nanoseconds, no monotonic part,
// so a value written and read back compares equal.
func (s *Store) stamp() time.Time { return s.now().UTC().Round(0) }

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

// newID returns a random 16-hex-character id.
func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// uniqueViolation reports the "table.column" of a UNIQUE/PRIMARY KEY failure.
func uniqueViolation(err error) (string, bool) {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return "", false
	}
	if se.Code() != sqlite3.SQLITE_CONSTRAINT_UNIQUE && se.Code() != sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY {
		return "", false
	}
	msg := se.Error()
	if i := strings.Index(msg, "constraint failed: "); i >= 0 {
		col := msg[i+len("constraint failed: "):]
		if j := strings.IndexAny(col, " ("); j >= 0 {
			col = col[:j]
		}
		return col, true
	}
	return "", true
}

// conflictErr maps a unique violation to api.ErrExists naming what clashed.
func conflictErr(kind, name string, err error) error {
	col, ok := uniqueViolation(err)
	if !ok {
		return fmt.Errorf("%s %q: %w", kind, name, err)
	}
	switch {
	case strings.HasSuffix(col, ".name"), strings.HasSuffix(col, ".id"), col == "":
		return fmt.Errorf("%s %q: %w", kind, name, api.ErrExists)
	default:
		field := col[strings.LastIndex(col, ".")+1:]
		return fmt.Errorf("%s %q: %s already in use by another %s: %w", kind, name, field, kind, api.ErrExists)
	}
}

func notFound(kind, name string) error { return fmt.Errorf("%s %q: %w", kind, name, api.ErrNotFound) }

// --- VMs ---

const vmColumns = `id, name, image, kernel, vcpu, memory_mib, disk_bytes, work_disk_bytes,
	guest_ip, mac, tap, state, last_error, clone_method, dir, created_at, updated_at, root_format, root_backing, vmm`

func validateVM(vm *VM) error {
	switch {
	case vm.Name == "":
		return fmt.Errorf("%w: vm name is empty", api.ErrInvalid)
	case vm.VCPU < 0 || vm.MemoryMiB < 0 || vm.DiskBytes < 0 || vm.WorkDiskBytes < 0:
		return fmt.Errorf("vm %q: %w: negative size", vm.Name, api.ErrInvalid)
	case vm.RootFormat != "" && vm.RootFormat != FormatRaw && vm.RootFormat != FormatQcow2:
		return fmt.Errorf("vm %q: %w: root disk format %q", vm.Name, api.ErrInvalid, vm.RootFormat)
	case vm.VMM != "" && !vmmRE.MatchString(vm.VMM):
		return fmt.Errorf("vm %q: %w: vmm %q", vm.Name, api.ErrInvalid, vm.VMM)
	}
	switch vm.State {
	case StateCreating, StateRunning, StateStopped, StateError:
	default:
		return fmt.Errorf("vm %q: %w: unknown state %q", vm.Name, api.ErrInvalid, vm.State)
	}
	return nil
}

// CreateVM inserts vm, assigning an id when it has none and setting both
// timestamps. A taken name (or IP, MAC, TAP) is api.ErrExists.
func (s *Store) CreateVM(ctx context.Context, vm *VM) error {
	if err := validateVM(vm); err != nil {
		return err
	}
	v := *vm
	if v.ID == "" {
		v.ID = newID()
	}
	v.CreatedAt = s.stamp()
	v.UpdatedAt = v.CreatedAt
	v.RootFormat = rootFormat(v.RootFormat)
	v.VMM = vmmName(v.VMM)
	_, err := s.db.ExecContext(ctx, `INSERT INTO vms (`+vmColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		v.ID, v.Name, v.Image, v.Kernel, v.VCPU, v.MemoryMiB, v.DiskBytes, v.WorkDiskBytes,
		v.GuestIP, v.MAC, v.Tap, v.State, v.LastError, v.CloneMethod, v.Dir,
		v.CreatedAt.UnixNano(), v.UpdatedAt.UnixNano(), v.RootFormat, v.RootBacking, v.VMM)
	if err != nil {
		return conflictErr("vm", v.Name, err)
	}
	*vm = v
	return nil
}

type scanner interface{ Scan(dest ...any) error }

func scanVM(r scanner) (VM, error) {
	var v VM
	var created, updated int64
	err := r.Scan(&v.ID, &v.Name, &v.Image, &v.Kernel, &v.VCPU, &v.MemoryMiB, &v.DiskBytes, &v.WorkDiskBytes,
		&v.GuestIP, &v.MAC, &v.Tap, &v.State, &v.LastError, &v.CloneMethod, &v.Dir, &created, &updated,
		&v.RootFormat, &v.RootBacking, &v.VMM)
	v.CreatedAt, v.UpdatedAt = fromNanos(created), fromNanos(updated)
	return v, err
}

// GetVM returns the VM whose id or name is nameOrID; an exact id match wins.
func (s *Store) GetVM(ctx context.Context, nameOrID string) (VM, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM vms
		WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1`, nameOrID)
	v, err := scanVM(row)
	if errors.Is(err, sql.ErrNoRows) {
		return VM{}, notFound("vm", nameOrID)
	}
	if err != nil {
		return VM{}, fmt.Errorf("vm %q: %w", nameOrID, err)
	}
	return v, nil
}

// ListVMs returns all VMs, oldest first.
func (s *Store) ListVMs(ctx context.Context) ([]VM, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+vmColumns+` FROM vms ORDER BY created_at, rowid`)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	defer rows.Close()
	var out []VM
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, fmt.Errorf("list vms: %w", err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	return out, nil
}

// UpdateVM writes every field of vm (by id) except CreatedAt, and sets
// UpdatedAt. An unknown id is api.ErrNotFound.
func (s *Store) UpdateVM(ctx context.Context, vm *VM) error {
	if err := validateVM(vm); err != nil {
		return err
	}
	updated := s.stamp()
	format, vmm := rootFormat(vm.RootFormat), vmmName(vm.VMM)
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET name = ?, image = ?, kernel = ?, vcpu = ?, memory_mib = ?,
		disk_bytes = ?, work_disk_bytes = ?, guest_ip = ?, mac = ?, tap = ?, state = ?, last_error = ?,
		clone_method = ?, dir = ?, root_format = ?, root_backing = ?, vmm = ?, updated_at = ? WHERE id = ?`,
		vm.Name, vm.Image, vm.Kernel, vm.VCPU, vm.MemoryMiB, vm.DiskBytes, vm.WorkDiskBytes,
		vm.GuestIP, vm.MAC, vm.Tap, vm.State, vm.LastError, vm.CloneMethod, vm.Dir, format, vm.RootBacking, vmm,
		updated.UnixNano(), vm.ID)
	if err != nil {
		return conflictErr("vm", vm.Name, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("vm %q: %w", vm.Name, err)
	} else if n == 0 {
		return notFound("vm", vm.ID)
	}
	vm.UpdatedAt, vm.RootFormat, vm.VMM = updated, format, vmm
	return nil
}

// DeleteVM removes the VM with id; an unknown id is api.ErrNotFound.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	return s.deleteRow(ctx, "vm", `DELETE FROM vms WHERE id = ?`, id)
}

// UsedIPs returns the guest IPs assigned to VMs.
func (s *Store) UsedIPs(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT guest_ip FROM vms WHERE guest_ip <> '' ORDER BY guest_ip`)
	if err != nil {
		return nil, fmt.Errorf("used ips: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var ip string
		if err := rows.Scan(&ip); err != nil {
			return nil, fmt.Errorf("used ips: %w", err)
		}
		out = append(out, ip)
	}
	return out, rows.Err()
}

func (s *Store) deleteRow(ctx context.Context, kind, query, key string) error {
	res, err := s.db.ExecContext(ctx, query, key)
	if err != nil {
		return fmt.Errorf("delete %s %q: %w", kind, key, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("delete %s %q: %w", kind, key, err)
	}
	if n == 0 {
		return notFound(kind, key)
	}
	return nil
}

// --- kernels ---

const kernelColumns = `name, version, source, path, initrd, sha256, created_at`

// CreateKernel inserts k and sets CreatedAt; a taken name is api.ErrExists.
func (s *Store) CreateKernel(ctx context.Context, k *Kernel) error {
	if k.Name == "" {
		return fmt.Errorf("%w: kernel name is empty", api.ErrInvalid)
	}
	created := s.stamp()
	_, err := s.db.ExecContext(ctx, `INSERT INTO kernels (`+kernelColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		k.Name, k.Version, k.Source, k.Path, k.Initrd, k.SHA256, created.UnixNano())
	if err != nil {
		return conflictErr("kernel", k.Name, err)
	}
	k.CreatedAt = created
	return nil
}

func scanKernel(r scanner) (Kernel, error) {
	var k Kernel
	var created int64
	err := r.Scan(&k.Name, &k.Version, &k.Source, &k.Path, &k.Initrd, &k.SHA256, &created)
	k.CreatedAt = fromNanos(created)
	return k, err
}

// GetKernel returns the kernel called name, or api.ErrNotFound.
func (s *Store) GetKernel(ctx context.Context, name string) (Kernel, error) {
	k, err := scanKernel(s.db.QueryRowContext(ctx, `SELECT `+kernelColumns+` FROM kernels WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return Kernel{}, notFound("kernel", name)
	}
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel %q: %w", name, err)
	}
	return k, nil
}

// ListKernels returns all kernels, oldest first.
func (s *Store) ListKernels(ctx context.Context) ([]Kernel, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+kernelColumns+` FROM kernels ORDER BY created_at, rowid`)
	if err != nil {
		return nil, fmt.Errorf("list kernels: %w", err)
	}
	defer rows.Close()
	var out []Kernel
	for rows.Next() {
		k, err := scanKernel(rows)
		if err != nil {
			return nil, fmt.Errorf("list kernels: %w", err)
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// DeleteKernel removes the kernel called name, or returns api.ErrNotFound.
func (s *Store) DeleteKernel(ctx context.Context, name string) error {
	return s.deleteRow(ctx, "kernel", `DELETE FROM kernels WHERE name = ?`, name)
}

// --- images ---

const imageColumns = `name, source, path, kernel_ref, size_bytes, created_at`

// CreateImage inserts img and sets CreatedAt; a taken name is api.ErrExists.
func (s *Store) CreateImage(ctx context.Context, img *Image) error {
	switch {
	case img.Name == "":
		return fmt.Errorf("%w: image name is empty", api.ErrInvalid)
	case img.SizeBytes < 0:
		return fmt.Errorf("image %q: %w: negative size", img.Name, api.ErrInvalid)
	}
	created := s.stamp()
	_, err := s.db.ExecContext(ctx, `INSERT INTO images (`+imageColumns+`) VALUES (?, ?, ?, ?, ?, ?)`,
		img.Name, img.Source, img.Path, img.KernelRef, img.SizeBytes, created.UnixNano())
	if err != nil {
		return conflictErr("image", img.Name, err)
	}
	img.CreatedAt = created
	return nil
}

func scanImage(r scanner) (Image, error) {
	var img Image
	var created int64
	err := r.Scan(&img.Name, &img.Source, &img.Path, &img.KernelRef, &img.SizeBytes, &created)
	img.CreatedAt = fromNanos(created)
	return img, err
}

// GetImage returns the image called name, or api.ErrNotFound.
func (s *Store) GetImage(ctx context.Context, name string) (Image, error) {
	img, err := scanImage(s.db.QueryRowContext(ctx, `SELECT `+imageColumns+` FROM images WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return Image{}, notFound("image", name)
	}
	if err != nil {
		return Image{}, fmt.Errorf("image %q: %w", name, err)
	}
	return img, nil
}

// ListImages returns all images, oldest first.
func (s *Store) ListImages(ctx context.Context) ([]Image, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+imageColumns+` FROM images ORDER BY created_at, rowid`)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	defer rows.Close()
	var out []Image
	for rows.Next() {
		img, err := scanImage(rows)
		if err != nil {
			return nil, fmt.Errorf("list images: %w", err)
		}
		out = append(out, img)
	}
	return out, rows.Err()
}

// DeleteImage removes the image called name, or returns api.ErrNotFound.
func (s *Store) DeleteImage(ctx context.Context, name string) error {
	return s.deleteRow(ctx, "image", `DELETE FROM images WHERE name = ?`, name)
}
