package api

// MethodCapList lists the capability registry (`banger cap list`).
const MethodCapList = "cap.list"

// Capability states, as of a VM's last start.
const (
	CapPending   = "pending" // never started
	CapPreparing = "preparing"
	CapStarting  = "starting"
	CapReady     = "ready"
	CapFailed    = "failed"
	CapStopped   = "stopped"
)

// Capability is one entry of `banger cap list`.
type Capability struct {
	Name      string   `json:"name"`
	Summary   string   `json:"summary"`
	Needs     []string `json:"needs,omitempty"`
	Port      int      `json:"port,omitempty"`
	Version   string   `json:"version,omitempty"`   // the default version
	Versioned bool     `json:"versioned,omitempty"` // NAME@VERSION accepted
	// Cached is what the host keeps for it (downloads), with the VMs that
	// use each entry.
	Cached []CapCache `json:"cached,omitempty"`
}

// CapCache is one cached download of a capability.
type CapCache struct {
	Package   string   `json:"package"`
	Version   string   `json:"version"`
	Integrity string   `json:"integrity"`
	SHA256    string   `json:"sha256"`
	Size      int64    `json:"size"`
	Path      string   `json:"path"`
	UsedBy    []string `json:"used_by"` // VM names
}

// VMCapability is one of a VM's capabilities and its state.
type VMCapability struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	State   string `json:"state"`
	Error   string `json:"error,omitempty"`
	Port    int    `json:"port,omitempty"`
	// Connect says how to reach it from the host.
	Connect string `json:"connect,omitempty"`
	// PasswordFile holds the secret Connect reads (owner-only).
	PasswordFile string `json:"password_file,omitempty"`
}
