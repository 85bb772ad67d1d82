// Package cli implements the banger command line: one file per command
// group; each parses flags, calls the daemon, and renders.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/termsafe"
)

// exitCode carries a command's chosen exit status (e.g. the remote command's).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// app is the state shared by every command of one invocation.
type app struct {
	stateDir string
	json     bool
	noStart  bool
	// allowRoot lets the CLI (and the daemon it starts) run as root: the
	// all-in-one mode (--allow-root or BANGER_ALLOW_ROOT=1).
	allowRoot bool
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer
	layout    paths.Layout
}

// Main runs the CLI and returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer cancel()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ec exitCode
	if errors.As(err, &ec) {
		return int(ec)
	}
	fmt.Fprintln(stderr, "banger: "+oneLine(err))
	var re runErr
	if errors.As(err, &re) {
		return 125
	}
	return 1
}

// oneLine is the first line of an error for the terminal. Errors carry guest
// text (console tails, command output), so escapes and controls go.
func oneLine(err error) string {
	s := err.Error()
	var we *api.Error
	if errors.As(err, &we) {
		msg := we.Message
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		s = fmt.Sprintf("%s [%s, op %s]", msg, we.Code, we.OpID)
	} else if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return termsafe.Field(s)
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "banger",
		Short:         "Linux microVMs as sandboxes for developers and coding agents",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if cmd.HasSubCommands() {
				return nil // a command group only prints its help
			}
			if err := a.refuseRoot(os.Geteuid()); err != nil {
				return err
			}
			if a.stateDir != "" {
				a.layout = paths.Layout{Root: a.stateDir}
				return nil
			}
			l, err := paths.Default()
			a.layout = l
			return err
		},
	}
	root.PersistentFlags().StringVar(&a.stateDir, "state-dir", "", "state root (default $"+paths.EnvStateDir+" or ~/.local/state/banger)")
	root.PersistentFlags().BoolVar(&a.json, "json", false, "print JSON")
	root.PersistentFlags().BoolVar(&a.noStart, "no-autostart", false, "do not start bangerd when it is not running")
	root.PersistentFlags().BoolVar(&a.allowRoot, "allow-root", os.Getenv("BANGER_ALLOW_ROOT") == "1",
		"run as root: the all-in-one mode, bangerd and every VMM as root (env BANGER_ALLOW_ROOT=1)")
	root.AddCommand(a.vmCmd(), a.kernelCmd(), a.imageCmd(), a.snapshotCmd(), a.capCmd(), a.daemonCmd(), a.doctorCmd(), a.systemCmd())
	root.AddCommand(a.sshConfigCmd())
	// cobra adds these at Execute; added now, so the walk below covers them.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	rejectUnknownCommands(root)
	return root
}

// rejectUnknownCommands makes every command group in the tree fail on an
// argument that is none of its commands: cobra only does that for the root,
// and a group without a Run prints its help and exits 0, so a script with
// a typo (`banger vm sesion list`) would succeed. A bare group still prints
// its help and exits 0. Groups that run something themselves keep their own
// argument checks.
func rejectUnknownCommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		rejectUnknownCommands(sub)
	}
	if !c.HasSubCommands() || c.Runnable() {
		return
	}
	c.Args = unknownCommand
	c.RunE = func(cmd *cobra.Command, args []string) error { return cmd.Help() }
	if !c.HasParent() {
		// A group is runnable now only to check its arguments: its usage
		// still shows `<group> [command]`, not `<group> [flags]`.
		c.SetUsageTemplate(strings.Replace(c.UsageTemplate(),
			"{{if .Runnable}}", "{{if and .Runnable (not .HasAvailableSubCommands)}}", 1))
	}
}

// unknownCommand fails on any argument given to a command group, on one
// line (the CLI prints an error's first line), with cobra's suggestions.
func unknownCommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	var sugg []string
	if !cmd.DisableSuggestions {
		sugg = cmd.SuggestionsFor(args[0])
	}
	switch len(sugg) {
	case 0:
		msg += fmt.Sprintf("; see '%s --help'", cmd.CommandPath())
	case 1:
		msg += fmt.Sprintf("; did you mean %q?", sugg[0])
	default:
		for i, s := range sugg {
			sugg[i] = strconv.Quote(s)
		}
		msg += "; did you mean one of " + strings.Join(sugg, ", ") + "?"
	}
	return errors.New(msg)
}

