package api

import "time"

// Methods of `vm forward`.
const (
	// MethodVMForward opens a forward. Without Detach the call lasts as long
	// as the forward: its first event (stage ForwardListening) carries the
	// bound address, later ones (stage ForwardConnError) connections that
	// failed; the client half-closing its input stops the forward and the
	// final result is the Forward. With Detach the forward lives in the
	// daemon and the call returns it at once.
	MethodVMForward = "vm.forward"
	// MethodVMForwardStop stops the forwards of a VM's guest port.
	MethodVMForwardStop = "vm.forward_stop"
)

// Event stages of a foreground vm.forward call.
const (
	ForwardListening = "listening"  // Message: the bound local address
	ForwardConnError = "conn_error" // Message: why a connection failed
)

// ForwardParams asks for a TCP forward from a host address to a port on
// the guest's loopback.
type ForwardParams struct {
	Name      string `json:"name"`
	GuestPort int    `json:"guest_port"`
	// Local is the host address to listen on, "ADDR:PORT" (an IP literal or
	// localhost); "" is 127.0.0.1:GuestPort, port 0 any free port.
	Local string `json:"local,omitempty"`
	// AllowRemote permits a Local that is not a loopback address.
	AllowRemote bool `json:"allow_remote,omitempty"`
	Detach      bool `json:"detach,omitempty"`
}

// ForwardStopParams names the forwards to stop: every one of the VM's
// guest port, or only the one on Local.
type ForwardStopParams struct {
	Name      string `json:"name"`
	GuestPort int    `json:"guest_port"`
	Local     string `json:"local,omitempty"`
}

// Forward is one forward as the daemon holds it.
type Forward struct {
	VM        string    `json:"vm"`
	GuestPort int       `json:"guest_port"`
	Local     string    `json:"local"`    // the bound address
	Detached  bool      `json:"detached"` // lives in the daemon; else as long as its vm forward command
	Open      int       `json:"open"`     // connections open now
	Served    int64     `json:"served"`   // connections accepted so far
	Failed    int64     `json:"failed"`   // of those, how many the guest refused
	LastError string    `json:"last_error,omitempty"`
	Since     time.Time `json:"since"`
}
