// Package privileged is the line between bangerd and what needs root: the
// bridge, TAPs (and their open fds), the per-VM firewall, ip_forward, the DNS
// port and resolver routing. bangerd always talks to the Privileged
// interface; Local implements it in-process (bangerd running as root: the
// all-in-one mode), Client implements it over the helper's unix socket
// (`banger system helper`, root, serving an unprivileged owner's bangerd),
// whose Server validates every argument against banger's own rules before
// calling a Local.
package privileged

import (
	"context"
	"net/netip"
	"os"

	"github.com/banger-dev/banger/internal/hostnet"
)

// DefaultSocket is where the helper listens unless told otherwise.
const DefaultSocket = "/run/banger/helper.sock"

// Privileged is every host operation bangerd cannot do as an ordinary user.
// Its method set is a superset of vm.Network and vm.Firewall.
type Privileged interface {
	// EnsureBridge creates the bridge (name and subnet are the privileged
	// side's configuration, never the caller's).
	EnsureBridge(ctx context.Context) error
	// CreateTap makes (or reuses) pooled TAP name, owned by uid, up on the bridge.
	CreateTap(ctx context.Context, name string, uid int) error
	DeleteTap(ctx context.Context, name string) error
	// ReleaseTap returns a TAP to the pool (down, still on the bridge).
	ReleaseTap(ctx context.Context, name string) error
	PoolTaps(ctx context.Context) ([]string, error)
	FlushNeigh(ctx context.Context, ip netip.Addr) error
	// OpenTap returns an open queue of an existing pooled TAP, for the VMM
	// to inherit (QEMU -netdev tap,fd=N). The caller closes it.
	OpenTap(ctx context.Context, name string) (*os.File, error)

	// Apply, Remove and Prune are hostnet.Firewall's: per-VM rules, and
	// ip_forward while a VM has NAT.
	Apply(ctx context.Context, v hostnet.VMNet) error
	Remove(ctx context.Context, id, tap string) error
	Prune(ctx context.Context, keep map[string]string) error

	// ListenDNS returns UDP and TCP sockets bound to the gateway's port 53
	// (IP_FREEBIND: before the bridge carries the address).
	ListenDNS(ctx context.Context) (*hostnet.DNSConns, error)
	// RouteDNS points systemd-resolved's ~vm at the gateway over the bridge
	// link when the privileged side runs in the host's own network namespace
	// with resolved; false (no error) when that does not apply.
	RouteDNS(ctx context.Context) (bool, error)
	RevertDNS(ctx context.Context) error
}
