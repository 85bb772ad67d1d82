package privileged

import (
	"encoding/json"
	"net"
	"net/netip"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/hostnet"
)

// The helper protocol: one request per connection, one JSON line each way.
// The reply to open_tap and listen_dns carries the fds (SCM_RIGHTS) on the
// same message as its first byte.
const (
	opEnsureBridge = "ensure_bridge"
	opCreateTap    = "create_tap"
	opDeleteTap    = "delete_tap"
	opReleaseTap   = "release_tap"
	opPoolTaps     = "pool_taps"
	opFlushNeigh   = "flush_neigh"
	opOpenTap      = "open_tap"
	opFWApply      = "fw_apply"
	opFWRemove     = "fw_remove"
	opFWPrune      = "fw_prune"
	opListenDNS    = "listen_dns"
	opRouteDNS     = "route_dns"
	opRevertDNS    = "revert_dns"
	opLaunchJailer = "launch_jailer"
)

// Limits of the wire: a request or reply larger than this is refused.
const (
	maxRequest = 64 << 10
	maxReply   = 1 << 20
	maxFDs     = 4
)

type request struct {
	Op   string          `json:"op"`
	OpID string          `json:"op_id,omitempty"`
	Args json.RawMessage `json:"args,omitempty"`
}

type reply struct {
	Error  *api.Error      `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	FDs    int             `json:"fds,omitempty"`
}

type tapArgs struct {
	Name string `json:"name"`
	UID  int    `json:"uid,omitempty"`
}

type ipArgs struct {
	IP netip.Addr `json:"ip"`
}

type vmNetArgs struct {
	ID         string     `json:"id"`
	IP         netip.Addr `json:"ip"`
	MAC        string     `json:"mac"`
	Tap        string     `json:"tap"`
	NAT        bool       `json:"nat,omitempty"`
	NATPrivate bool       `json:"nat_private,omitempty"`
	HostAccess bool       `json:"host_access,omitempty"`
}

func (a vmNetArgs) mac() (net.HardwareAddr, error) { return net.ParseMAC(a.MAC) }

type removeArgs struct {
	ID  string `json:"id"`
	Tap string `json:"tap"`
}

type pruneArgs struct {
	Keep map[string]string `json:"keep"`
}

func vmNetFromArgs(a vmNetArgs, mac net.HardwareAddr) hostnet.VMNet {
	return hostnet.VMNet{ID: a.ID, IP: a.IP, MAC: mac, Tap: a.Tap, NAT: a.NAT, NATPrivate: a.NATPrivate, HostAccess: a.HostAccess}
}

func vmNetToArgs(v hostnet.VMNet) vmNetArgs {
	return vmNetArgs{ID: v.ID, IP: v.IP, MAC: v.MAC.String(), Tap: v.Tap, NAT: v.NAT, NATPrivate: v.NATPrivate, HostAccess: v.HostAccess}
}
