package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/termsafe"
)

func (a *app) vmWorkspaceCmd() *cobra.Command {
	c := &cobra.Command{Use: "workspace", Aliases: []string{"ws"}, Short: "Put a host git repository into a VM and bring the work back"}
	c.AddCommand(a.wsPrepareCmd(), a.wsStatusCmd(), a.wsPullCmd())
	return c
}

func absRepo(p string) (string, error) {
	if p == "" {
		p = "."
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("repo %q: %w", p, err)
	}
	return abs, nil
}

// prepare calls workspace.prepare showing stages when quiet is false.
func (a *app) prepare(ctx context.Context, p api.WorkspacePrepareParams, quiet bool) (api.WorkspacePrepareResult, error) {
	var r api.WorkspacePrepareResult
	var opts []rpc.CallOption
	var sv *stageView
	if !quiet {
		sv = a.newStageView("preparing " + p.Name)
		opts = append(opts, rpc.WithEvents(sv.event))
	}
	err := a.call(ctx, api.MethodWorkspacePrepare, p, &r, opts...)
	if err == nil && sv != nil {
		sv.done()
	}
	return r, err
}

func prepareSummary(r api.WorkspacePrepareResult) string {
	kind := "incremental"
	if r.Full {
		kind = "full"
	}
	return fmt.Sprintf("%s → %s:%s (%s: %d files / %s sent, %d deleted, history %s) in %.1fs",
		r.Workspace.HostPath, r.Workspace.VM, r.Workspace.GuestPath, kind, r.FilesSent, human(r.BytesSent), r.Deleted,
		human(r.HistoryBytes), float64(r.TookMs)/1000)
}

func (a *app) wsPrepareCmd() *cobra.Command {
	var p api.WorkspacePrepareParams
	c := &cobra.Command{
		Use:   "prepare NAME [--repo PATH] [--into /root/repo]",
		Short: "Copy a host git repository (history + working tree, .gitignore honoured) into the VM; resyncs incrementally",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			var err error
			if p.Repo, err = absRepo(p.Repo); err != nil {
				return err
			}
			r, err := a.prepare(cmd.Context(), p, a.json)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			fmt.Fprintln(a.stdout, "prepared "+prepareSummary(r))
			return nil
		},
	}
	c.Flags().StringVar(&p.Repo, "repo", "", "host repository (default: the current directory)")
	c.Flags().StringVar(&p.Into, "into", "", "guest directory under /root (default /root/repo, or where it was prepared before)")
	c.Flags().BoolVar(&p.Force, "force", false, "full prepare, even over commits made in the VM that were not pulled")
	return c
}

func (a *app) wsStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use: "status NAME", Short: "What is in the VM vs. the host: commit, dirty files, last sync", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var st api.WorkspaceStatus
			if err := a.call(cmd.Context(), api.MethodWorkspaceStatus, api.NameParams{Name: args[0]}, &st); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(st)
			}
			w := st.Workspace
			drift := st.Drift
			if drift == "" {
				drift = "none"
			}
			guest := "(vm not running)"
			if st.GuestError != "" {
				guest = st.GuestError
			} else if st.Running {
				guest = fmt.Sprintf("%s %s, %d changed path(s)", shortID(st.GuestHead), orDetached(st.GuestBranch), st.GuestDirty)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			// guest now (head, branch, error) is what the guest answered
			for _, r := range [][2]string{
				{"host", w.HostPath}, {"guest", w.VM + ":" + w.GuestPath},
				{"synced", fmt.Sprintf("%s %s, %d files, %s, %s", shortID(w.Head), orDetached(w.Branch), w.Files, human(w.Bytes), ago(w.SyncedAt))},
				{"host now", fmt.Sprintf("%s %s, %d changed path(s)", shortID(st.HostHead), orDetached(st.HostBranch), st.HostDirty)},
				{"since sync", drift},
				{"guest now", guest},
				{"prepared", w.PreparedAt.Format(time.RFC3339)},
			} {
				fmt.Fprintf(tw, "%s:\t%s\n", r[0], termsafe.Field(r[1]))
			}
			return tw.Flush()
		},
	}
}

