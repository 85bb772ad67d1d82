package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vm"
	"github.com/banger-dev/banger/internal/vmop"
)

// detachSettle bounds how long a detached request waits for its operation
// to get under way (past its up-front checks: a bad name or a VM already
// running still fails the request itself) before answering with the op id.
const detachSettle = 300 * time.Millisecond

// vmOp runs a create/start/restart of the VM called name as an operation
// that other clients can follow (vm.wait) and vm.show reports. Without
// detach it answers like detached: progress to this client, the VM (or the
// error) at the end. With detach it answers api.OpStarted once the
// operation is under way, and the work runs on in the daemon.
func (dm *Daemon) vmOp(ctx context.Context, c *rpc.Call, kind, name string, detach bool,
	work func(ctx context.Context, pr vm.Progress) (store.VM, error)) (any, error) {
	op, err := dm.ops.Begin(name, kind, c.OpID)
	if err != nil {
		return nil, err
	}
	run := func(ctx context.Context, pr vm.Progress) (api.VM, error) {
		v, err := work(ctx, func(stage, msg string) {
			op.Progress(stage, msg)
			if pr != nil {
				pr(stage, msg)
			}
		})
		var view api.VM
		if err == nil {
			view = dm.d.VMs.View(v)
		}
		op.End(view, err)
		dm.logOpEnd(ctx, op, err)
		return view, err
	}
	if !detach {
		return detached(ctx, c, run)
	}
	wctx, release := c.Detach()
	go func() {
		defer release()
		_, _ = run(wctx, nil)
	}()
	t := time.NewTimer(detachSettle)
	defer t.Stop()
	select {
	case <-op.Underway():
	case <-t.C:
	}
	if _, err, ended := op.Outcome(); ended && err != nil {
		return nil, err
	}
	return api.OpStarted{OpID: op.ID, Kind: kind, Name: name}, nil
}

func (dm *Daemon) logOpEnd(ctx context.Context, op *vmop.Op, err error) {
	if dm.d.Log == nil {
		return
	}
	attrs := []slog.Attr{slog.String("kind", op.Kind), slog.String("vm", op.Name),
		slog.Float64("duration_s", time.Since(op.Started).Seconds())}
	level := slog.LevelInfo
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
		level = slog.LevelWarn
	}
	dm.d.Log.LogAttrs(ctx, level, "vm operation done", attrs...)
}

// viewVM is the VM's view with the operation in progress on it, if any.
func (dm *Daemon) viewVM(v store.VM) api.VM {
	out := dm.d.VMs.View(v)
	if op := dm.ops.Get(v.Name); op != nil {
		out.Operation = op.View()
	}
	return out
}

// vmWait follows the operation running on a VM (see api.MethodVMWait).
// With none running, it answers at once: the error of the VM's latest
// operation when that failed and the VM still shows it (the row is gone or
// in error), else a VM in error as not_running with its last error, else
// the VM as it is (running, stopped, paused).
func (dm *Daemon) vmWait(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	name := n
	op := dm.ops.Get(n) // a create's row may not exist yet, or any more
	if op == nil {
		v, err := dm.d.VMs.Get(ctx, n)
		if err != nil {
			return nil, err
		}
		name, op = v.Name, dm.ops.Get(v.Name)
	}
	if op != nil {
		if _, _, ended := op.Outcome(); !ended {
			return dm.follow(ctx, c, op)
		}
	}
	v, gerr := dm.d.VMs.Get(ctx, name)
	if op != nil {
		if _, oerr, _ := op.Outcome(); oerr != nil && (errors.Is(gerr, api.ErrNotFound) || (gerr == nil && v.State == vm.StateError)) {
			return nil, opError(op, oerr)
		}
	}
	if gerr != nil {
		return nil, gerr
	}
	if v.State == vm.StateError {
		return nil, fmt.Errorf("vm %q is in error: %s: %w", v.Name, v.LastError, api.ErrNotRunning)
	}
	return dm.viewVM(v), nil
}

// follow streams op's stages to the client and returns its outcome. When
// the daemon interrupts the call at shutdown, the operation is interrupted
// too: its end (the rollback) is what the client is told.
func (dm *Daemon) follow(ctx context.Context, c *rpc.Call, op *vmop.Op) (any, error) {
	v, err := op.Follow(ctx, func(ev vmop.Event) {
		_ = c.Event(api.Event{Stage: ev.Stage, Message: ev.Message, At: ev.At})
	})
	if ctx.Err() != nil {
		if !errors.Is(context.Cause(ctx), api.ErrShuttingDown) {
			return nil, err
		}
		<-op.Done()
		v, err, _ = op.Outcome()
	}
	if err != nil {
		return nil, opError(op, err)
	}
	return v, nil
}

// opError is an operation's error as a follower gets it: its code kept,
// the operation named (a follower's own op id is not the operation's).
func opError(op *vmop.Op, err error) error {
	return fmt.Errorf("%s (op %s): %w", op.Kind, op.ID, err)
}
