package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/privileged"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/sysinstall"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/termsafe"
)

// installer is the one place the system install's root and runner are
// chosen: the host's "/" and the real runner.
func (a *app) installer() *sysinstall.Installer {
	return &sysinstall.Installer{Runner: system.Exec{}, Paths: sysinstall.Paths{Root: "/"}, Out: a.stdout}
}

func needRoot(what string) error {
	if os.Geteuid() == 0 {
		return nil
	}
	return fmt.Errorf("banger system %s must run as root: sudo banger system %s: %w", what, what, api.ErrPermission)
}

// systemInstallCmds are install, status, restart and uninstall.
func (a *app) systemInstallCmds() []*cobra.Command {
	var owner string
	install := &cobra.Command{
		Use:   "install [--owner USER]",
		Short: "Install banger as two systemd units: the root helper and bangerd as USER (default $SUDO_USER)",
		Long: "Copies banger, bangerd and banger-agent to " + sysinstall.BinDir + ", writes " + sysinstall.HelperUnit +
			" (root) and " + sysinstall.DaemonUnit + " (the owner,\non the owner's state dir, so the owner's banger finds it), " + sysinstall.MetaFile +
			", subordinate id ranges for rootless image\nbuilds when the owner has none, then enables and (re)starts both units. Running it again converges.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := needRoot("install"); err != nil {
				return err
			}
			if owner == "" {
				owner = os.Getenv("SUDO_USER")
			}
			if owner == "" || owner == "root" {
				return fmt.Errorf("--owner USER is required (the unprivileged user who will run banger; default $SUDO_USER): %w", api.ErrInvalid)
			}
			o, err := sysinstall.LookupOwner(owner)
			if err != nil {
				return fmt.Errorf("--owner %q: %w", owner, err)
			}
			// The owner's default state root, as their own banger resolves it
			// without BANGER_STATE_DIR/XDG_STATE_HOME; --state-dir overrides.
			stateDir := filepath.Join(o.Home, ".local", "state", "banger")
			if a.stateDir != "" {
				if stateDir, err = filepath.Abs(a.stateDir); err != nil {
					return err
				}
			}
			src := map[string]string{}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			src["banger"] = self
			for _, b := range []string{"bangerd", "banger-agent"} {
				if src[b], err = system.Executable(b); err != nil {
					return fmt.Errorf("find %s next to %s or on PATH: %w", b, self, err)
				}
			}
			m, err := a.installer().Install(cmd.Context(), sysinstall.InstallOptions{Owner: o, StateDir: stateDir, Sources: src, Version: buildVersion()})
			if err != nil {
				return a.fullError(err)
			}
			fmt.Fprintf(a.stdout, "banger is installed for %s (uid %d); state in %s\nas %s, with no sudo: banger doctor; banger system status\n",
				m.Owner.Name, m.Owner.UID, m.StateDir, m.Owner.Name)
			return nil
		},
	}
	install.Flags().StringVar(&owner, "owner", "", "the user bangerd runs as (default $SUDO_USER)")

	status := &cobra.Command{
		Use:   "status",
		Short: "Show the system install: units, owner, binaries, helper and daemon sockets, and what is wrong",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			in := a.installer()
			st := in.Status(cmd.Context(), a.statusProbes(in))
			a.statusNotes(&st)
			if a.json {
				if err := a.printJSON(st); err != nil {
					return err
				}
			} else {
				a.renderSystemStatus(st)
			}
			switch {
			case !st.Installed:
				return exitCode(3)
			case !st.Healthy:
				return exitCode(1)
			}
			return nil
		},
	}

	restart := &cobra.Command{
		Use: "restart", Short: "Restart both units (running VMs keep running; bangerd adopts them)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := needRoot("restart"); err != nil {
				return err
			}
			return a.fullError(a.installer().Restart(cmd.Context()))
		},
	}

	var purge bool
	uninstall := &cobra.Command{
		Use:   "uninstall [--purge]",
		Short: "Stop and remove the units, binaries, /etc/banger and /run/banger; --purge also deletes the owner's banger state",
		Long: "VMs the system bangerd still runs are killed (their disks stay). Without --purge the owner's state\n" +
			"(images, kernels, VM disks, SSH key) stays, and the owner's banger starts its own bangerd again.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := needRoot("uninstall"); err != nil {
				return err
			}
			return a.installer().Uninstall(cmd.Context(), purge)
		},
	}
	uninstall.Flags().BoolVar(&purge, "purge", false, "also delete the owner's banger state dir")
	return []*cobra.Command{install, status, restart, uninstall}
}

// buildVersion is this binary's VCS revision as the Go toolchain stamped it.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, kv := range bi.Settings {
		switch {
		case kv.Key == "vcs.revision":
			rev = kv.Value
		case kv.Key == "vcs.modified" && kv.Value == "true":
			dirty = "+dirty"
		}
	}
	if rev == "" {
		return bi.Main.Version
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	return rev + dirty
}

// fullError prints all of an install/restart error, the units' journal
// lines included (Main prints only an error's first line), and exits 1.
func (a *app) fullError(err error) error {
	if err == nil {
		return nil
	}
	fmt.Fprintln(a.stderr, "banger: "+termsafe.String(err.Error()))
	return exitCode(1)
}

