package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/capability"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
)

// Limits of `vm create --cap-env`: what goes into a guest service's
// environment file.
const (
	maxCapEnv      = 32
	maxCapEnvValue = 16 << 10
)

// capPostStartTimeout bounds one capability's post-start (its own
// readiness wait is shorter).
const capPostStartTimeout = 10 * time.Minute

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// capRefs checks a create's --cap and --cap-env and applies each
// capability's create-time settings to p (nat turns NAT on). Nothing exists
// yet when it refuses.
func (s *Service) capRefs(p *api.CreateVMParams) ([]capability.Ref, error) {
	if len(p.Caps) == 0 {
		if len(p.CapEnv) > 0 {
			return nil, fmt.Errorf("--cap-env needs a --cap: %w", api.ErrInvalid)
		}
		return nil, nil
	}
	if s.d.Caps == nil {
		return nil, fmt.Errorf("this daemon has no capabilities: %w", api.ErrInvalid)
	}
	if p.From != "" {
		return nil, fmt.Errorf("--cap with --from: a restored VM keeps what its snapshot had; capabilities are given at a boot: %w", api.ErrInvalid)
	}
	var refs []capability.Ref
	for _, raw := range p.Caps {
		r, err := capability.ParseRef(raw)
		if err != nil {
			return nil, err
		}
		if slices.ContainsFunc(refs, func(o capability.Ref) bool { return o.Name == r.Name }) {
			return nil, fmt.Errorf("capability %s given twice: %w", r.Name, api.ErrInvalid)
		}
		c, err := s.d.Caps.Lookup(r.Name)
		if err != nil {
			return nil, err
		}
		if r.Version != "" && !c.Info().Versioned {
			return nil, fmt.Errorf("capability %s has no versions (%q): %w", r.Name, raw, api.ErrInvalid)
		}
		if err := c.Configure(p, r.Version); err != nil {
			return nil, fmt.Errorf("capability %s: %w", r.Name, err)
		}
		refs = append(refs, r)
	}
	if len(p.CapEnv) > maxCapEnv {
		return nil, fmt.Errorf("--cap-env: %d variables, at most %d: %w", len(p.CapEnv), maxCapEnv, api.ErrInvalid)
	}
	for k, v := range p.CapEnv {
		if !envKeyRE.MatchString(k) {
			return nil, fmt.Errorf("--cap-env %q: a name is letters, digits and '_': %w", k, api.ErrInvalid)
		}
		if len(v) > maxCapEnvValue || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return nil, fmt.Errorf("--cap-env %s: the value must be one line of at most %d bytes without control characters: %w", k, maxCapEnvValue, api.ErrInvalid)
		}
	}
	return refs, nil
}

// recordCaps stores the capabilities of a new VM and keeps its --cap-env
// for the first start.
func (s *Service) recordCaps(ctx context.Context, v store.VM, refs []capability.Ref, env map[string]string) error {
	if len(refs) == 0 {
		return nil
	}
	rows := make([]store.Capability, len(refs))
	for i, r := range refs {
		rows[i] = store.Capability{Name: r.Name, Version: r.Version}
	}
	if err := s.d.Store.AddCapabilities(ctx, v.ID, rows); err != nil {
		return err
	}
	if len(env) > 0 {
		s.mu.Lock()
		s.capEnv[v.ID] = env
		s.mu.Unlock()
	}
	return nil
}

// capVM is what v's capability hooks are told.
func (s *Service) capVM(v store.VM, c store.Capability) capability.VM {
	return capability.VM{ID: v.ID, Name: v.Name, Dir: v.Dir, Version: c.Version}
}

func capRefsOf(caps []store.Capability) []capability.Ref {
	refs := make([]capability.Ref, len(caps))
	for i, c := range caps {
		refs[i] = capability.Ref{Name: c.Name, Version: c.Version}
	}
	return refs
}

