package vmm

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// TrimLog cuts the log at path, which a VMM holds open O_APPEND, once it has
// grown past max: the last keep bytes stay, after a marker line, and the
// VMM goes on appending at the new end. Bytes the VMM writes between the
// read and the cut are lost, which bounds the file instead of trusting the
// guest that fills it.
func TrimLog(path string, max, keep int64) error {
	st, err := os.Lstat(path)
	if err != nil || !st.Mode().IsRegular() || st.Size() <= max {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var tail []byte
	if keep > 0 {
		if keep > st.Size() {
			keep = st.Size()
		}
		tail = make([]byte, keep)
		if _, err := f.ReadAt(tail, st.Size()-keep); err != nil && err != io.EOF {
			return err
		}
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	msg := fmt.Sprintf("[banger: %s truncated at %d bytes", filepath.Base(path), st.Size())
	if keep > 0 {
		msg += fmt.Sprintf("; its last %d bytes follow", keep)
	}
	if _, err := f.WriteString(msg + "]\n"); err != nil {
		return err
	}
	_, err = f.Write(tail)
	return err
}

// WatchLog runs TrimLog every interval until stop reports true.
func WatchLog(path string, max, keep int64, every time.Duration, stop func() bool) {
	t := time.NewTicker(every)
	defer t.Stop()
	for range t.C {
		if stop() {
			return
		}
		_ = TrimLog(path, max, keep)
	}
}
