package store

import "regexp"

// vmmRE is the shape of a VMM driver's name (vms.vmm). Which names exist is
// the VM service's business: the store keeps what it is given.
var vmmRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// vmmName is the VMM written for a VM row: "" means DefaultVMM.
func vmmName(n string) string {
	if n == "" {
		return DefaultVMM
	}
	return n
}
