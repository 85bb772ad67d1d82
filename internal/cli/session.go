package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/termsafe"
)

// detachKey ends `vm session attach` and leaves the session running: Ctrl-].
const detachKey = 0x1d

func (a *app) vmSessionCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "session",
		Short: "Long-running commands the guest agent supervises: start, list, logs, attach, send, kill",
		Long: `A session is a command the VM's guest agent runs under a terminal of its
own and keeps running after the CLI exits, the daemon restarts or the agent
restarts. Its output is kept (the last 256 KiB in memory for attach, up to
16 MiB in /root/.banger/sessions/NAME.log) and its exit code recorded. After
the VM stops, its sessions are listed as ended ("vm stopped").`,
	}
	c.AddCommand(a.sessionStartCmd(), a.sessionListCmd(), a.sessionLogsCmd(), a.sessionAttachCmd(),
		a.sessionSendCmd(), a.sessionKillCmd())
	return c
}

func (a *app) sessionStartCmd() *cobra.Command {
	var name, dir string
	var env []string
	c := &cobra.Command{
		Use:   "start VM [--name NAME] [--cwd DIR] [--env K=V]... -- COMMAND...",
		Short: "Start a session; returns at once",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ep := commandParams(args[0], args[1:])
			p := api.SessionStartParams{Name: args[0], Session: name, Argv: ep.Argv, Command: ep.Command, Dir: dir}
			for _, kv := range env {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--env %q: want KEY=VALUE: %w", kv, api.ErrInvalid)
				}
				if p.Env == nil {
					p.Env = map[string]string{}
				}
				p.Env[k] = v
			}
			var s api.Session
			if err := a.call(cmd.Context(), api.MethodVMSessionStart, p, &s); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(s)
			}
			fmt.Fprintf(a.stdout, "started session %s in %s (pid %d)\n", termsafe.Field(s.Name), args[0], s.PID)
			return nil
		},
	}
	c.Flags().StringVar(&name, "name", "", "session name, [a-z0-9][a-z0-9-_.]* (default: from the command)")
	c.Flags().StringVar(&dir, "cwd", "", "working directory in the guest (default /root)")
	c.Flags().StringArrayVarP(&env, "env", "e", nil, "KEY=VALUE set in the session's environment")
	return c
}

func (a *app) sessionListCmd() *cobra.Command {
	return &cobra.Command{
		Use: "list VM", Aliases: []string{"ls"}, Short: "List a VM's sessions, running and ended", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var list []api.Session
			if err := a.call(cmd.Context(), api.MethodVMSessionList, api.NameParams{Name: args[0]}, &list); err != nil {
				return err
			}
			if a.json {
				if list == nil {
					list = []api.Session{}
				}
				return a.printJSON(list)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tEXIT\tSTARTED\tCOMMAND\tLAST OUTPUT")
			for _, s := range list {
				state, code := s.State, "-"
				if s.Reason != "" {
					state += " (" + s.Reason + ")"
				}
				if s.ExitCode != nil {
					code = fmt.Sprint(*s.ExitCode)
				}
				// Everything but the exit code and the time is guest text.
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", termsafe.Field(s.Name), termsafe.Field(state), code, ago(s.StartedAt),
					clip(termsafe.Field(s.Command), 40), clip(termsafe.Field(s.LastOutput), 60))
			}
			return tw.Flush()
		},
	}
}

// clip shortens s to n runes, marking the cut.
func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

