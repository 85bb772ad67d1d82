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
	root.AddCommand(a.vmCmd(), a.kernelCmd(), a.imageCmd(), a.daemonCmd(), a.doctorCmd(), a.systemCmd())
	root.AddCommand(a.sshConfigCmd())
	return root
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

func (a *app) startDaemon(ctx context.Context) error {
	bin, err := system.Executable("bangerd")
	if err != nil {
		return fmt.Errorf("find bangerd: %w", err)
	}
	if err := a.layout.Ensure(); err != nil {
		return err
	}
	fmt.Fprintf(a.stderr, "banger: starting bangerd (log: %s)\n", a.layout.Log())
	// The daemon owns and rotates its log (--log-file) and points its own
	// stdout/stderr there; the redirect here only catches what it prints
	// before it has opened the log.
	_, err = system.Exec{}.Start(ctx, system.ProcSpec{Path: bin, Args: []string{"--state-dir", a.layout.Root, "--log-file", a.layout.Log()},
		Stdout: a.layout.Log(), Env: passEnv()})
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var st api.DaemonStatus
		err = a.client().Call(ctx, api.MethodDaemonStatus, nil, &st)
		if err == nil {
			return nil
		}
		if !errors.Is(err, rpc.ErrNoDaemon) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("bangerd did not answer within 30s (see %s): %w", a.layout.Log(), err)
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
