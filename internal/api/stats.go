package api

import "time"

// MethodVMStats samples running VMs (all of them when the name is empty).
const MethodVMStats = "vm.stats"

// Idle is a VM's idle auto-stop state, part of the VM view.
type Idle struct {
	IdleTimeout int `json:"idle_timeout_s"` // 0: never stopped for idleness
	// LastActivity is when the running VM was last seen in use (exec, an
	// SSH connection, a session, guest CPU); nil when stopped.
	LastActivity *time.Time `json:"last_activity,omitempty"`
	// StopReason and StoppedAt: why and when the daemon last stopped the
	// VM on its own ("idle for 30m0s"); cleared by the next start.
	StopReason string     `json:"stop_reason,omitempty"`
	StoppedAt  *time.Time `json:"stopped_at,omitempty"`
}

// StatsParams names the VM to sample; "" samples every running VM.
type StatsParams struct {
	Name string `json:"name,omitempty"`
}

// VMStats is one sample of a running VM. The guest part comes from its
// agent and is missing (GuestError says why) when the agent does not
// answer; the host part (network, VMM memory) is there regardless.
type VMStats struct {
	Name      string    `json:"name"`
	ID        string    `json:"id"`
	SampledAt time.Time `json:"sampled_at"`

	Guest      *GuestStats `json:"guest,omitempty"`
	GuestError string      `json:"guest_error,omitempty"`

	// Net counts bytes from the guest's point of view: Rx is what the guest
	// received (its TAP's tx_bytes on the host), Tx what it sent (rx_bytes).
	Net      *NetStats `json:"net,omitempty"`
	NetError string    `json:"net_error,omitempty"`

	VMMRSSBytes uint64 `json:"vmm_rss_bytes,omitempty"` // the VMM process's resident memory on the host
	VMMError    string `json:"vmm_error,omitempty"`

	Idle
}

// GuestStats is what the guest's agent reports, bounded by the host.
type GuestStats struct {
	// CPUPercent is the busy share of all vCPUs together (0-100) over the
	// last CPUWindowMS milliseconds; steal time counts as neither busy nor
	// idle.
	CPUPercent    float64 `json:"cpu_percent"`
	CPUWindowMS   int64   `json:"cpu_window_ms"`
	MemUsedBytes  uint64  `json:"mem_used_bytes"` // total - available
	MemTotalBytes uint64  `json:"mem_total_bytes"`
	Load1         float64 `json:"load1"`
	Load5         float64 `json:"load5"`
	Load15        float64 `json:"load15"`
	RootUsedBytes uint64  `json:"root_used_bytes"`
	RootTotal     uint64  `json:"root_total_bytes"`
	WorkUsedBytes uint64  `json:"work_used_bytes"` // the work disk, /root
	WorkTotal     uint64  `json:"work_total_bytes"`
	UptimeSeconds int64   `json:"uptime_s"`
	// SSHSessions is the number of established connections to the guest's
	// port 22 other than the daemon's own; nil when the agent does not count them.
	SSHSessions *int `json:"ssh_sessions,omitempty"`
}

// NetStats are a VM's network byte counters.
type NetStats struct {
	RxBytes uint64 `json:"rx_bytes"`
	TxBytes uint64 `json:"tx_bytes"`
}