func (a *app) statusProbes(in *sysinstall.Installer) sysinstall.Probes {
	m, _ := in.ReadMetadata()
	return sysinstall.Probes{
		Helper: func(ctx context.Context, socket string) (string, error) {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			taps, err := (&privileged.Client{Path: socket}).PoolTaps(ctx)
			if err == nil {
				return fmt.Sprintf("answers (%d pooled TAPs)", len(taps)), nil
			}
			// Only the owner may use it: a refusal of anyone else is the
			// helper answering as it should.
			if m != nil && os.Getuid() != m.Owner.UID && errors.Is(err, api.ErrPermission) {
				return fmt.Sprintf("answers (and refuses uid %d: only the owner may use it)", os.Getuid()), nil
			}
			return "", err
		},
		Daemon: func(ctx context.Context, socket string) (int, string, error) {
			if m == nil || os.Getuid() != m.Owner.UID {
				return 0, "socket present (only " + ownerOf(m) + " may talk to bangerd)", nil
			}
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			var st api.DaemonStatus
			if err := rpc.NewClient(socket).Call(ctx, api.MethodDaemonStatus, nil, &st); err != nil {
				return 0, "", err
			}
			return st.PID, fmt.Sprintf("answers: pid %d, uid %d, version %s, %d VMs (%d running)", st.PID, st.UID, st.Version, st.VMs, st.Running), nil
		},
	}
}

func ownerOf(m *sysinstall.Metadata) string {
	if m == nil {
		return "the owner"
	}
	return m.Owner.Name
}

// statusNotes adds what is worth knowing but not wrong: a banger that is
// not the installed one, a state dir that is not the system daemon's.
func (a *app) statusNotes(st *sysinstall.Status) {
	if st.Meta == nil {
		return
	}
	if self, err := os.Executable(); err == nil {
		if sum, err := sysinstall.FileSHA256(self); err == nil && sum != st.Meta.Binaries["banger"] {
			st.Notes = append(st.Notes, fmt.Sprintf("this banger (%s) is not the installed one (%s/banger): their versions may differ", self, st.Meta.BinDir))
		}
	}
	if os.Getuid() == st.Meta.Owner.UID {
		l := paths.Layout{Root: a.stateDir}
		if a.stateDir == "" {
			l, _ = paths.Default()
		}
		if l.Root != "" && l.Root != st.Meta.StateDir {
			st.Notes = append(st.Notes, fmt.Sprintf("your banger uses state dir %s, the system bangerd %s: unset %s/XDG_STATE_HOME to use it",
				l.Root, st.Meta.StateDir, paths.EnvStateDir))
		}
	}
}

func (a *app) renderSystemStatus(st sysinstall.Status) {
	w := a.stdout
	if !st.Installed {
		fmt.Fprintln(w, "banger system install: not installed")
	} else {
		verdict := "healthy"
		if !st.Healthy {
			verdict = fmt.Sprintf("%d problem(s)", len(st.Problems))
		}
		fmt.Fprintf(w, "banger system install: %s\n", verdict)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		m := st.Meta
		fmt.Fprintf(tw, "owner\t%s\t%s\n", st.Owner.Info, okText(st.Owner.OK))
		for _, u := range st.Units {
			if u.Error != "" {
				fmt.Fprintf(tw, "%s\tunknown to this user (see note)\t?\n", u.Name)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s (%s), %s, pid %d\t%s\n", u.Name, orDash(u.ActiveState), orDash(u.SubState), orDash(u.UnitFileState), u.MainPID,
				okText(u.ActiveState == "active" && u.UnitFileState == "enabled"))
		}
		fmt.Fprintf(tw, "helper\t%s: %s\t%s\n", st.Helper.Path, st.Helper.Info, okText(st.Helper.OK))
		fmt.Fprintf(tw, "bangerd\t%s: %s\t%s\n", st.Daemon.Path, st.Daemon.Info, okText(st.Daemon.OK))
		fmt.Fprintf(tw, "binaries\t%s: %s\t%s\n", st.Binaries.Path, st.Binaries.Info, okText(st.Binaries.OK))
		fmt.Fprintf(tw, "installed\t%s, version %s\t\n", m.InstalledAt.Local().Format(time.RFC3339), orDash(m.Version))
		tw.Flush()
	}
	for _, p := range st.Problems {
		fmt.Fprintln(w, "problem: "+termsafe.String(p))
	}
	// Journal lines are whatever the services printed: no escapes reach the terminal.
	for _, u := range st.Units {
		if len(u.Logs) > 0 {
			fmt.Fprintf(w, "%s, last log lines:\n  %s\n", u.Name, termsafe.String(strings.Join(u.Logs, "\n  ")))
		}
	}
	for _, n := range st.Notes {
		fmt.Fprintln(w, "note: "+n)
	}
}

func okText(ok bool) string {
	if ok {
		return "ok"
	}
	return "FAIL"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// systemDaemonDown replaces auto-start when the system install runs this
// user's bangerd on this state dir: starting a second daemon there would
// fight the unit for the pid lock.
func (a *app) systemDaemonDown(cause error) error {
	m, err := a.installer().ReadMetadata()
	if err != nil || m.StateDir != a.layout.Root {
		return nil
	}
	return fmt.Errorf("bangerd of the system install (%s) does not answer on %s; `banger system status` says why, `sudo banger system restart` starts it: %w",
		sysinstall.DaemonUnit, a.layout.Socket(), cause)
}
