package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
)

func (a *app) vmWaitCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "wait NAME",
		Short: "Follow the create/start/restart running on a VM and exit with its outcome",
		Long: `Follow the create, start or restart running on a VM (started with --detach,
or by another client): its stages so far, then the live ones, on stderr. It
exits 0 with the VM once the operation succeeded, and non-zero with the
operation's error (and its code) once it failed.

With nothing running it answers at once: the error of the VM's latest
operation if that failed and the VM still shows it (in error, or gone after
a failed create), an error (not_running) for a VM in error, else the VM as
it is (running, stopped or paused; exit 0). The daemon remembers operations
in memory only: after a daemon restart, the VM's state is all there is.

With --json the VM is printed as JSON, and a failure as {"error": {...}}.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sv := a.newStageView("waiting for " + args[0])
			var v api.VM
			err := a.call(cmd.Context(), api.MethodVMWait, api.NameParams{Name: args[0]}, &v, rpc.WithEvents(sv.event))
			if err != nil {
				var we *api.Error
				if a.json && errors.As(err, &we) {
					_ = a.printJSON(struct {
						Error *api.Error `json:"error"`
					}{we})
				}
				return err
			}
			sv.done()
			if a.json {
				return a.printJSON(v)
			}
			fmt.Fprintf(a.stdout, "%s %s\n", v.Name, v.State)
			return nil
		},
	}
}

// callDetached makes a request with detach set and prints the operation it
// started.
func (a *app) callDetached(cmd *cobra.Command, method string, params any) error {
	var op api.OpStarted
	if err := a.call(cmd.Context(), method, params, &op); err != nil {
		return err
	}
	if a.json {
		return a.printJSON(op)
	}
	fmt.Fprintf(a.stdout, "%s of %s under way (op %s); follow it: banger vm wait %s\n", op.Kind, op.Name, op.OpID, op.Name)
	return nil
}

// operationText is `vm show`'s line for the operation in progress:
// "create (stage wait_ready, 3.1s)".
func operationText(op api.Operation, now time.Time) string {
	if op.Stage == "" {
		return fmt.Sprintf("%s (no stage yet, %.1fs; op %s)", op.Kind, now.Sub(op.Started).Seconds(), op.OpID)
	}
	return fmt.Sprintf("%s (stage %s, %.1fs; op %s)", op.Kind, op.Stage, now.Sub(op.StageStarted).Seconds(), op.OpID)
}
