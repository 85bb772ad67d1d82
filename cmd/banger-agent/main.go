// Command banger-agent runs inside banger guests. As PID 1 of banger's
// initramfs (or as "banger-agent init") it prepares the root file system and
// execs the real init. Build it static: CGO_ENABLED=0.
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/banger-dev/banger/internal/agentinit"
	"github.com/banger-dev/banger/internal/system"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	help string
	run  func(args []string, stdout, stderr io.Writer) int
}

func commands() map[string]command {
	return map[string]command{
		"init":              {"prepare the root file system and exec its init (PID 1 of the initramfs)", runInit},
		"firstboot":         {"init of images without systemd: install systemd and sshd, then exec systemd", runFirstBoot},
		"serve":             {"serve the host daemon on the virtio-serial port and vsock", runServe},
		"session-supervise": {"supervise one session (started by serve; STATE_DIR RUN_DIR NAME, spec on stdin)", runSupervise},
		"version":           {"print the version", runVersion},
	}
}

func main() {
	// Started as banger-firstboot (the init= of images without systemd).
	if filepath.Base(os.Args[0]) == filepath.Base(agentinit.FirstBootPath) {
		os.Exit(runFirstBoot(nil, os.Stdout, os.Stderr))
	}
	// The kernel runs /init with no subcommand (and may pass unknown boot
	// arguments as argv), so PID 1 always means init.
	if os.Getpid() == 1 {
		os.Exit(runInit(nil, os.Stdout, os.Stderr))
	}
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	c, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "banger-agent: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
	return c.run(args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: banger-agent <command>")
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, cmds[n].help)
	}
}

func runVersion(_ []string, stdout, _ io.Writer) int {
	fmt.Fprintf(stdout, "banger-agent %s\n", version)
	return 0
}

func runInit(args []string, _, stderr io.Writer) int {
	// Outside the initramfs, init would mount disks and switch the root of
	// whatever machine it runs on: demand an explicit --force.
	if os.Getpid() != 1 && (len(args) != 1 || args[0] != "--force") {
		fmt.Fprintln(stderr, "banger-agent init: not PID 1; this switches the root file system of the running system (pass --force to run anyway)")
		return 2
	}
	console := openConsole()
	log := &agentinit.Logger{W: console}
	log.Printf("banger-agent %s starting", version)
	err := agentinit.Run(log)
	log.Printf("FATAL: %v", err)
	if os.Getpid() != 1 {
		return 1
	}
	// PID 1 must never exit: the resulting kernel panic would scroll the
	// message away. Park instead (time.Sleep, not select{}, which the Go
	// runtime reports as a deadlock).
	for {
		time.Sleep(time.Hour)
	}
}

// openConsole returns /dev/console, or stderr if it cannot be opened.
func openConsole() io.Writer {
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|os.O_APPEND, 0); err == nil {
		return f
	}
	return os.Stderr
}

func runFirstBoot(args []string, _, stderr io.Writer) int {
	if os.Getpid() != 1 && (len(args) != 1 || args[0] != "--force") {
		fmt.Fprintln(stderr, "banger-agent firstboot: not PID 1; this installs packages and execs systemd (pass --force to run anyway)")
		return 2
	}
	console := openConsole()
	log := &agentinit.Logger{W: console}
	log.Printf("banger-agent %s first boot", version)
	err := agentinit.FirstBoot(log, system.Exec{}, console)
	log.Printf("FATAL: %v", err)
	if os.Getpid() != 1 {
		return 1
	}
	for {
		time.Sleep(time.Hour)
	}
}
