package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/termsafe"
)

// statsEvery is the --watch period.
const statsEvery = 2 * time.Second

func (a *app) vmStatsCmd() *cobra.Command {
	var watch bool
	c := &cobra.Command{
		Use:   "stats [NAME] [--watch]",
		Short: "Show running VMs' CPU, memory, load, disks, network and VMM memory",
		Long: `Show a sample of each running VM (or of NAME): guest CPU % (of all vCPUs),
memory used/total, load, root and work disk use, uptime and SSH connections
from the guest agent; network bytes from the VM's TAP, counted as the guest
sees them (rx = received by the guest); the VMM's resident memory on the
host; and when the VM was last in use (see --idle-timeout). A guest whose
agent does not answer shows "-" in the guest columns (--json says why).
--watch prints a new sample every 2 s until Ctrl-C.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := api.StatsParams{}
			if len(args) == 1 {
				p.Name = args[0]
			}
			if !watch {
				return a.statsOnce(cmd.Context(), p, false)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			for {
				if err := a.statsOnce(ctx, p, true); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(statsEvery):
				}
			}
		},
	}
	c.Flags().BoolVarP(&watch, "watch", "w", false, "print a new sample every 2 s until Ctrl-C")
	return c
}

func (a *app) statsOnce(ctx context.Context, p api.StatsParams, watch bool) error {
	var st []api.VMStats
	if err := a.call(ctx, api.MethodVMStats, p, &st); err != nil {
		return err
	}
	if st == nil {
		st = []api.VMStats{}
	}
	if a.json {
		return a.printJSON(st)
	}
	if watch {
		if isTerminal(a.stdout) {
			fmt.Fprint(a.stdout, "\x1b[H\x1b[2J") // home, clear: the new sample replaces the old
		} else {
			fmt.Fprintln(a.stdout)
		}
		fmt.Fprintf(a.stdout, "%s (every %s, Ctrl-C to stop)\n", time.Now().Format(time.TimeOnly), statsEvery)
	}
	return a.renderStats(st)
}

func (a *app) renderStats(st []api.VMStats) error {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCPU\tMEM\tLOAD1\tROOT\tWORK\tRX\tTX\tVMM RSS\tUPTIME\tLAST ACTIVITY")
	var notes []string
	for _, s := range st {
		cpu, mem, load, root, work, up := "-", "-", "-", "-", "-", "-"
		if g := s.Guest; g != nil {
			cpu = fmt.Sprintf("%.1f%%", g.CPUPercent)
			mem = usedOf(g.MemUsedBytes, g.MemTotalBytes)
			load = fmt.Sprintf("%.2f", g.Load1)
			root = usedOf(g.RootUsedBytes, g.RootTotal)
			work = usedOf(g.WorkUsedBytes, g.WorkTotal)
			up = (time.Duration(g.UptimeSeconds) * time.Second).String()
		} else {
			notes = append(notes, fmt.Sprintf("%s: guest unavailable: %s", s.Name, s.GuestError))
		}
		rx, tx := "-", "-"
		if s.Net != nil {
			rx, tx = shortSize(s.Net.RxBytes), shortSize(s.Net.TxBytes)
		}
		rss := "-"
		if s.VMMRSSBytes > 0 {
			rss = shortSize(s.VMMRSSBytes)
		}
		last := "-"
		if s.LastActivity != nil {
			last = ago(*s.LastActivity)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, cpu, mem, load, root, work, rx, tx, rss, up, last)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range notes {
		// The reason may quote the guest.
		fmt.Fprintln(a.stdout, termsafe.Field(n))
	}
	return nil
}

func usedOf(used, total uint64) string { return shortSize(used) + "/" + shortSize(total) }

// shortSize is a compact size: 512B, 31.2M, 1.9G.
func shortSize(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%dB", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit && exp < 5; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%c", float64(b)/float64(div), "KMGTPE"[exp])
}

// idleTimeoutFlag parses --idle-timeout: a duration of whole seconds, or
// 0/off for none.
type idleTimeoutFlag struct{ secs *int }

func (f idleTimeoutFlag) String() string {
	if f.secs == nil || *f.secs == 0 {
		return "0"
	}
	return (time.Duration(*f.secs) * time.Second).String()
}

func (f idleTimeoutFlag) Set(s string) error {
	switch strings.ToLower(s) {
	case "0", "off", "none", "never":
		*f.secs = 0
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second || d%time.Second != 0 {
		return fmt.Errorf("want a duration of whole seconds such as 30m or 1h, or 0/off: %w", api.ErrInvalid)
	}
	*f.secs = int(d / time.Second)
	return nil
}

func (f idleTimeoutFlag) Type() string { return "duration" }

const idleTimeoutUsage = "stop the VM after this long without use (exec, ssh, sessions, guest CPU); 0 or off: never"

// idleRows are `vm show`'s idle lines.
func idleRows(v api.VM) [][2]string {
	t := "off"
	if v.IdleTimeout > 0 {
		t = (time.Duration(v.IdleTimeout) * time.Second).String()
	}
	rows := [][2]string{{"idle timeout", t}}
	if v.LastActivity != nil {
		rows = append(rows, [2]string{"last activity", v.LastActivity.Local().Format(time.RFC3339) + " (" + ago(*v.LastActivity) + ")"})
	}
	if v.StopReason != "" {
		s := v.StopReason
		if v.StoppedAt != nil {
			s += " at " + v.StoppedAt.Local().Format(time.RFC3339)
		}
		rows = append(rows, [2]string{"stopped", s})
	}
	return rows
}