func shortID(c string) string {
	if c == "" {
		return "(no commits)"
	}
	if len(c) > 12 {
		return c[:12]
	}
	return c
}

func orDetached(b string) string {
	if b == "" {
		return "(detached)"
	}
	return "on " + b
}

func (a *app) wsPullCmd() *cobra.Command {
	var p api.WorkspacePullParams
	c := &cobra.Command{
		Use:   "pull NAME [--branch banger/NAME] [--force] [--patch]",
		Short: "Bring the VM's commits and uncommitted changes back as a host branch; the working tree is never touched",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			var r api.WorkspacePullResult
			if err := a.call(cmd.Context(), api.MethodWorkspacePull, p, &r); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			msg := fmt.Sprintf("branch %s at %s (%d new commit(s))", r.Branch, shortID(r.Commit), r.Commits)
			if p.Patch {
				// The patch is the data: stdout; the summary goes to stderr.
				// Redirected, it is written as the guest made it (to apply);
				// on a terminal, the guest's bytes are made inert.
				out := r.Patch
				if isTerminal(a.stdout) {
					out = termsafe.Bytes(out)
				}
				_, err := a.stdout.Write(out)
				fmt.Fprintf(a.stderr, "%s; uncommitted changes: %d-byte patch on stdout\n", msg, len(r.Patch))
				return err
			}
			fmt.Fprintln(a.stdout, msg)
			return nil
		},
	}
	c.Flags().StringVar(&p.Branch, "branch", "", "host branch to create (default banger/NAME)")
	c.Flags().BoolVar(&p.Force, "force", false, "overwrite the branch if it exists (never the checked-out one)")
	c.Flags().BoolVar(&p.Patch, "patch", false, "print uncommitted changes as a patch on stdout instead of committing them")
	return c
}

func (a *app) vmSyncCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "sync NAME",
		Short: "Copy the host files listed in <state>/sync.json into the VM (also done at every start)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r api.VMSyncResult
			if err := a.call(cmd.Context(), api.MethodVMSync, api.NameParams{Name: args[0]}, &r); err != nil {
				return err
			}
			if a.json {
				if err := a.printJSON(r); err != nil {
					return err
				}
			} else {
				for _, f := range r.Synced {
					fmt.Fprintf(a.stdout, "%s → %s (%s, %s)\n", f.Path, f.Guest, f.Mode, human(f.Bytes))
				}
			}
			for _, f := range r.Refused {
				fmt.Fprintf(a.stderr, "banger: sync: refused %s\n", f.Reason)
			}
			if len(r.Refused) > 0 {
				return exitCode(1)
			}
			return nil
		},
	}
}

// workspaceDir is exec's auto-cd: the prepared workspace of a running VM,
// after resyncing it (autoPrepare) or warning in one line when the host repo
// changed since the last sync. No workspace, or a daemon without workspaces,
// is not an error: exec then runs in the home directory.
func (a *app) workspaceDir(ctx context.Context, name string, autoPrepare bool) (string, error) {
	var chk api.WorkspaceCheck
	if err := a.call(ctx, api.MethodWorkspaceCheck, api.NameParams{Name: name}, &chk); err != nil || chk.GuestPath == "" {
		return "", nil
	}
	if chk.Drift == "" {
		return chk.GuestPath, nil
	}
	if !autoPrepare {
		fmt.Fprintf(a.stderr, "banger: warning: %s changed since the last sync to %s:%s: %s (use --auto-prepare to resync)\n",
			chk.HostPath, name, chk.GuestPath, chk.Drift)
		return chk.GuestPath, nil
	}
	r, err := a.prepare(ctx, api.WorkspacePrepareParams{Name: name, Repo: chk.HostPath, Into: chk.GuestPath}, true)
	if err != nil {
		return "", fmt.Errorf("auto-prepare: %w", err)
	}
	fmt.Fprintln(a.stderr, "banger: resynced "+prepareSummary(r))
	return r.Workspace.GuestPath, nil
}
