package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
)

type execOpts struct {
	tty, noTTY bool
	env        []string
	dir        string
	via        string
}

func (o *execOpts) flags(c *cobra.Command) {
	c.Flags().BoolVarP(&o.tty, "tty", "t", false, "force a PTY")
	c.Flags().BoolVarP(&o.noTTY, "no-tty", "T", false, "never allocate a PTY")
	c.Flags().StringArrayVarP(&o.env, "env", "e", nil, "KEY=VALUE set in the remote command's environment")
	c.Flags().StringVarP(&o.dir, "workdir", "w", "", "run in this directory in the guest")
	c.Flags().StringVar(&o.via, "via", "", "transport: agent or ssh (default: the guest agent when it answers, else ssh)")
}

// commandParams turns the words after "--" into exec params: one word is a
// shell command line (like ssh), several are an argv quoted for the remote shell.
func commandParams(name string, words []string) api.ExecParams {
	p := api.ExecParams{Name: name}
	switch len(words) {
	case 0:
	case 1:
		p.Command = words[0]
	default:
		p.Argv = words
	}
	return p
}

// execStream runs p in the VM, streaming stdin/stdout/stderr, signals and
// window size, and returns the remote exit code.
func (a *app) execStream(ctx context.Context, p api.ExecParams, o execOpts) (int, error) {
	inFile, inIsFile := a.stdin.(*os.File)
	interactive := inIsFile && term.IsTerminal(int(inFile.Fd())) && isTerminal(a.stdout)
	p.TTY = (interactive || o.tty) && !o.noTTY
	for _, kv := range o.env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return 0, fmt.Errorf("--env %q: want KEY=VALUE: %w", kv, api.ErrInvalid)
		}
		if p.Env == nil {
			p.Env = map[string]string{}
		}
		p.Env[k] = v
	}
	if o.dir != "" {
		p.Dir = o.dir
	}
	if o.via != "" {
		p.Via = o.via
	}
	p.Stdin = true
	var tty *os.File
	if inIsFile && term.IsTerminal(int(inFile.Fd())) {
		tty = inFile
	}
	if p.TTY {
		p.Term = os.Getenv("TERM")
		if p.Term == "" {
			p.Term = "xterm-256color"
		}
		if tty != nil {
			cols, rows, restore, _ := rawTerminal(tty)
			defer restore()
			p.Cols, p.Rows = cols, rows
		}
	}
	in := newInputPump()
	defer in.close()
	in.forwardSignals(tty, true)
	in.copyStdin(a.stdin, nil)
	var res api.ExecResult
	err := a.call(ctx, api.MethodVMExec, p, &res, rpc.WithInput(in.ch), rpc.WithEvents(func(ev api.Event) {
		switch ev.Stream {
		case "stdout":
			_, _ = a.stdout.Write(ev.Data)
		case "stderr":
			_, _ = a.stderr.Write(ev.Data)
		}
	}))
	return res.ExitCode, err
}

func (a *app) vmSSHCmd() *cobra.Command {
	var o execOpts
	c := &cobra.Command{
		Use:   "ssh NAME [-- COMMAND...]",
		Short: "Open a shell in a VM, or run a command there (exit code propagated)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// `vm ssh` is SSH, whatever the guest agent offers.
			p := api.ExecParams{Name: args[0], Command: strings.Join(args[1:], " "), Via: "ssh"}
			code, err := a.execStream(cmd.Context(), p, o)
			return codeErr(code, err)
		},
	}
	o.flags(c)
	return c
}

func (a *app) vmExecCmd() *cobra.Command {
	var o execOpts
	var autoPrepare bool
	c := &cobra.Command{
		Use:   "exec NAME -- COMMAND...",
		Short: "Run a command in a running VM, in its prepared workspace if any (exit code propagated)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := commandParams(args[0], args[1:])
			if o.dir == "" {
				dir, err := a.workspaceDir(cmd.Context(), args[0], autoPrepare)
				if err != nil {
					return codeErr(0, err)
				}
				p.Dir = dir
			}
			code, err := a.execStream(cmd.Context(), p, o)
			return codeErr(code, err)
		},
	}
	o.flags(c)
	c.Flags().BoolVar(&autoPrepare, "auto-prepare", false, "resync the workspace first when the host repo changed since the last sync")
	return c
}

// codeErr maps a remote exit code to the CLI's; transport errors exit 125
// so they are not mistaken for the command's own failure.
func codeErr(code int, err error) error {
	if err != nil {
		return fmt.Errorf("%w", runErr{err})
	}
	if code != 0 {
		return exitCode(code)
	}
	return nil
}

type runErr struct{ error }

func (e runErr) Unwrap() error { return e.error }

func randomName() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return "run-" + hex.EncodeToString(b[:])
}

func (a *app) vmRunCmd() *cobra.Command {
	var p api.CreateVMParams
	var rm, cold bool
	var wsRepo string
	var o execOpts
	c := &cobra.Command{
		Use:   "run [--name N] [--rm] [--workspace PATH] -- COMMAND...",
		Short: "Create and boot a VM, run a command in it, and exit with its exit code",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if p.Name == "" {
				p.Name = randomName()
			}
			ctx := cmd.Context()
			p.Warm = !cold
			if _, err := a.createVM(cmd, p); err != nil {
				if rm {
					a.cleanupRun(p.Name)
				}
				return codeErr(0, err) // banger's failure, not the command's: 125
			}
			ep := commandParams(p.Name, args)
			if wsRepo != "" {
				repo, err := absRepo(wsRepo)
				if err == nil {
					var r api.WorkspacePrepareResult
					r, err = a.prepare(ctx, api.WorkspacePrepareParams{Name: p.Name, Repo: repo}, true)
					ep.Dir = r.Workspace.GuestPath
				}
				if err != nil {
					if rm {
						a.cleanupRun(p.Name)
					}
					return codeErr(0, fmt.Errorf("--workspace: %w", err))
				}
			}
			code, err := a.execStream(ctx, ep, o)
			if rm {
				a.cleanupRun(p.Name)
			}
			return codeErr(code, err)
		},
	}
	c.Flags().StringVar(&p.Name, "name", "", "VM name (default run-XXXXXX)")
	c.Flags().BoolVar(&rm, "rm", false, "delete the VM when the command finishes")
	c.Flags().BoolVar(&cold, "cold", false, "boot even when the image has a warm snapshot (image warm)")
	c.Flags().StringVar(&wsRepo, "workspace", "", "prepare this host git repository in the VM and run the command there")
	addCreateFlags(c, &p)
	o.flags(c)
	return c
}

// cleanupRun deletes a `vm run --rm` VM on a fresh context: the command's
// own context may already be cancelled.
func (a *app) cleanupRun(name string) {
	err := a.call(context.Background(), api.MethodVMDelete, api.DeleteVMParams{Name: name, Force: true}, nil)
	if err != nil && !errors.Is(err, api.ErrNotFound) {
		fmt.Fprintf(a.stderr, "banger: --rm: %s\n", oneLine(err))
	}
}

var _ io.Reader = (*os.File)(nil)
