package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
)

// vm pause|resume|snapshot|fork, snapshot list|rm, image warm.

func (a *app) vmPauseCmds() []*cobra.Command {
	return []*cobra.Command{
		a.vmSimpleCmd("pause", "Stop a running VM's vCPUs; memory and devices stay (vm resume continues it)", api.MethodVMPause, false),
		a.vmSimpleCmd("resume", "Continue a paused VM (its clock is stepped to the host's)", api.MethodVMResume, false),
	}
}

func (a *app) vmSnapshotCmd() *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:   "snapshot VM --name SNAPSHOT",
		Short: "Save a running VM (memory, devices and disks at one instant) as a snapshot; the VM runs on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sv := a.newStageView("snapshot " + args[0])
			var sn api.Snapshot
			if err := a.call(cmd.Context(), api.MethodVMSnapshot, api.SnapshotVMParams{Name: args[0], Snapshot: name}, &sn, rpc.WithEvents(sv.event)); err != nil {
				return err
			}
			sv.done()
			return a.renderSnapshot(sn)
		},
	}
	c.Flags().StringVar(&name, "name", "", "snapshot name (required)")
	_ = c.MarkFlagRequired("name")
	return c
}

func (a *app) vmForkCmd() *cobra.Command {
	var p api.ForkParams
	c := &cobra.Command{
		Use:   "fork VM [--count N] [--name-prefix P]",
		Short: "Make N running copies of a running VM, each with its own IP, name, host key and machine-id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			sv := a.newStageView("fork " + args[0])
			var vms []api.VM
			if err := a.call(cmd.Context(), api.MethodVMFork, p, &vms, rpc.WithEvents(sv.event)); err != nil {
				return err
			}
			sv.done()
			if a.json {
				return a.printJSON(vms)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tIP")
			for _, v := range vms {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Name, v.State, v.GuestIP)
			}
			return tw.Flush()
		},
	}
	c.Flags().IntVar(&p.Count, "count", 1, "how many children")
	c.Flags().StringVar(&p.NamePrefix, "name-prefix", "", "children are named PREFIX-1, PREFIX-2, ... (default VM-fork)")
	return c
}

func (a *app) snapshotCmd() *cobra.Command {
	c := &cobra.Command{Use: "snapshot", Short: "List and remove VM snapshots (vm snapshot, vm fork and image warm make them)"}
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List snapshots", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var sns []api.Snapshot
			if err := a.call(cmd.Context(), api.MethodSnapshotList, nil, &sns); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(sns)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSOURCE\tIMAGE\tMEMORY\tSIZE\tUSED BY\tCREATED")
			for _, s := range sns {
				name := s.Name
				if s.WarmFor != "" {
					name += " (warm)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%dM\t%s\t%s\t%s\n", name, s.SourceVM, s.Image, s.MemoryMiB, human(s.SizeBytes),
					strings.Join(s.UsedBy, ","), ago(s.CreatedAt))
			}
			return tw.Flush()
		},
	}
	c.AddCommand(list, a.rmCmd("snapshot", api.MethodSnapshotRm))
	return c
}

func (a *app) imageWarmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "warm [IMAGE]",
		Short: "Boot the image once and snapshot it when ready: `vm run` then restores instead of booting",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := api.ImageWarmParams{Image: "default"}
			if len(args) == 1 {
				p.Image = args[0]
			}
			sv := a.newStageView("warming " + p.Image)
			var sn api.Snapshot
			if err := a.call(cmd.Context(), api.MethodImageWarm, p, &sn, rpc.WithEvents(sv.event)); err != nil {
				return err
			}
			sv.done()
			return a.renderSnapshot(sn)
		},
	}
}

func (a *app) renderSnapshot(s api.Snapshot) error {
	if a.json {
		return a.printJSON(s)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	rows := [][2]string{
		{"name", s.Name}, {"id", s.ID}, {"source vm", s.SourceVM}, {"image", s.Image}, {"kernel", s.Kernel},
		{"vcpu", fmt.Sprint(s.VCPU)}, {"memory", fmt.Sprintf("%d MiB (%s)", s.MemoryMiB, s.RAM)},
		{"vmm", s.VMM + " " + s.VMMVersion + " " + s.CPU}, {"size", human(s.SizeBytes)}, {"dir", s.Dir},
		{"created", s.CreatedAt.Format(time.RFC3339)},
	}
	if s.WarmFor != "" {
		rows = append(rows, [2]string{"warm template of", s.WarmFor})
	}
	for _, r := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}
