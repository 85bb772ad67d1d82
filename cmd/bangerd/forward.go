package main

import (
	"context"
	"fmt"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/forward"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vm"
)

// forwardVMs is the VM service as port forwards see it.
type forwardVMs struct{ vms *vm.Service }

func (f forwardVMs) Running(ctx context.Context, name string) (string, string, error) {
	v, err := f.vms.Get(ctx, name)
	if err != nil {
		return "", "", err
	}
	if !f.vms.Running(v) {
		return "", "", fmt.Errorf("vm %q is %s: %w", v.Name, v.State, api.ErrNotRunning)
	}
	return v.ID, v.Name, nil
}

func (f forwardVMs) Alive(id string) bool { return f.vms.Running(store.VM{ID: id}) }

func (f forwardVMs) Dial(ctx context.Context, id string, port int) (forward.Conn, func(), error) {
	c, release, err := f.vms.DialGuest(ctx, id, port)
	if err != nil {
		return nil, nil, err
	}
	return c, release, nil
}
