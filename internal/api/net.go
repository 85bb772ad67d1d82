package api

// Methods of the host-networking features.
const (
	MethodVMSet   = "vm.set"
	MethodVMPorts = "vm.ports"
)

// SetVMParams changes a stopped VM; nil (empty) fields are left alone.
// Changes take effect at the next start.
type SetVMParams struct {
	Name       string `json:"name"`
	NAT        *bool  `json:"nat,omitempty"`
	NATPrivate *bool  `json:"nat_private,omitempty"`
	HostAccess *bool  `json:"host_access,omitempty"`
	VCPU       *int   `json:"vcpu,omitempty"`
	MemoryMiB  *int   `json:"memory_mib,omitempty"`
	// WorkDisk grows the work disk to this size ("32G"; never shrinks; raw
	// work disks only), at once.
	WorkDisk string `json:"work_disk,omitempty"`
	// IdleTimeout (seconds, 0 = off) is the one change a running VM takes,
	// at once.
	IdleTimeout *int `json:"idle_timeout_s,omitempty"`
}

// Port is one listening socket in a guest.
type Port struct {
	Proto   string `json:"proto"`   // tcp | udp
	Address string `json:"address"` // bound address: 0.0.0.0, ::, 127.0.0.1, ...
	Port    int    `json:"port"`
	Process string `json:"process,omitempty"`
	URL     string `json:"url,omitempty"` // http://NAME.vm:PORT for TCP not bound to loopback
	// Forward is the command that reaches the port from the host through
	// the guest agent ("banger vm forward NAME PORT"): TCP bound to loopback
	// or to every address, which is where the agent connects.
	Forward string `json:"forward,omitempty"`
}
