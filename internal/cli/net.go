package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/sshconfig"
	"github.com/banger-dev/banger/internal/termsafe"
)

func (a *app) vmSetCmd() *cobra.Command {
	var nat, natPrivate, hostAccess bool
	var vcpu, mem, idle int
	var workDisk string
	c := &cobra.Command{
		Use:   "set NAME [--nat=true|false] [--nat-private=true|false] [--host-access=true|false] [--vcpu N] [--memory MiB] [--work-disk SIZE] [--idle-timeout 30m|0]",
		Short: "Change a stopped VM, applied at its next start (--idle-timeout alone: a running VM too, at once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := api.SetVMParams{Name: args[0]}
			if cmd.Flags().Changed("nat") {
				p.NAT = &nat
			}
			if cmd.Flags().Changed("nat-private") {
				p.NATPrivate = &natPrivate
			}
			if cmd.Flags().Changed("host-access") {
				p.HostAccess = &hostAccess
			}
			if cmd.Flags().Changed("vcpu") {
				p.VCPU = &vcpu
			}
			if cmd.Flags().Changed("memory") {
				p.MemoryMiB = &mem
			}
			if cmd.Flags().Changed("work-disk") {
				if workDisk == "" {
					return fmt.Errorf("--work-disk needs a size such as 32G")
				}
				p.WorkDisk = workDisk
			}
			if cmd.Flags().Changed("idle-timeout") {
				p.IdleTimeout = &idle
			}
			var v api.VM
			if err := a.call(cmd.Context(), api.MethodVMSet, p, &v); err != nil {
				return err
			}
			return a.renderVM(v)
		},
	}
	c.Flags().BoolVar(&nat, "nat", false, "NAT the guest's traffic beyond the host")
	c.Flags().BoolVar(&natPrivate, "nat-private", false, "with --nat, also private and special ranges (never link-local)")
	c.Flags().BoolVar(&hostAccess, "host-access", false, "let the guest reach services on any host address, not just DNS")
	c.Flags().IntVar(&vcpu, "vcpu", 0, "virtual CPUs")
	c.Flags().IntVar(&mem, "memory", 0, "memory in MiB")
	c.Flags().StringVar(&workDisk, "work-disk", "", "grow the work disk (mounted at /root) to SIZE, e.g. 32G; never shrinks")
	c.Flags().Var(idleTimeoutFlag{&idle}, "idle-timeout", idleTimeoutUsage)
	return c
}

func (a *app) vmPortsCmd() *cobra.Command {
	return &cobra.Command{
		Use: "ports NAME", Short: "List the guest's listening TCP/UDP ports", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ports []api.Port
			if err := a.call(cmd.Context(), api.MethodVMPorts, api.NameParams{Name: args[0]}, &ports); err != nil {
				return err
			}
			if a.json {
				if ports == nil {
					ports = []api.Port{}
				}
				return a.printJSON(ports)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PROTO\tADDRESS\tPORT\tPROCESS\tURL\tFORWARD")
			for _, p := range ports {
				// Address and process come from the guest's ss output.
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", termsafe.Field(p.Proto), termsafe.Field(p.Address), p.Port,
					termsafe.Field(p.Process), termsafe.Field(p.URL), termsafe.Field(p.Forward))
			}
			return tw.Flush()
		},
	}
}

func (a *app) sshConfigCmd() *cobra.Command {
	var install, uninstall bool
	var userConfig string
	c := &cobra.Command{
		Use:   "ssh-config [--install | --uninstall] [--ssh-config PATH]",
		Short: "Print, install or remove the OpenSSH config for `ssh root@NAME.vm`",
		Long: `Without flags, print the Host *.vm block. --install writes it to
<state>/ssh/config and adds a managed block to ~/.ssh/config that Includes it
(idempotent); --uninstall removes exactly that block. The block uses banger's
own known_hosts (guest keys are pinned before first boot) with
StrictHostKeyChecking=accept-new; it refuses to write anything if that path
cannot be resolved.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if install && uninstall {
				return fmt.Errorf("give at most one of --install, --uninstall: %w", api.ErrInvalid)
			}
			root, err := filepath.Abs(a.layout.Root)
			if err != nil || a.layout.Root == "" {
				return fmt.Errorf("ssh config: cannot resolve the state dir %q: %w", a.layout.Root, api.ErrInvalid)
			}
			a.layout.Root = root
			p := sshconfig.Paths{KnownHosts: a.layout.KnownHosts(), Identity: a.layout.ClientKey()}
			if userConfig == "" {
				home, err := os.UserHomeDir()
				if err != nil {
					return fmt.Errorf("ssh config: resolve home: %w", err)
				}
				userConfig = filepath.Join(home, ".ssh", "config")
			}
			switch {
			case uninstall:
				changed, err := sshconfig.Uninstall(userConfig)
				if err != nil {
					return err
				}
				if err := os.Remove(a.layout.SSHConfig()); err != nil && !os.IsNotExist(err) {
					return err
				}
				fmt.Fprintf(a.stdout, "%s: banger block %s\n", userConfig, map[bool]string{true: "removed", false: "not present"}[changed])
				return nil
			case install:
				if _, err := os.Stat(p.Identity); err != nil {
					return fmt.Errorf("ssh config: banger's client key %s is missing (start the daemon once first): %w", p.Identity, api.ErrNotFound)
				}
				if err := sshconfig.WriteOwned(a.layout.SSHConfig(), p); err != nil {
					return err
				}
				changed, err := sshconfig.Install(userConfig, a.layout.SSHConfig())
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%s: includes %s (%s)\n", userConfig, a.layout.SSHConfig(), map[bool]string{true: "added", false: "already there"}[changed])
				return nil
			}
			text, err := sshconfig.Render(p)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(a.stdout, text)
			return err
		},
	}
	c.Flags().BoolVar(&install, "install", false, "write the config and Include it from ~/.ssh/config")
	c.Flags().BoolVar(&uninstall, "uninstall", false, "remove banger's block from ~/.ssh/config")
	c.Flags().StringVar(&userConfig, "ssh-config", "", "the OpenSSH config to edit (default ~/.ssh/config)")
	return c
}
