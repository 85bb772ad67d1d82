// Package capability is the registry of what a VM can be given beyond its
// image at create (`vm create --cap NAME[@VERSION]`): each capability has a
// host-side prepare (download and cache what the guest needs), a guest-side
// post-start (install, configure, start, then a readiness check) and an
// idempotent cleanup. The VM service runs the hooks as named start steps, so
// a failing capability fails the start with its name and rolls back.
package capability

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"github.com/banger-dev/banger/internal/api"
)

// Info is what `banger cap list` shows of a capability.
type Info struct {
	Name    string   `json:"name"`
	Summary string   `json:"summary"`
	Needs   []string `json:"needs,omitempty"` // what it needs of the image and the host
	Port    int      `json:"port,omitempty"`  // the guest port it serves, if any
	Version string   `json:"version,omitempty"`
	// Versioned: `--cap NAME@VERSION` is accepted.
	Versioned bool `json:"versioned,omitempty"`
}

// VM is what the hooks are told about the VM they run for.
type VM struct {
	ID, Name string
	Dir      string // the VM's state directory (host, owner-only)
	Version  string // from --cap NAME@VERSION; "" for the default
	// Env is set only on the start that follows the create: the values of
	// `vm create --cap-env` (model provider credentials); they are written
	// into the guest once and never kept on the host.
	Env map[string]string
	// Progress reports what a long hook is doing (a download, the wait
	// for a server); nil: nothing is reported.
	Progress func(msg string)
}

// Say reports msg through vm.Progress, if any.
func (vm VM) Say(format string, a ...any) {
	if vm.Progress != nil {
		vm.Progress(fmt.Sprintf(format, a...))
	}
}

// Guest is the running VM as post-start sees it (the guest agent).
type Guest interface {
	// Run runs script with sh as root in the guest, stdin streamed to it;
	// stdout and stderr come back bounded (tails).
	Run(ctx context.Context, script string, stdin io.Reader) (Result, error)
	// Dial opens a TCP connection to a port on the guest's loopback
	// through the agent (no route to the guest needed).
	Dial(ctx context.Context, port int) (io.ReadWriteCloser, error)
}

// Result is a finished guest script.
type Result struct {
	Code           int
	Stdout, Stderr string
}

// Capability is one entry of the registry.
type Capability interface {
	Info() Info
	// Configure applies create-time settings to the new VM's parameters
	// (nat turns NAT on); it also validates the version asked for.
	Configure(p *api.CreateVMParams, version string) error
	// Prepare runs on the host before the VM boots (each start).
	Prepare(ctx context.Context, vm VM) error
	// PostStart runs once the guest answers: install, start, wait ready.
	PostStart(ctx context.Context, vm VM, g Guest) error
	// Cleanup releases what Prepare and PostStart hold on the host. It is
	// idempotent: it runs at rollback, stop and delete, maybe twice.
	Cleanup(ctx context.Context, vm VM) error
	// Connect is how a user reaches it (zero when there is nothing to
	// reach), for `vm show`; host is the VM's DNS name.
	Connect(vm VM, host string) Connection
}

// Connection is how the host reaches a capability's service.
type Connection struct {
	Command      string // e.g. "opencode attach http://ai.vm:4096"
	PasswordFile string // the secret Command reads, if any (owner-only)
}

// Registry holds the known capabilities by name.
type Registry struct {
	caps []Capability
}

// NewRegistry returns a registry of caps (names must be unique).
func NewRegistry(caps ...Capability) *Registry {
	return &Registry{caps: caps}
}

// List returns every capability's info, by name.
func (r *Registry) List() []Info {
	out := make([]Info, 0, len(r.caps))
	for _, c := range r.caps {
		out = append(out, c.Info())
	}
	slices.SortFunc(out, func(a, b Info) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Lookup finds a capability by name.
func (r *Registry) Lookup(name string) (Capability, error) {
	for _, c := range r.caps {
		if c.Info().Name == name {
			return c, nil
		}
	}
	names := make([]string, 0, len(r.caps))
	for _, c := range r.caps {
		names = append(names, c.Info().Name)
	}
	slices.Sort(names)
	return nil, fmt.Errorf("unknown capability %q (known: %s): %w", name, strings.Join(names, ", "), api.ErrInvalid)
}

var (
	nameRE    = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	versionRE = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z.+-]{0,63}$`)
)

// Ref is one `--cap NAME[@VERSION]`.
type Ref struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
}

func (r Ref) String() string {
	if r.Version == "" {
		return r.Name
	}
	return r.Name + "@" + r.Version
}

// ParseRef parses NAME[@VERSION].
func ParseRef(s string) (Ref, error) {
	name, version, _ := strings.Cut(s, "@")
	if !nameRE.MatchString(name) {
		return Ref{}, fmt.Errorf("capability %q: a name is lowercase letters, digits and '-': %w", s, api.ErrInvalid)
	}
	if strings.Contains(s, "@") && !versionRE.MatchString(version) {
		return Ref{}, fmt.Errorf("capability %q: version %q: letters, digits, '.', '+', '-': %w", s, version, api.ErrInvalid)
	}
	return Ref{Name: name, Version: version}, nil
}

// CleanupAll runs the cleanups of refs in reverse order and joins their
// errors, each named, so one failure neither hides another nor stops the
// rest.
func (r *Registry) CleanupAll(ctx context.Context, vm VM, refs []Ref) error {
	var errs []error
	for i := len(refs) - 1; i >= 0; i-- {
		c, err := r.Lookup(refs[i].Name)
		if err != nil {
			// Not this daemon's (a downgrade, a capability since removed):
			// it prepared nothing that needs releasing, and refusing would
			// make the VM impossible to stop or delete.
			continue
		}
		v := vm
		v.Version = refs[i].Version
		if err := c.Cleanup(ctx, v); err != nil {
			errs = append(errs, fmt.Errorf("capability %s: cleanup: %w", refs[i].Name, err))
		}
	}
	return errors.Join(errs...)
}
