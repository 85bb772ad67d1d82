package vm

import (
	"time"

	"github.com/banger-dev/banger/internal/agentinit"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/store"
)

// firstBootArg is the kernel argument that makes a VM of an image without
// systemd or sshd boot through banger-agent's first-boot init (which
// installs them, then execs systemd; on later boots it execs systemd at
// once). Images built or pulled with both get nothing.
func (s *Service) firstBootArg(v store.VM) string {
	info, err := image.Load(s.d.Layout, v.Image)
	if err != nil || !info.FirstBoot {
		return ""
	}
	return " init=" + agentinit.FirstBootPath
}

// FirstBootTimeout is the default wait for SSH on VMs of first-boot images:
// the first boot installs packages (~1.5–2 min under TCG here); later boots
// are as fast as any, so the longer ceiling costs nothing.
const FirstBootTimeout = 10 * time.Minute

// defaultBootTimeout is the wait for SSH when the caller asked for none.
func (s *Service) defaultBootTimeout(v store.VM) time.Duration {
	if s.firstBootArg(v) != "" {
		return FirstBootTimeout
	}
	return DefaultBootTimeout
}
