package privileged

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
)

// Local does the privileged operations in this process: bangerd running as
// root, or the helper after its Server validated a request.
type Local struct {
	Log    *slog.Logger
	Net    *hostnet.Manager
	FW     *hostnet.Firewall
	Runner system.Runner
	// LookPath finds resolvectl (system.LookPath in production).
	LookPath func(string) (string, error)
	// Jail, when set, lets LaunchJailer start Firecracker's jailer.
	Jail *JailerConfig
}

var _ Privileged = (*Local)(nil)

// NewLocal builds a Local for cfg.
func NewLocal(log *slog.Logger, runner system.Runner, cfg hostnet.Config) *Local {
	return &Local{Log: log, Runner: runner, LookPath: system.LookPath,
		Net: &hostnet.Manager{Log: log, Cfg: cfg}, FW: &hostnet.Firewall{Log: log, Cfg: cfg}}
}

func (l *Local) log() *slog.Logger {
	if l.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.Log
}

func (l *Local) bridge() string {
	if l.Net.Cfg.Bridge == "" {
		return hostnet.DefaultBridge
	}
	return l.Net.Cfg.Bridge
}

func (l *Local) EnsureBridge(ctx context.Context) error { return l.Net.EnsureBridge(ctx) }
func (l *Local) CreateTap(ctx context.Context, name string, uid int) error {
	return l.Net.CreateTap(ctx, name, uid)
}
func (l *Local) DeleteTap(ctx context.Context, name string) error { return l.Net.DeleteTap(ctx, name) }
func (l *Local) ReleaseTap(ctx context.Context, name string) error {
	return l.Net.ReleaseTap(ctx, name)
}
func (l *Local) PoolTaps(ctx context.Context) ([]string, error) { return l.Net.PoolTaps(ctx) }
func (l *Local) FlushNeigh(ctx context.Context, ip netip.Addr) error {
	return l.Net.FlushNeigh(ctx, ip)
}
func (l *Local) OpenTap(ctx context.Context, name string) (*os.File, error) {
	return l.Net.OpenTap(ctx, name)
}
func (l *Local) Apply(ctx context.Context, v hostnet.VMNet) error { return l.FW.Apply(ctx, v) }
func (l *Local) Remove(ctx context.Context, id, tap string) error { return l.FW.Remove(ctx, id, tap) }
func (l *Local) Prune(ctx context.Context, keep map[string]string) error {
	return l.FW.Prune(ctx, keep)
}

func (l *Local) ListenDNS(ctx context.Context) (*hostnet.DNSConns, error) {
	return hostnet.ListenDNS(ctx, net.JoinHostPort(l.Net.Cfg.Gateway().String(), "53"))
}

// RouteDNS tells systemd-resolved to send *.vm queries for the bridge link
// to banger's server. Only in the host's own network namespace (never from a
// test's namespace, whose bridge the host resolver cannot see) and only
// when resolved runs.
func (l *Local) RouteDNS(ctx context.Context) (bool, error) {
	if !inInitNetNS() {
		return false, nil
	}
	if _, err := os.Stat("/run/systemd/resolve/io.systemd.Resolve"); err != nil {
		return false, nil
	}
	if l.LookPath == nil {
		return false, nil
	}
	if _, err := l.LookPath("resolvectl"); err != nil {
		return false, nil
	}
	if err := l.Net.EnsureBridge(ctx); err != nil {
		return false, fmt.Errorf("resolved routing: %w", err)
	}
	br, gw := l.bridge(), l.Net.Cfg.Gateway().String()
	for _, args := range [][]string{{"dns", br, gw}, {"domain", br, "~" + hostnet.DNSZone}} {
		if _, err := l.Runner.Run(ctx, "resolvectl", args...); err != nil {
			return false, fmt.Errorf("resolved routing: %w", err)
		}
	}
	l.log().InfoContext(ctx, "systemd-resolved routes ~vm to banger", "link", br, "dns", gw)
	return true, nil
}

// RevertDNS undoes RouteDNS; nothing to undo is success.
func (l *Local) RevertDNS(ctx context.Context) error {
	if !inInitNetNS() || l.LookPath == nil {
		return nil
	}
	if _, err := l.LookPath("resolvectl"); err != nil {
		return nil
	}
	if _, err := l.Runner.Run(ctx, "resolvectl", "revert", l.bridge()); err != nil {
		return fmt.Errorf("resolvectl revert %s: %w", l.bridge(), err)
	}
	return nil
}

func inInitNetNS() bool {
	var self, init unix.Stat_t
	if unix.Stat("/proc/self/ns/net", &self) != nil || unix.Stat("/proc/1/ns/net", &init) != nil {
		return false
	}
	return self.Ino == init.Ino && self.Dev == init.Dev
}

var _ firecracker.Launcher = (*Local)(nil)
