package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/termsafe"
)

func (a *app) vmCmd() *cobra.Command {
	c := &cobra.Command{Use: "vm", Short: "Create, run and manage VMs"}
	c.AddCommand(a.vmCreateCmd(), a.vmListCmd(), a.vmShowCmd(), a.vmLogsCmd(), a.vmSSHCmd(), a.vmExecCmd(), a.vmRunCmd(),
		a.vmSimpleCmd("start", "Boot a stopped VM", api.MethodVMStart, true), a.vmWaitCmd(),
		a.vmSimpleCmd("stop", "Sync and power off a VM (kill after ~2s if unreachable)", api.MethodVMStop, false),
		a.vmSimpleCmd("restart", "Stop then start a VM", api.MethodVMRestart, true),
		a.vmSimpleCmd("kill", "Kill a VM's VMM at once, without syncing", api.MethodVMKill, false),
		a.vmDeleteCmd())
	c.AddCommand(a.vmSetCmd(), a.vmPortsCmd(), a.vmForwardCmd(), a.vmStatsCmd())
	c.AddCommand(a.vmWorkspaceCmd(), a.vmSyncCmd())
	c.AddCommand(a.vmSessionCmd())
	c.AddCommand(a.vmPauseCmds()...)
	c.AddCommand(a.vmSnapshotCmd(), a.vmForkCmd())
	return c
}

func addCreateFlags(c *cobra.Command, p *api.CreateVMParams) {
	c.Flags().StringVar(&p.Image, "image", "", "image name (default \"default\")")
	c.Flags().StringVar(&p.Kernel, "kernel", "", "kernel name (default: the image's, else the newest)")
	c.Flags().IntVar(&p.VCPU, "vcpu", 0, "virtual CPUs (default 2)")
	c.Flags().IntVar(&p.MemoryMiB, "memory", 0, "memory in MiB (default 1024)")
	c.Flags().StringVar(&p.Disk, "disk", "", "root disk size, e.g. 4G (default: the image's size)")
	c.Flags().StringVar(&p.WorkDisk, "work-disk", "", "work disk size mounted at /root (default 8G)")
	c.Flags().IntVar(&p.BootTimeout, "boot-timeout", 0, "seconds to wait for SSH (default 120)")
	c.Flags().BoolVar(&p.NAT, "nat", false, "let the guest reach beyond the host through NAT (public addresses only)")
	c.Flags().BoolVar(&p.NATPrivate, "nat-private", false,
		"with --nat, also reach private and special ranges (LAN, 10/8, 172.16/12, 192.168/16, ...); link-local stays blocked")
	c.Flags().BoolVar(&p.HostAccess, "host-access", false,
		"let the guest reach services on any of the host's addresses (default: only the gateway's DNS)")
	c.Flags().Var(idleTimeoutFlag{&p.IdleTimeout}, "idle-timeout", idleTimeoutUsage)
	c.Flags().StringVar(&p.VMM, "vmm", "", "run the VM under this VMM: qemu or firecracker (default: the daemon's, bangerd --vmm; banger doctor says what this host can run)")
	c.Flags().StringArrayVar(&p.Caps, "cap", nil, "give the VM a capability, NAME or NAME@VERSION (repeatable; `banger cap list`), e.g. --cap opencode")
	c.Flags().Var(capEnvFlag{&p.CapEnv}, "cap-env",
		"KEY=VALUE, or KEY to take its value from this shell, set for the capabilities' guest services (e.g. a model provider's API key); written into the guest at the first start, never kept on the host (repeatable)")
}

// createVM calls vm.create showing the stages as they happen.
func (a *app) createVM(cmd *cobra.Command, p api.CreateVMParams) (api.VM, error) {
	sv := a.newStageView("creating " + p.Name)
	var v api.VM
	err := a.call(cmd.Context(), api.MethodVMCreate, p, &v, rpc.WithEvents(sv.event))
	if err == nil {
		sv.done()
	}
	return v, err
}

func (a *app) vmCreateCmd() *cobra.Command {
	var p api.CreateVMParams
	c := &cobra.Command{
		Use:   "create --name NAME",
		Short: "Create a VM and boot it; returns when it answers SSH",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if p.Detach {
				return a.callDetached(cmd, api.MethodVMCreate, p)
			}
			v, err := a.createVM(cmd, p)
			if err != nil {
				return err
			}
			return a.renderVM(v)
		},
	}
	c.Flags().StringVar(&p.Name, "name", "", "VM name (required)")
	c.Flags().BoolVar(&p.Detach, "detach", false, "return the op id at once; the create runs on in the daemon (follow it with `vm wait NAME`)")
	c.Flags().BoolVar(&p.NoStart, "no-start", false, "create the disks but do not boot")
	c.Flags().StringVar(&p.From, "from", "", "restore this snapshot instead of booting (vm snapshot, snapshot list)")
	_ = c.MarkFlagRequired("name")
	addCreateFlags(c, &p)
	return c
}

func (a *app) vmListCmd() *cobra.Command {
	return &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List VMs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var vms []api.VM
			if err := a.call(cmd.Context(), api.MethodVMList, nil, &vms); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(vms)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tIP\tIMAGE\tVCPU\tMEMORY\tCREATED")
			for _, v := range vms {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dM\t%s\n", v.Name, v.State, v.GuestIP, v.Image, v.VCPU, v.MemoryMiB, ago(v.CreatedAt))
			}
			return tw.Flush()
		},
	}
}

