package api

import "time"

// Pause/resume, snapshots, forks and warm templates.
const (
	MethodVMPause      = "vm.pause"
	MethodVMResume     = "vm.resume"
	MethodVMSnapshot   = "vm.snapshot"
	MethodVMFork       = "vm.fork"
	MethodSnapshotList = "snapshot.list"
	MethodSnapshotRm   = "snapshot.rm"
	MethodImageWarm    = "image.warm"
)

// StatePaused is how a running VM whose vCPUs are stopped is shown.
const StatePaused = "paused"

type SnapshotVMParams struct {
	Name     string `json:"name"`     // the VM
	Snapshot string `json:"snapshot"` // the new snapshot's name
}

type ForkParams struct {
	Name       string `json:"name"`                  // the running VM to fork
	Count      int    `json:"count"`                 // how many children
	NamePrefix string `json:"name_prefix,omitempty"` // children are <prefix>-<n>; default <name>-fork
}

type ImageWarmParams struct {
	Image string `json:"image"`
}

// Snapshot is the CLI-facing view of a snapshot.
type Snapshot struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	SourceVM   string    `json:"source_vm"`
	Image      string    `json:"image"`
	Kernel     string    `json:"kernel"`
	VCPU       int       `json:"vcpu"`
	MemoryMiB  int       `json:"memory_mib"`
	VMM        string    `json:"vmm"`
	VMMVersion string    `json:"vmm_version"`
	CPU        string    `json:"cpu"`
	RAM        string    `json:"ram"` // "file" (mapped privately by restores) or "stream"
	SizeBytes  int64     `json:"size_bytes"`
	WarmFor    string    `json:"warm_for,omitempty"`
	Auto       bool      `json:"auto,omitempty"`
	UsedBy     []string  `json:"used_by"` // VMs restored from it
	Dir        string    `json:"dir"`
	CreatedAt  time.Time `json:"created_at"`
}
