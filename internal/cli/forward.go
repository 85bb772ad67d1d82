package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/termsafe"
)

func (a *app) vmForwardCmd() *cobra.Command {
	var local string
	var detach, stop, allowRemote bool
	c := &cobra.Command{
		Use:   "forward NAME GUESTPORT [--local ADDR:PORT] [--detach] | forward --stop NAME GUESTPORT [--local ADDR:PORT]",
		Short: "Forward a host TCP port to a port on the guest's loopback, through the guest agent",
		Long: `Listen on a host address (--local, default 127.0.0.1:GUESTPORT; port 0 picks a
free one) and carry each connection to GUESTPORT on the guest's 127.0.0.1
(else ::1) through the guest agent: it works whether or not the host can
route to the VM and reaches services bound to the guest's loopback only.

The daemon holds the listener. Without --detach it lasts until Ctrl-C; with
--detach the command returns and the forward lasts until
'banger vm forward --stop NAME GUESTPORT', the VM's stop or delete, or the
daemon's exit. 'banger vm show NAME' lists a VM's forwards. Addresses other
than loopback ones need --allow-remote: whoever reaches them reaches the
guest's port.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			port, err := strconv.Atoi(args[1])
			if err != nil || port < 1 || port > 65535 {
				return fmt.Errorf("guest port %q: want 1-65535: %w", args[1], api.ErrInvalid)
			}
			if stop {
				if detach || allowRemote {
					return fmt.Errorf("--stop takes no --detach or --allow-remote: %w", api.ErrInvalid)
				}
				return a.forwardStop(cmd.Context(), api.ForwardStopParams{Name: args[0], GuestPort: port, Local: local})
			}
			p := api.ForwardParams{Name: args[0], GuestPort: port, Local: local, AllowRemote: allowRemote, Detach: detach}
			if detach {
				var f api.Forward
				if err := a.call(cmd.Context(), api.MethodVMForward, p, &f); err != nil {
					return err
				}
				if a.json {
					return a.printJSON(f)
				}
				fmt.Fprintf(a.stdout, "forwarding %s -> %s:%d (stop with: banger vm forward --stop %s %d)\n",
					f.Local, f.VM, f.GuestPort, f.VM, f.GuestPort)
				return nil
			}
			return a.forwardForeground(cmd.Context(), p)
		},
	}
	c.Flags().StringVar(&local, "local", "", "host address to listen on, ADDR:PORT or PORT (default 127.0.0.1:GUESTPORT)")
	c.Flags().BoolVarP(&detach, "detach", "d", false, "return at once; the forward lives in the daemon until --stop or the VM stops")
	c.Flags().BoolVar(&stop, "stop", false, "stop the VM's forwards of GUESTPORT (only the one on --local when given)")
	c.Flags().BoolVar(&allowRemote, "allow-remote", false, "allow a --local address that is not loopback")
	return c
}

// forwardForeground holds a forward until Ctrl-C: the first one half-closes
// the call's input, so the daemon stops the forward and answers with its
// counts; a second one hangs up.
func (a *app) forwardForeground(ctx context.Context, p api.ForwardParams) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in := make(chan api.Input)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt)
	defer signal.Stop(sigs)
	go func() {
		select {
		case <-sigs:
			close(in)
		case <-ctx.Done():
			return
		}
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	var f api.Forward
	err := a.call(ctx, api.MethodVMForward, p, &f, rpc.WithInput(in), rpc.WithEvents(func(ev api.Event) {
		switch ev.Stage {
		case api.ForwardListening:
			if a.json {
				_ = a.printJSON(api.Forward{VM: p.Name, GuestPort: p.GuestPort, Local: ev.Message})
				return
			}
			fmt.Fprintf(a.stdout, "forwarding %s -> %s:%d (Ctrl-C to stop)\n", termsafe.Field(ev.Message), p.Name, p.GuestPort)
		case api.ForwardConnError:
			// Names what the guest said: its text.
			fmt.Fprintf(a.stderr, "banger: %s\n", termsafe.Field(ev.Message))
		}
	}))
	if err != nil {
		return err
	}
	if a.json {
		return a.printJSON(f)
	}
	fmt.Fprintf(a.stdout, "stopped %s -> %s:%d (%d connections, %d failed)\n", f.Local, f.VM, f.GuestPort, f.Served, f.Failed)
	return nil
}

func (a *app) forwardStop(ctx context.Context, p api.ForwardStopParams) error {
	var fs []api.Forward
	if err := a.call(ctx, api.MethodVMForwardStop, p, &fs); err != nil {
		return err
	}
	if a.json {
		return a.printJSON(fs)
	}
	for _, f := range fs {
		fmt.Fprintf(a.stdout, "stopped %s -> %s:%d\n", f.Local, f.VM, f.GuestPort)
	}
	return nil
}

// forwardRows are `vm show`'s lines for the VM's forwards.
func forwardRows(v api.VM) [][2]string {
	var rows [][2]string
	for _, f := range v.Forwards {
		kind := "foreground"
		if f.Detached {
			kind = "detached"
		}
		text := fmt.Sprintf("%s -> %d (%s; %d open, %d served, %d failed)", f.Local, f.GuestPort, kind, f.Open, f.Served, f.Failed)
		if f.LastError != "" {
			text += "; last error: " + strings.TrimSpace(f.LastError)
		}
		rows = append(rows, [2]string{"forward", text})
	}
	return rows
}
