package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/forward"
	"github.com/banger-dev/banger/internal/rpc"
)

// registerForward installs vm.forward and vm.forward_stop.
func (dm *Daemon) registerForward(srv *rpc.Server) {
	srv.Handle(api.MethodVMForward, dm.vmForward)
	srv.Handle(api.MethodVMForwardStop, dm.vmForwardStop)
}

var errNoForwards = errors.New("port forwards are not wired in this daemon")

// vmForward opens a forward. Detached, it returns it at once. Otherwise the
// call is the forward's life: the bound address goes out as the first
// event, failed connections as later ones; the client half-closing its input
// (Ctrl-C) stops it and gets the final counts, the client going away stops
// it too, and a stop from elsewhere (the VM's, --stop, the daemon's
// shutdown) ends the call with its reason.
func (dm *Daemon) vmForward(ctx context.Context, c *rpc.Call) (any, error) {
	if dm.d.Forwards == nil {
		return nil, errNoForwards
	}
	var p api.ForwardParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Name == "" {
		return nil, fmt.Errorf("name is required: %w", api.ErrInvalid)
	}
	f, err := dm.d.Forwards.Start(ctx, p)
	if err != nil {
		return nil, err
	}
	if p.Detach {
		return f.View(), nil
	}
	_ = c.Event(api.Event{Stage: api.ForwardListening, Message: f.Local()})
	inputDone := make(chan struct{})
	go func() {
		defer close(inputDone)
		for range c.Input() {
		}
	}()
	for {
		select {
		case msg := <-f.Events():
			_ = c.Event(api.Event{Stage: api.ForwardConnError, Message: msg})
		case <-f.Done():
			return nil, f.Err()
		case <-ctx.Done():
			f.Stop(forward.ErrClientGone)
			return nil, ctx.Err()
		case <-inputDone:
			f.Stop(nil)
			return f.View(), nil
		}
	}
}

func (dm *Daemon) vmForwardStop(ctx context.Context, c *rpc.Call) (any, error) {
	if dm.d.Forwards == nil {
		return nil, errNoForwards
	}
	var p api.ForwardStopParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Name == "" {
		return nil, fmt.Errorf("name is required: %w", api.ErrInvalid)
	}
	return dm.d.Forwards.Stop(ctx, p)
}
