package doctor

import (
	"context"
	"errors"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmm"
)

// VMMHost is a VMM driver that answers for this host (the Firecracker
// driver): whether it can run VMs here, whether it can boot a kernel, and
// its binary's version.
type VMMHost interface {
	Name() string
	vmm.HostChecker
	Version(ctx context.Context) (string, error)
}

// vmmSection checks d on this host and for every imported kernel. Its
// checks are optional unless d is the daemon's default VMM.
func vmmSection(ctx context.Context, d VMMHost, kernels []store.Kernel, required bool) (api.DoctorVMM, []api.DoctorCheck) {
	var out api.DoctorVMM
	var checks []api.DoctorCheck
	add := func(name string, ok bool, detail string) {
		checks = append(checks, api.DoctorCheck{Name: d.Name() + name, OK: ok, Detail: detail, Optional: !required})
	}
	st := d.CheckHost(ctx)
	out.Binary = st.Binary
	for _, c := range st.Checks {
		name := " " + c.Name
		if c.Name == vmm.HostBinary {
			name = ""
		}
		if c.Err != nil {
			out.Problems = append(out.Problems, c.Err.Error())
			add(name, false, c.Err.Error())
			continue
		}
		detail := c.Detail
		if c.Name == vmm.HostBinary {
			if v, err := d.Version(ctx); err != nil {
				detail += " (version unknown: " + err.Error() + ")"
			} else {
				out.Version = v
				detail += " (" + v + ")"
			}
		}
		add(name, true, detail)
	}
	fit := 0
	var unfit []string
	for _, k := range kernels {
		dk := api.DoctorKernel{Name: k.Name, Known: true}
		switch err := d.CheckKernel(k.Path); {
		case err == nil:
			dk.OK, dk.Detail = true, "boots under "+d.Name()
			fit++
		case errors.Is(err, vmm.ErrUnchecked):
			dk.Known, dk.Detail = false, "cannot tell: "+err.Error()
		default:
			dk.Detail = err.Error()
		}
		if !dk.OK {
			unfit = append(unfit, k.Name+": "+dk.Detail)
		}
		out.Kernels = append(out.Kernels, dk)
		add(" kernel "+k.Name, dk.OK, dk.Detail)
	}
	if len(kernels) == 0 {
		unfit = append(unfit, "no kernel imported")
		add(" kernel", false, "none imported")
	}
	out.Available = len(out.Problems) == 0 && fit > 0
	if !out.Available {
		reasons := append([]string{}, out.Problems...)
		if fit == 0 {
			reasons = append(reasons, "no imported kernel is known to boot under "+d.Name()+" ("+strings.Join(unfit, "; ")+")")
		}
		out.Reason = strings.Join(reasons, "; ")
	}
	return out, checks
}