// capSteps are the start steps of v's capabilities: pre run first (a step
// whose undo is every cleanup, then each host-side prepare), post after the
// guest answers (each post-start: install, start, readiness). A failure
// names the capability, records it on the capability and rolls the start
// back like any step.
func (s *Service) capSteps(ctx context.Context, v *store.VM, progress Progress) (pre, post []step, err error) {
	caps, err := s.d.Store.Capabilities(ctx, v.ID)
	if err != nil || len(caps) == 0 {
		return nil, nil, err
	}
	if s.d.Caps == nil {
		return nil, nil, fmt.Errorf("vm %q has capabilities but this daemon has none: %w", v.Name, api.ErrInvalid)
	}
	hooks := make([]capability.Capability, len(caps))
	for i, c := range caps {
		if hooks[i], err = s.d.Caps.Lookup(c.Name); err != nil {
			return nil, nil, fmt.Errorf("vm %q: %w", v.Name, err)
		}
	}
	pre = append(pre, step{name: "capabilities",
		do:   func(ctx context.Context) error { return nil },
		undo: func(ctx context.Context) error { return s.capTeardown(ctx, *v) }})
	for i, c := range caps {
		hook := hooks[i]
		prepName, postName := "cap_prepare:"+c.Name, "cap:"+c.Name
		pre = append(pre, step{name: prepName, do: func(ctx context.Context) error {
			cv := s.capVM(*v, c)
			cv.Progress = progress.say(prepName)
			return s.capHook(ctx, *v, c.Name, api.CapPreparing, "prepare", func() error {
				return hook.Prepare(ctx, cv)
			})
		}})
		post = append(post, step{name: postName, do: func(ctx context.Context) error {
			cv := s.capVM(*v, c)
			cv.Progress = progress.say(postName)
			s.mu.Lock()
			cv.Env = s.capEnv[v.ID]
			s.mu.Unlock()
			// Bounded as a whole: a guest that stops reading what is
			// copied in must not hold the start forever.
			pctx, cancel := context.WithTimeout(ctx, capPostStartTimeout)
			defer cancel()
			if err := s.capHook(pctx, *v, c.Name, api.CapStarting, "post-start", func() error {
				return hook.PostStart(pctx, cv, capGuest{s: s, v: *v})
			}); err != nil {
				return err
			}
			return s.d.Store.SetCapabilityState(ctx, v.ID, c.Name, api.CapReady, "")
		}})
	}
	// Every post-start succeeded: the --cap-env values are in the guest and
	// the daemon forgets them (a failed start keeps them for the next).
	post = append(post, step{name: "cap_ready", do: func(ctx context.Context) error {
		s.mu.Lock()
		delete(s.capEnv, v.ID)
		s.mu.Unlock()
		return nil
	}})
	return pre, post, nil
}

// capHook runs one hook with the capability's state around it.
func (s *Service) capHook(ctx context.Context, v store.VM, name, state, what string, run func() error) error {
	if err := s.d.Store.SetCapabilityState(ctx, v.ID, name, state, ""); err != nil {
		return err
	}
	if err := run(); err != nil {
		err = fmt.Errorf("capability %s: %s: %w", name, what, err)
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		defer cancel()
		_ = s.d.Store.SetCapabilityState(uctx, v.ID, name, api.CapFailed, firstLine(err.Error()))
		return err
	}
	return nil
}

// capTeardown runs v's capability cleanups when it stops, is deleted or
// its start rolls back, and records them stopped (a failure stays recorded
// as such).
func (s *Service) capTeardown(ctx context.Context, v store.VM) error {
	caps, err := s.d.Store.Capabilities(ctx, v.ID)
	if err != nil || len(caps) == 0 || s.d.Caps == nil {
		return err
	}
	var errs []error
	for _, c := range caps {
		if c.State == api.CapFailed || c.State == api.CapPending || c.State == api.CapStopped {
			continue
		}
		if err := s.d.Store.SetCapabilityState(ctx, v.ID, c.Name, api.CapStopped, ""); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.d.Caps.CleanupAll(ctx, s.capVM(v, store.Capability{}), capRefsOf(caps)))
	return errors.Join(errs...)
}

