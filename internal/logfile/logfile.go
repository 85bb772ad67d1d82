// Package logfile keeps append-only logs (a VM's serial console, the daemon's
// own log) on disk within a fixed size: the live file is rotated to
// "<path>.1" (older ones shift to ".2", ...) before a write would take it past
// the segment size, and the oldest segment is dropped. The size on disk is
// therefore at most Segment*(Keep+1) bytes whatever is written, and the
// latest bytes are always kept.
package logfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// Policy bounds one log.
type Policy struct {
	// Segment is the most bytes one file holds (> 0).
	Segment int64
	// Keep is how many rotated files are kept next to the live one (>= 0);
	// with 0 the live file is truncated when full.
	Keep int
	// OnOpen, when set, is called with every newly opened live file (also the
	// first). The daemon points its stdout/stderr at it so that rotation
	// covers what the Go runtime writes there too.
	OnOpen func(*os.File) error
}

// Max is the most bytes the log takes on disk.
func (p Policy) Max() int64 { return p.Segment * int64(p.Keep+1) }

// maxKeep bounds the rotated files Tail and Remove look at.
const maxKeep = 9

// Writer appends to a capped log. It is safe for concurrent use.
type Writer struct {
	path string
	pol  Policy

	mu   sync.Mutex
	f    *os.File
	size int64
}

// Open opens path for appending (creating it 0600), continuing a log a
// previous process left (a restarted daemon adopting a running VM).
func Open(path string, pol Policy) (*Writer, error) {
	if pol.Segment <= 0 || pol.Keep < 0 || pol.Keep > maxKeep {
		return nil, fmt.Errorf("log %s: bad policy %+v", path, pol)
	}
	w := &Writer{path: path, pol: pol}
	if err := w.open(os.O_APPEND); err != nil {
		return nil, err
	}
	return w, nil
}

// open opens the live file. O_NOFOLLOW: the directory may be writable by a
// less trusted user (the VMM's), who must not be able to point the log at
// another file.
func (w *Writer) open(flag int) error {
	f, err := os.OpenFile(w.path, os.O_CREATE|os.O_WRONLY|flag|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open log: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("open log %s: not a regular file", w.path)
	}
	if w.pol.OnOpen != nil {
		if err := w.pol.OnOpen(f); err != nil {
			f.Close()
			return fmt.Errorf("open log: %w", err)
		}
	}
	if w.f != nil {
		w.f.Close()
	}
	w.f, w.size = f, st.Size()
	return nil
}

// Write appends p, rotating as often as needed so that no file ever exceeds
// the segment size. Only a write larger than a segment is split; one larger
// than the whole log keeps its tail.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return 0, os.ErrClosed
	}
	n := len(p)
	// Bytes that would be rotated away within this same call are skipped.
	if max := w.pol.Max(); int64(len(p)) > max {
		p = p[int64(len(p))-max:]
	}
	for len(p) > 0 {
		room := w.pol.Segment - w.size
		// A write that fits in a segment is not split (log lines stay whole).
		if room <= 0 || (int64(len(p)) > room && int64(len(p)) <= w.pol.Segment && w.size > 0) {
			if err := w.rotate(); err != nil {
				return n - len(p), err
			}
			continue
		}
		chunk := p
		if int64(len(chunk)) > room {
			chunk = chunk[:room]
		}
		m, err := w.f.Write(chunk)
		w.size += int64(m)
		p = p[m:]
		if err != nil {
			return n - len(p), err
		}
	}
	return n, nil
}

// rotate shifts <path>.k-1 to <path>.k, the live file to <path>.1 and opens
// a new live file; with Keep 0 it truncates the live file instead.
func (w *Writer) rotate() error {
	if w.pol.Keep == 0 {
		if err := w.f.Truncate(0); err != nil {
			return fmt.Errorf("rotate log: %w", err)
		}
		w.size = 0
		return nil
	}
	for k := w.pol.Keep; k > 1; k-- {
		if err := os.Rename(segment(w.path, k-1), segment(w.path, k)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotate log: %w", err)
		}
	}
	if err := os.Rename(w.path, segment(w.path, 1)); err != nil {
		return fmt.Errorf("rotate log: %w", err)
	}
	return w.open(os.O_TRUNC | os.O_APPEND)
}

// Close closes the live file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

func segment(path string, k int) string {
	if k == 0 {
		return path
	}
	return path + "." + strconv.Itoa(k)
}

// Tail returns the last n bytes of the log at path, across the live file and
// its rotated predecessors. A missing live file is os.ErrNotExist.
func Tail(path string, n int64) ([]byte, error) {
	if n <= 0 {
		return nil, nil
	}
	var parts [][]byte
	left := n
	for k := 0; k <= maxKeep && left > 0; k++ {
		b, err := tailFile(segment(path, k), left)
		if err != nil {
			if k > 0 && errors.Is(err, os.ErrNotExist) {
				break
			}
			return nil, err
		}
		parts = append(parts, b)
		left -= int64(len(b))
	}
	var out []byte
	for i := len(parts) - 1; i >= 0; i-- {
		out = append(out, parts[i]...)
	}
	return out, nil
}

func tailFile(path string, n int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("log %s: not a regular file", path)
	}
	off := max(st.Size()-n, 0)
	// The file may grow while it is read: never return more than n.
	return io.ReadAll(io.NewSectionReader(f, off, n))
}

// Remove deletes the live file and every rotated one.
func Remove(path string) error {
	var errs []error
	for k := 0; k <= maxKeep; k++ {
		if err := os.Remove(segment(path, k)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
