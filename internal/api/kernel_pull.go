package api

// MethodKernelPull fetches a kernel from a catalog (see internal/kernel's
// Catalog for the JSON schema), checks its sha256 and imports it.
const MethodKernelPull = "kernel.pull"

type KernelPullParams struct {
	Entry    string `json:"entry"`              // catalog entry name, e.g. generic-6.1
	Name     string `json:"name,omitempty"`     // local kernel name; default: the entry's
	Catalog  string `json:"catalog"`            // catalog URL (https; http only with Insecure)
	Insecure bool   `json:"insecure,omitempty"` // allow plain http for the catalog and its downloads
}
