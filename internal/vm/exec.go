package vm

import (
	"context"
	"fmt"
	"github.com/banger-dev/banger/internal/agent"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/store"
)

// Exec runs a command in a running VM over the daemon's kept SSH connection.
// A stopped VM is refused at once: never a hang, never an auto-start.
func (s *Service) Exec(ctx context.Context, name string, req guest.ExecRequest) (int, error) {
	v, err := s.Get(ctx, name)
	if err != nil {
		return 0, err
	}
	if err := s.usable(ctx, v); err != nil {
		return 0, err
	}
	release := s.Hold(v.ID) // the VM is in use while the command runs
	defer release()
	return s.d.Guest.Exec(ctx, s.target(v), req)
}

// SSHInfo tells the CLI how to reach a running VM directly.
func (s *Service) SSHTarget(ctx context.Context, name string) (store.VM, guest.Target, error) {
	v, err := s.Get(ctx, name)
	if err != nil {
		return v, guest.Target{}, err
	}
	if err := s.usable(ctx, v); err != nil {
		return v, guest.Target{}, err
	}
	return v, s.target(v), nil
}

// Agent returns a running VM's guest-agent session: stats and sessions
// exist only over the agent (SSH has no equivalent).
func (s *Service) Agent(ctx context.Context, name string) (store.VM, *agent.Client, error) {
	v, err := s.Get(ctx, name)
	if err != nil {
		return v, nil, err
	}
	if err := s.usable(ctx, v); err != nil {
		return v, nil, err
	}
	s.Touch(v.ID) // a session or other use of the agent is activity (idle.go)
	c, err := s.d.Guest.Agent(ctx, s.target(v))
	if err != nil {
		return v, nil, fmt.Errorf("vm %q: %w", v.Name, err)
	}
	return v, c, nil
}