func ago(t time.Time) string {
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func (a *app) renderVM(v api.VM) error {
	if a.json {
		return a.printJSON(v)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	rows := [][2]string{
		{"name", v.Name}, {"id", v.ID}, {"state", v.State}, {"ip", v.GuestIP}, {"mac", v.MAC}, {"tap", v.Tap},
		{"vmm", v.Driver}, {"image", v.Image}, {"kernel", v.Kernel}, {"vcpu", fmt.Sprint(v.VCPU)}, {"memory", fmt.Sprintf("%d MiB", v.MemoryMiB)},
		{"disk", fmt.Sprintf("%s (%s)", human(v.DiskBytes), v.CloneMethod)}, {"work disk", human(v.WorkDiskBytes)},
		{"dir", v.Dir}, {"created", v.CreatedAt.Format(time.RFC3339)},
	}
	rows = append(rows, [2]string{"nat", fmt.Sprint(v.NAT)}, [2]string{"nat private", fmt.Sprint(v.NATPrivate)},
		[2]string{"host access", fmt.Sprint(v.HostAccess)})
	rows = append(rows, idleRows(v)...)
	if v.Snapshot != "" {
		rows = append(rows, [2]string{"restored from", v.Snapshot})
	}
	if v.PID != 0 {
		rows = append(rows, [2]string{"pid", fmt.Sprint(v.PID)})
	}
	if v.LastError != "" {
		rows = append(rows, [2]string{"last error", v.LastError})
	}
	if op := v.Operation; op != nil {
		rows = append(rows, [2]string{"operation", operationText(*op, time.Now())})
	}
	rows = append(rows, forwardRows(v)...)
	rows = append(rows, capRows(v)...)
	for _, r := range rows {
		// last error may quote the guest's console
		fmt.Fprintf(tw, "%s:\t%s\n", r[0], termsafe.Field(r[1]))
	}
	return tw.Flush()
}

func human(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

func (a *app) vmShowCmd() *cobra.Command {
	return &cobra.Command{
		Use: "show NAME", Short: "Show one VM", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v api.VM
			if err := a.call(cmd.Context(), api.MethodVMShow, api.NameParams{Name: args[0]}, &v); err != nil {
				return err
			}
			return a.renderVM(v)
		},
	}
}

func (a *app) vmLogsCmd() *cobra.Command {
	var n int64
	var raw bool
	c := &cobra.Command{
		Use: "logs NAME", Short: "Print the VM's serial console log (this boot, the latest 4 MiB)", Args: cobra.ExactArgs(1),
		Long: `Print the VM's serial console log: the current boot, at most its latest
4 MiB (the daemon keeps no more). The guest writes these bytes, so escape
sequences and control characters are removed before they reach the terminal;
--raw prints them as the guest sent them.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var r api.LogsResult
			if err := a.call(cmd.Context(), api.MethodVMLogs, api.LogsParams{Name: args[0], Bytes: n}, &r); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			data := r.Data
			if !raw {
				data = termsafe.Bytes(data)
			}
			_, err := a.stdout.Write(data)
			return err
		},
	}
	c.Flags().Int64Var(&n, "tail-bytes", 0, "only the last N bytes")
	c.Flags().BoolVar(&raw, "raw", false, "print the console bytes unfiltered (escape sequences included)")
	return c
}

// vmSimpleCmd covers start/stop/restart/kill: one name in, the VM out.
// Those with stages (start, restart) can also be detached.
func (a *app) vmSimpleCmd(use, short, method string, stages bool) *cobra.Command {
	var detach bool
	c := &cobra.Command{
		Use: use + " NAME", Short: short, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var params any = api.NameParams{Name: args[0]}
			if stages {
				p := api.StartVMParams{Name: args[0], Detach: detach}
				if detach {
					return a.callDetached(cmd, method, p)
				}
				params = p
			}
			var v api.VM
			var opts []rpc.CallOption
			var sv *stageView
			if stages {
				sv = a.newStageView(use + " " + args[0])
				opts = append(opts, rpc.WithEvents(sv.event))
			}
			if err := a.call(cmd.Context(), method, params, &v, opts...); err != nil {
				return err
			}
			if sv != nil {
				sv.done()
			}
			if a.json {
				return a.printJSON(v)
			}
			fmt.Fprintf(a.stdout, "%s %s\n", v.Name, v.State)
			return nil
		},
	}
	if stages {
		c.Flags().BoolVar(&detach, "detach", false, "return the op id at once; the "+use+" runs on in the daemon (follow it with `vm wait NAME`)")
	}
	return c
}

func (a *app) vmDeleteCmd() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use: "delete NAME...", Aliases: []string{"rm"}, Short: "Delete VMs: process, TAP, disks, host-key pins", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var errs []string
			for _, n := range args {
				if err := a.call(cmd.Context(), api.MethodVMDelete, api.DeleteVMParams{Name: n, Force: force}, nil); err != nil {
					errs = append(errs, oneLine(err))
					continue
				}
				if !a.json {
					fmt.Fprintf(a.stdout, "deleted %s\n", n)
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("%s", strings.Join(errs, "; "))
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "delete even if running (kills it)")
	return c
}
