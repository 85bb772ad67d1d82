package agenttest

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
)

// TestStartDialsServices: the client reaches the real agent, which reaches
// the test's loopback: Echo answers, ClosedPort refuses.
func TestStartDialsServices(t *testing.T) {
	c := Start(t, &agent.Server{Version: "agenttest"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := c.Info(ctx)
	if err != nil || info.Version != "agenttest" {
		t.Fatalf("info %+v, %v", info, err)
	}
	conn, err := c.Dial(ctx, Service(t, Echo))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(conn); err != nil || string(got) != "ping" {
		t.Fatalf("echo %q, %v", got, err)
	}
	if _, err := c.Dial(ctx, ClosedPort(t)); !errors.Is(err, agent.ErrDial) {
		t.Fatalf("dial to a closed port: %v", err)
	}
}
