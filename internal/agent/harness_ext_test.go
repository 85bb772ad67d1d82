package agent_test

import (
	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/agent/agenttest"
)

// The internal tests run on agenttest's harness (see agent.Harness).
func init() {
	agent.Harness.SocketPair = agenttest.SocketPair
	agent.Harness.Start = agenttest.Start
	agent.Harness.Service = agenttest.Service
	agent.Harness.Echo = agenttest.Echo
	agent.Harness.ClosedPort = agenttest.ClosedPort
	agent.Harness.RoundTrip = agenttest.RoundTrip
	agent.Harness.Echoes = agenttest.Echoes
}
