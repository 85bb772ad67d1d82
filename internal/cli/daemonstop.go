package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
)

// daemonStopWait bounds how long `daemon stop` waits for bangerd to exit:
// its shutdown grace for requests in flight (10 s by default) plus their
// rollback, or a VM stop in flight, which is never cut short.
const daemonStopWait = 60 * time.Second

// daemonStopView is `daemon stop --json`.
type daemonStopView struct {
	// Stopped is false when no bangerd was running.
	Stopped bool `json:"stopped"`
	PID     int  `json:"pid,omitempty"`
}

// daemonStopCmd asks bangerd to stop and returns once its process has exited
// (it answers first, then drains), so a command run right after starts a
// fresh daemon instead of reaching one that is going away.
func (a *app) daemonStopCmd() *cobra.Command {
	return &cobra.Command{
		Use: "stop", Short: "Stop bangerd and wait until it has exited (running VMs keep running and are adopted at next start)",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var res api.DaemonStopResult
			err := a.client().Call(cmd.Context(), api.MethodDaemonStop, nil, &res)
			switch {
			case errorsIsNoDaemon(err), errors.Is(err, api.ErrShuttingDown):
				// No socket: none runs, or one is shutting down already (it
				// removes its socket first). Wait for that one.
				held, herr := daemonLockHeld(a.layout.PID())
				if herr != nil {
					return fmt.Errorf("daemon stop: %w", herr)
				}
				if !held {
					if a.json {
						return a.printJSON(daemonStopView{})
					}
					fmt.Fprintln(a.stdout, "bangerd is not running")
					return nil
				}
				res.PID = readDaemonPID(a.layout.PID())
			case err != nil:
				return err
			}
			if err := waitDaemonExit(cmd.Context(), a.layout.PID(), daemonStopWait); err != nil {
				return fmt.Errorf("%w (requests in flight may still be rolling back; see %s)", err, a.layout.Log())
			}
			if a.json {
				return a.printJSON(daemonStopView{Stopped: true, PID: res.PID})
			}
			if res.PID > 0 {
				fmt.Fprintf(a.stdout, "bangerd stopped (pid %d)\n", res.PID)
			} else {
				fmt.Fprintln(a.stdout, "bangerd stopped")
			}
			return nil
		},
	}
}

// daemonLockHeld reports whether a bangerd holds its exclusive lock on
// pidFile (it does for its whole life, shutdown included). Probing takes
// the lock for an instant: a bangerd starting at that very instant exits,
// which startDaemon covers by starting another.
func daemonLockHeld(pidFile string) (bool, error) {
	f, err := os.OpenFile(pidFile, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close() // closing drops the lock if we got it
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	return false, err
}

// readDaemonPID is the pid bangerd wrote in pidFile, 0 if unreadable.
func readDaemonPID(pidFile string) int {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// waitDaemonExit returns once no process holds the daemon's exclusive lock on
// pidFile, or fails with api.ErrBusy after limit.
func waitDaemonExit(ctx context.Context, pidFile string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		held, err := daemonLockHeld(pidFile)
		if err != nil {
			return fmt.Errorf("daemon stop: %w", err)
		}
		if !held {
			return nil
		}
		if time.Now().After(deadline) {
			who := "bangerd"
			if pid := readDaemonPID(pidFile); pid > 0 {
				who = fmt.Sprintf("bangerd (pid %d)", pid)
			}
			return fmt.Errorf("%s was asked to stop and is still running after %s (%s is locked): %w", who, limit, pidFile, api.ErrBusy)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