// capView is v's capabilities for `vm show`.
func (s *Service) capView(ctx context.Context, v store.VM) []api.VMCapability {
	caps, err := s.d.Store.Capabilities(ctx, v.ID)
	if err != nil || len(caps) == 0 {
		return nil
	}
	out := make([]api.VMCapability, 0, len(caps))
	for _, c := range caps {
		vc := api.VMCapability{Name: c.Name, Version: c.Version, State: c.State, Error: c.Error}
		if s.d.Caps != nil {
			if hook, err := s.d.Caps.Lookup(c.Name); err == nil {
				info := hook.Info()
				vc.Port = info.Port
				if vc.Version == "" {
					vc.Version = info.Version
				}
				conn := hook.Connect(s.capVM(v, c), v.Name+"."+hostnet.DNSZone)
				vc.Connect, vc.PasswordFile = conn.Command, conn.PasswordFile
			}
		}
		out = append(out, vc)
	}
	return out
}

// capGuest is a VM's guest agent as capability post-start hooks use it.
type capGuest struct {
	s *Service
	v store.VM
}

// capOutputTail bounds what a hook's guest script returns: the guest is
// hostile; what is kept is for errors.
const capOutputTail = 8 << 10

func (g capGuest) Run(ctx context.Context, script string, stdin io.Reader) (capability.Result, error) {
	stdout, stderr := &guest.Tail{Max: capOutputTail}, &guest.Tail{Max: capOutputTail}
	code, err := g.s.d.Guest.Exec(ctx, g.s.target(g.v), guest.ExecRequest{
		Argv: []string{"sh", "-c", script}, Stdin: stdin, Stdout: stdout, Stderr: stderr,
	})
	return capability.Result{Code: code, Stdout: stdout.String(), Stderr: stderr.String()}, err
}

func (g capGuest) Dial(ctx context.Context, port int) (io.ReadWriteCloser, error) {
	ac, err := g.s.d.Guest.Agent(ctx, g.s.target(g.v))
	if err != nil {
		return nil, err
	}
	return ac.Dial(ctx, port)
}

// snapCapsFile is what a snapshot keeps of its VM's capabilities: which,
// in order. Nothing of their host files travels: a restored VM gets its own
// (opencode: a new password, and its post-start restarts the restored
// server with it, so forks never share a secret another guest could use).
const (
	snapCapsFile = "capabilities.json"
	maxCapsFile  = 64 << 10
)

type snapCaps struct {
	Caps []capability.Ref `json:"caps"`
}

// capSnapshot writes v's capabilities into the snapshot being made in dir.
func (s *Service) capSnapshot(ctx context.Context, v store.VM, dir string) error {
	caps, err := s.d.Store.Capabilities(ctx, v.ID)
	if err != nil || len(caps) == 0 {
		return err
	}
	b, err := json.Marshal(snapCaps{Caps: capRefsOf(caps)})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, snapCapsFile), b, 0o600)
}

// capRestore reads the capabilities a snapshot carries and applies their
// create-time settings to p (nat turns NAT on), as a create with --cap does.
func (s *Service) capRestore(p *api.CreateVMParams, dir string) ([]capability.Ref, error) {
	b, err := paths.ReadSmall(filepath.Join(dir, snapCapsFile), maxCapsFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var sc snapCaps
	if err := json.Unmarshal(b, &sc); err != nil {
		return nil, fmt.Errorf("%s: %v: %w", snapCapsFile, err, api.ErrInvalid)
	}
	if len(sc.Caps) == 0 {
		return nil, nil
	}
	if s.d.Caps == nil {
		return nil, fmt.Errorf("the snapshot's VM had capabilities and this daemon has none: %w", api.ErrInvalid)
	}
	for _, r := range sc.Caps {
		if _, err := capability.ParseRef(r.String()); err != nil {
			return nil, err
		}
		hook, err := s.d.Caps.Lookup(r.Name)
		if err != nil {
			return nil, fmt.Errorf("the snapshot's VM had capability %s: %w", r.Name, err)
		}
		if err := hook.Configure(p, r.Version); err != nil {
			return nil, fmt.Errorf("capability %s: %w", r.Name, err)
		}
	}
	return sc.Caps, nil
}
