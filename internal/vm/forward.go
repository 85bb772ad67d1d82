package vm

import (
	"context"
	"fmt"

	"github.com/banger-dev/banger/internal/agent"
)

// DialGuest connects to TCP port on the loopback of a running VM (by name
// or id) through its guest agent: one connection of `vm forward`
// (internal/forward owns the listeners). The VM counts as in use until
// release is called (idle auto-stop). There is no SSH fallback: a guest
// without a recent agent is refused with the reason.
func (s *Service) DialGuest(ctx context.Context, name string, port int) (c *agent.Conn, release func(), err error) {
	v, ac, err := s.Agent(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	release = s.Hold(v.ID)
	c, err = ac.Dial(ctx, port)
	if err != nil {
		release()
		return nil, nil, fmt.Errorf("vm %q: %w", v.Name, err)
	}
	return c, release, nil
}
