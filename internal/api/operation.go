package api

import "time"

// MethodVMWait follows the create/start/restart running on a VM: the stages
// seen so far and then the live ones as events, the operation's outcome as
// the result (the VM) or the error. With nothing running it answers at once
// with the VM's current state (an error for a VM in error).
const MethodVMWait = "vm.wait"

// StartVMParams addresses the VM of vm.start and vm.restart.
type StartVMParams struct {
	Name string `json:"name"`
	// Detach: answer with OpStarted at once; the operation runs on in the
	// daemon and `vm.wait` follows it.
	Detach bool `json:"detach,omitempty"`
}

// OpStarted answers a request made with Detach: the operation runs on in
// the daemon under OpID.
type OpStarted struct {
	OpID string `json:"op_id"`
	Kind string `json:"kind"` // create, start, restart
	Name string `json:"name"` // the VM
}

// Operation is the long operation in progress on a VM (part of the VM view
// while one runs).
type Operation struct {
	OpID    string    `json:"op_id"`
	Kind    string    `json:"kind"`
	Started time.Time `json:"started"`
	// Stage is the stage in progress ("" before the first one), since
	// StageStarted.
	Stage        string    `json:"stage,omitempty"`
	StageStarted time.Time `json:"stage_started,omitzero"`
}