func (a *app) sessionLogsCmd() *cobra.Command {
	var follow bool
	var tail int
	c := &cobra.Command{
		Use:   "logs VM SESSION [-f] [--tail N]",
		Short: "Print a session's output (the latest 16 MiB); -f follows it until it ends",
		Long: `Print a session's output as its terminal received it (like vm exec, the
bytes are your command's own and are printed unfiltered). -f keeps printing
what it writes until it ends or you press Ctrl-C.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if tail < 0 {
				return fmt.Errorf("--tail %d: want 0 or more: %w", tail, api.ErrInvalid)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			p := api.SessionParams{Name: args[0], Session: args[1], Tail: tail, Follow: follow}
			err := a.call(ctx, api.MethodVMSessionLogs, p, nil, rpc.WithEvents(func(ev api.Event) {
				if ev.Stream == api.StreamStdout {
					_, _ = a.stdout.Write(ev.Data)
				}
			}))
			if follow && ctx.Err() != nil && cmd.Context().Err() == nil {
				return nil // Ctrl-C ends a follow
			}
			return err
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the session ends")
	c.Flags().IntVar(&tail, "tail", 0, "only the last N lines (default: all kept)")
	return c
}

func (a *app) sessionAttachCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "attach VM SESSION",
		Short: "Join a session's terminal (recent output first); Ctrl-] detaches and leaves it running",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := a.attach(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			switch {
			case res.Detached:
				fmt.Fprintf(a.stderr, "\r\nbanger: detached from %s; it keeps running\n", args[1])
			case res.Ended:
				fmt.Fprintf(a.stderr, "\r\nbanger: session %s has ended (exit code %d)\n", args[1], res.ExitCode)
				if res.ExitCode > 0 {
					return exitCode(res.ExitCode)
				}
			}
			return nil
		},
	}
}

// attach streams the local terminal to a session until the detach key, the
// end of stdin, or the end of the session.
func (a *app) attach(ctx context.Context, vmName, session string) (api.SessionAttachResult, error) {
	p := api.SessionParams{Name: vmName, Session: session}
	fmt.Fprintf(a.stderr, "banger: attached to %s in %s; Ctrl-] detaches (the session keeps running)\n", session, vmName)
	in := newInputPump()
	defer in.close()
	if f, ok := a.stdin.(*os.File); ok {
		if cols, rows, restore, isTTY := rawTerminal(f); isTTY {
			defer restore()
			p.Cols, p.Rows = cols, rows
			in.forwardSignals(f, false)
		}
	}
	// The detach key, or the end of stdin, ends the input: the daemon and
	// the agent hand over the output before it, then the session runs on.
	in.copyStdin(a.stdin, func(chunk []byte) ([]byte, bool) {
		if i := bytes.IndexByte(chunk, detachKey); i >= 0 {
			return chunk[:i], true
		}
		return chunk, false
	})
	var res api.SessionAttachResult
	err := a.call(ctx, api.MethodVMSessionAttach, p, &res, rpc.WithInput(in.ch), rpc.WithEvents(func(ev api.Event) {
		if ev.Stream == api.StreamStdout {
			_, _ = a.stdout.Write(ev.Data)
		}
	}))
	return res, err
}

func (a *app) sessionSendCmd() *cobra.Command {
	var eof bool
	c := &cobra.Command{
		Use:   "send VM SESSION [--eof] < INPUT",
		Short: "Type stdin into a session's terminal",
		Long: `Type stdin into a session's terminal, as if typed at it. The session's
input stays open unless --eof, which then sends the terminal's EOF character
(Ctrl-D: a program reading a line sees the end of its input).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			in := newInputPump()
			defer in.close()
			in.copyStdin(a.stdin, nil)
			p := api.SessionParams{Name: args[0], Session: args[1], EOF: eof}
			return a.call(cmd.Context(), api.MethodVMSessionSend, p, nil, rpc.WithInput(in.ch))
		},
	}
	c.Flags().BoolVar(&eof, "eof", false, "then send the terminal's EOF character (Ctrl-D)")
	return c
}

func (a *app) sessionKillCmd() *cobra.Command {
	var sig string
	c := &cobra.Command{
		Use:   "kill VM SESSION [--signal TERM]",
		Short: "Signal a session's processes (TERM by default); its exit code is recorded",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			sig = strings.TrimPrefix(strings.ToUpper(sig), "SIG")
			p := api.SessionParams{Name: args[0], Session: args[1], Signal: sig}
			if err := a.call(cmd.Context(), api.MethodVMSessionKill, p, nil); err != nil {
				return err
			}
			if !a.json {
				fmt.Fprintf(a.stdout, "sent %s to session %s\n", sig, args[1])
			}
			return nil
		},
	}
	c.Flags().StringVarP(&sig, "signal", "s", "TERM", "INT, TERM, HUP, KILL, QUIT, USR1 or USR2")
	return c
}
