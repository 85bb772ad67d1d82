package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/logfile"
	"github.com/banger-dev/banger/internal/vmm"
)

// The serial console is guest-controlled and unbounded, so QEMU never writes
// it to a file: it serves it on <Dir>/console.sock (server=on,wait=off) and
// the driver copies it into console.log through a logfile.Writer. QEMU drops
// what the guest prints while nobody is connected (the guest is never
// blocked; measured: a boot with no client takes as long as one with a
// client), so a daemon killed and restarted loses the bytes of that gap and
// picks up again with AttachConsole. The machine starts paused (-S) and is
// resumed only once the console is attached, so a log holds the whole boot.
const ConsoleMaxBytes = 4 << 20 // console.log + console.log.1, 2 MiB each

func consolePolicy() logfile.Policy { return logfile.Policy{Segment: ConsoleMaxBytes / 2, Keep: 1} }

// VMMLogMax bounds vmm.log, QEMU's own stdout/stderr (its diagnostics; guest
// error logging is off). QEMU appends to it itself, so it is checked every
// vmmLogCheck and truncated when past the limit: the overshoot is what QEMU
// writes in that interval.
const (
	VMMLogMax   = 1 << 20
	vmmLogCheck = time.Second
)

// pump copies one VMM's console socket into its capped log.
type pump struct {
	conn net.Conn
	done chan struct{}
}

// AttachConsole starts copying the console of the running QEMU of s into its
// capped log, continuing the file that is there. It is a no-op when this
// driver already copies it; the daemon calls it for every VM it adopts.
func (d *Driver) AttachConsole(s vmm.Spec) error {
	if err := checkPath("dir", s.Dir, true); err != nil {
		return err
	}
	return d.attachConsole(vmFiles(s.Dir))
}

func (d *Driver) attachConsole(f files) error {
	d.consMu.Lock()
	defer d.consMu.Unlock()
	if p := d.consoles[f.consoleSock]; p != nil {
		select {
		case <-p.done:
		default:
			return nil
		}
	}
	conn, err := net.DialTimeout("unix", f.consoleSock, qmpTimeout)
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	w, err := logfile.Open(f.console, consolePolicy())
	if err != nil {
		conn.Close()
		return fmt.Errorf("console: %w", err)
	}
	p := &pump{conn: conn, done: make(chan struct{})}
	if d.consoles == nil {
		d.consoles = map[string]*pump{}
	}
	d.consoles[f.consoleSock] = p
	go func() {
		defer func() {
			d.consMu.Lock()
			if d.consoles[f.consoleSock] == p {
				delete(d.consoles, f.consoleSock)
			}
			d.consMu.Unlock()
		}()
		defer close(p.done)
		defer w.Close()
		defer conn.Close()
		go capVMMLog(f.vmmLog, p.done)
		// The writer bounds what lands on disk; the copy ends when QEMU
		// exits (EOF) or the connection is closed by detachConsole.
		if _, err := io.Copy(w, conn); err != nil && !errors.Is(err, net.ErrClosed) {
			d.log().Warn("console copy stopped", "console", f.console, "err", err)
		}
	}()
	return nil
}

// detachConsole ends the copy of the console in f, first giving it grace to
// drain what an exited QEMU wrote.
func (d *Driver) detachConsole(f files, grace time.Duration) {
	d.consMu.Lock()
	p := d.consoles[f.consoleSock]
	delete(d.consoles, f.consoleSock)
	d.consMu.Unlock()
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	p.conn.Close()
	<-p.done
}

// capVMMLog truncates path whenever it grows past VMMLogMax, until done.
func capVMMLog(path string, done <-chan struct{}) {
	vmm.WatchLog(path, VMMLogMax, 0, vmmLogCheck, func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
}

// resume attaches the console of a machine QEMU started paused (-S) and
// lets it run; the caller goes on polling the status.
func (d *Driver) resume(ctx context.Context, f files) error {
	if err := d.attachConsole(f); err != nil {
		return err
	}
	_, err := qmpExec(ctx, f.qmp, "cont")
	return err
}

// consoleTailOrNone is the end of the console log for an error message.
func consoleTailOrNone(path string) string {
	b, err := logfile.Tail(path, consoleTail)
	if err != nil || len(b) == 0 {
		return "(empty)"
	}
	// Start at a line boundary when the tail cut one.
	if len(b) == consoleTail {
		if i := bytes.IndexByte(b, '\n'); i >= 0 && i+1 < len(b) {
			b = b[i+1:]
		}
	}
	if t := strings.TrimSpace(string(b)); t != "" {
		return t
	}
	return "(empty)"
}
