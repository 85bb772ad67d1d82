package main

import (
	"fmt"
	"io"
	"os"

	"github.com/banger-dev/banger/internal/agent"
)

// runSupervise is a session's supervisor: serve starts it with the session
// spec on stdin and a pipe at fd 3 that gets "ok PID" or "error MESSAGE".
func runSupervise(args []string, _, stderr io.Writer) int {
	ready := os.NewFile(3, "ready")
	if ready == nil {
		fmt.Fprintln(stderr, "banger-agent session-supervise: no ready pipe at fd 3 (started by banger-agent serve only)")
		return 2
	}
	if _, err := ready.Stat(); err != nil {
		fmt.Fprintln(stderr, "banger-agent session-supervise: no ready pipe at fd 3 (started by banger-agent serve only)")
		return 2
	}
	return agent.Supervise(args, os.Stdin, ready)
}