// refuseRoot stops a root CLI unless told: as root, the daemon it starts
// and every VMM run as root too.
func (a *app) refuseRoot(euid int) error {
	if euid != 0 || a.allowRoot {
		return nil
	}
	return fmt.Errorf("refusing to run as root: run banger as your own user with the helper "+
		"(`sudo banger system helper --owner <you>` in another terminal), "+
		"or pass --allow-root (BANGER_ALLOW_ROOT=1) for the all-in-one mode where bangerd and every VM run as root: %w", api.ErrInvalid)
}

func (a *app) client() *rpc.Client { return rpc.NewClient(a.layout.Socket()) }

// call invokes a daemon method, starting the daemon first when none answers.
func (a *app) call(ctx context.Context, method string, params, result any, opts ...rpc.CallOption) error {
	err := a.client().Call(ctx, method, params, result, opts...)
	if !errors.Is(err, rpc.ErrNoDaemon) || a.noStart {
		return err
	}
	if serr := a.systemDaemonDown(err); serr != nil {
		return serr
	}
	if serr := a.startDaemon(ctx); serr != nil {
		return fmt.Errorf("daemon not running and could not be started: %w", serr)
	}
	return a.client().Call(ctx, method, params, result, opts...)
}

// startDaemon starts bangerd and waits until it answers. A bangerd that
// still holds the pid file lock without answering is shutting down (it
// removes its socket first) or starting: wait for it to exit, then start a
// fresh one, or for it to answer.
func (a *app) startDaemon(ctx context.Context) error {
	bin, err := system.Executable("bangerd")
	if err != nil {
		return fmt.Errorf("find bangerd: %w", err)
	}
	if err := a.layout.Ensure(); err != nil {
		return err
	}
	const answerWait = 30 * time.Second
	deadline := time.Now().Add(daemonStopWait + answerWait)
	var spawned time.Time
	spawns, waiting := 0, false
	for {
		held, herr := daemonLockHeld(a.layout.PID())
		switch {
		case herr != nil:
			return fmt.Errorf("daemon lock: %w", herr)
		case held && spawns == 0 && !waiting:
			waiting = true
			fmt.Fprintln(a.stderr, "banger: waiting for the previous bangerd to exit")
		// A bangerd we started takes the lock within moments; one that lost
		// the lock to a probe (see daemonLockHeld) or to another CLI's
		// bangerd exited, and a second try settles it.
		case !held && spawns < 3 && time.Since(spawned) > time.Second:
			if spawns == 0 {
				fmt.Fprintf(a.stderr, "banger: starting bangerd (log: %s)\n", a.layout.Log())
				deadline = time.Now().Add(answerWait)
			}
			// The daemon owns and rotates its log (--log-file) and points its own
			// stdout/stderr there; the redirect here only catches what it prints
			// before it has opened the log.
			_, err = system.Exec{}.Start(ctx, system.ProcSpec{Path: bin, Args: []string{"--state-dir", a.layout.Root, "--log-file", a.layout.Log()},
				Stdout: a.layout.Log(), Env: passEnv()})
			if err != nil {
				return err
			}
			spawns++
			spawned = time.Now()
		}
		var st api.DaemonStatus
		err = a.client().Call(ctx, api.MethodDaemonStatus, nil, &st)
		if err == nil {
			return nil
		}
		if !errors.Is(err, rpc.ErrNoDaemon) && !errors.Is(err, api.ErrShuttingDown) {
			return err
		}
		if time.Now().After(deadline) {
			if spawns == 0 {
				return fmt.Errorf("the previous bangerd (pid %d) still holds %s after %s: %w",
					readDaemonPID(a.layout.PID()), a.layout.PID(), daemonStopWait, api.ErrBusy)
			}
			return fmt.Errorf("bangerd did not answer within %s (see %s): %w", answerWait, a.layout.Log(), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// passEnv forwards banger's own settings to an auto-started daemon.
func passEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "BANGER_") || strings.HasPrefix(kv, "XDG_STATE_HOME=") {
			out = append(out, kv)
		}
	}
	return out
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func errorsIsNoDaemon(err error) bool { return errors.Is(err, rpc.ErrNoDaemon) }
