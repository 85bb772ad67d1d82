package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/logfile"
)

// daemonLogPolicy bounds <state>/bangerd.log: rotated at 10 MiB, three old
// files kept (bangerd.log.1 .. .3), so at most 40 MiB on disk.
func daemonLogPolicy() logfile.Policy { return logfile.Policy{Segment: 10 << 20, Keep: 3} }

// openDaemonLog opens the rotating daemon log and points each fd of stdio
// (the process's stdout and stderr) at every new live file, so what is
// written there outside slog (a panic, the runtime's fatal errors, what the
// CLI redirected before this point) is rotated with the log rather than
// growing a file nobody rotates.
func openDaemonLog(path string, stdio ...int) (*logfile.Writer, error) {
	pol := daemonLogPolicy()
	pol.OnOpen = func(f *os.File) error {
		for _, fd := range stdio {
			if err := unix.Dup3(int(f.Fd()), fd, 0); err != nil {
				return fmt.Errorf("redirect fd %d to %s: %w", fd, path, err)
			}
		}
		return nil
	}
	return logfile.Open(path, pol)
}
