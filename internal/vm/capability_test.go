package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/capability"
)

// fakeCap is a capability that keeps what it holds: a host resource taken
// at prepare and released by cleanup, and what it saw of the host at each
// hook (a VMM running or not) — ordering is checked through that state.
type fakeCap struct {
	name string
	h    *host

	mu          sync.Mutex
	held        map[string]bool // by VM id: prepared and not cleaned up
	vmmAtPrep   []int           // VMMs alive for the VM when prepare ran
	vmmAtPost   []int           // ... when post-start ran
	env         []map[string]string
	failPrepare error
	failPost    error
	failCleanup error
	cleanups    *[]string // shared between caps: the order cleanups ran in
}

func (c *fakeCap) Info() capability.Info {
	return capability.Info{Name: c.name, Summary: "test", Versioned: c.name == "alpha"}
}
func (c *fakeCap) Configure(p *api.CreateVMParams, version string) error {
	if version == "bad" {
		return fmt.Errorf("no version bad: %w", api.ErrInvalid)
	}
	return nil
}

// alive is how many VMMs of the VM run on the fake host.
func (c *fakeCap) alive(vm capability.VM) int {
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	n := 0
	for _, dir := range c.h.procs {
		if dir == vm.Dir {
			n++
		}
	}
	return n
}

func (c *fakeCap) Prepare(ctx context.Context, vm capability.VM) error {
	n := c.alive(vm)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.vmmAtPrep = append(c.vmmAtPrep, n)
	c.held[vm.ID] = true
	return c.failPrepare
}
func (c *fakeCap) PostStart(ctx context.Context, vm capability.VM, g capability.Guest) error {
	n := c.alive(vm)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.vmmAtPost = append(c.vmmAtPost, n)
	c.env = append(c.env, vm.Env)
	return c.failPost
}
func (c *fakeCap) Cleanup(ctx context.Context, vm capability.VM) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.held, vm.ID)
	*c.cleanups = append(*c.cleanups, c.name)
	return c.failCleanup
}
func (c *fakeCap) Connect(vm capability.VM, host string) capability.Connection {
	return capability.Connection{Command: "attach " + host}
}
func (c *fakeCap) holding() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.held)
}

func capFixture(t *testing.T) (*fixture, *fakeCap, *fakeCap) {
	f := newFixture(t)
	var order []string
	a := &fakeCap{name: "alpha", h: f.h, held: map[string]bool{}, cleanups: &order}
	b := &fakeCap{name: "beta", h: f.h, held: map[string]bool{}, cleanups: &order}
	f.deps.Caps = capability.NewRegistry(a, b, capability.NAT{})
	f.svc = New(f.deps)
	return f, a, b
}

// TestCapabilityHooks: prepare runs on the host before the VMM exists,
// post-start once the guest answers, both in the order given; the state of
// each shows in vm show; stop and delete clean up.
func TestCapabilityHooks(t *testing.T) {
	f, a, b := capFixture(t)
	ctx := context.Background()
	var stages []string
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "ai", WorkDisk: "32M", Caps: []string{"beta", "alpha@1.0"},
		CapEnv: map[string]string{"API_KEY": "k"}}, func(s, _ string) { stages = append(stages, s) })
	if err != nil {
		t.Fatal(err)
	}
	want := "vm_dir,identity,root_disk,work_disk,record,capabilities,cap_prepare:beta,cap_prepare:alpha,seed,tap,nat,vmm_launch,wait_ready,cap:beta,cap:alpha,cap_ready,ready"
	if got := strings.Join(stages, ","); got != want {
		t.Errorf("stages\n %s\nwant\n %s", got, want)
	}
	for _, c := range []*fakeCap{a, b} {
		if !slices.Equal(c.vmmAtPrep, []int{0}) || !slices.Equal(c.vmmAtPost, []int{1}) {
			t.Errorf("%s: VMMs alive at prepare %v, at post-start %v; want [0] and [1]", c.name, c.vmmAtPrep, c.vmmAtPost)
		}
		if c.holding() != 1 {
			t.Errorf("%s holds %d after start", c.name, c.holding())
		}
		if len(c.env) != 1 || c.env[0]["API_KEY"] != "k" {
			t.Errorf("%s: --cap-env at the first start: %v", c.name, c.env)
		}
	}
	caps := f.svc.View(v).Capabilities
	if len(caps) != 2 || caps[0].Name != "beta" || caps[1].Name != "alpha" || caps[1].Version != "1.0" ||
		caps[0].State != api.CapReady || caps[1].State != api.CapReady || caps[0].Connect != "attach ai.vm" {
		t.Fatalf("view %+v", caps)
	}
	if _, err := f.svc.Stop(ctx, "ai", false); err != nil {
		t.Fatal(err)
	}
	if a.holding()+b.holding() != 0 {
		t.Fatalf("stop left holds: alpha %d beta %d", a.holding(), b.holding())
	}
	if st := f.svc.View(mustVM(t, f, "ai")).Capabilities[0].State; st != api.CapStopped {
		t.Fatalf("state after stop %s", st)
	}
	// The next start runs the hooks again; --cap-env is not kept.
	if _, err := f.svc.Start(ctx, "ai", nil); err != nil {
		t.Fatal(err)
	}
	if len(a.env) != 2 || a.env[1] != nil {
		t.Errorf("--cap-env kept past the first start: %v", a.env)
	}
	if a.holding() != 1 {
		t.Fatal("restart did not prepare again")
	}
	if err := f.svc.Delete(ctx, "ai", true); err != nil {
		t.Fatal(err)
	}
	if a.holding()+b.holding() != 0 {
		t.Fatal("delete left holds")
	}
	if users, _ := f.st.CapabilityUsers(ctx); len(users) != 0 {
		t.Fatalf("capability rows after delete: %+v", users)
	}
}

// TestCapabilityFailureRollsBack: a post-start failure fails the start with
// the capability's name, records it, and leaves nothing running or held;
// cleanup errors are joined, each named, none hiding another.
func TestCapabilityFailureRollsBack(t *testing.T) {
	f, a, b := capFixture(t)
	ctx := context.Background()
	a.failPost = errors.New("server never answered")
	a.failCleanup = errors.New("alpha cleanup broke")
	b.failCleanup = errors.New("beta cleanup broke")
	_, err := f.svc.Create(ctx, api.CreateVMParams{Name: "ai", WorkDisk: "32M", Caps: []string{"beta", "alpha"}}, nil)
	if err == nil {
		t.Fatal("create with a failing capability succeeded")
	}
	for _, s := range []string{"capability alpha: post-start: server never answered", "capability alpha: cleanup: alpha cleanup broke", "capability beta: cleanup: beta cleanup broke"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q:\n%v", s, err)
		}
	}
	if *a.cleanups == nil || !slices.Equal((*a.cleanups)[:2], []string{"alpha", "beta"}) {
		t.Errorf("cleanups ran %v; want alpha then beta (reverse order), both despite failing", *a.cleanups)
	}
	if s := f.h.String(); s != "procs=0 taps=[]" {
		t.Fatalf("failed capability leaked: %s", s)
	}
	if a.holding()+b.holding() != 0 {
		t.Fatal("failed start left holds")
	}
	v := mustVM(t, f, "ai")
	if v.State != StateError || !strings.Contains(v.LastError, "capability alpha") {
		t.Errorf("row %s %q", v.State, v.LastError)
	}
	caps := f.svc.View(v).Capabilities
	if caps[1].State != api.CapFailed || !strings.Contains(caps[1].Error, "server never answered") || caps[0].State != api.CapStopped {
		t.Errorf("capability states %+v", caps)
	}
	// A prepare failure: nothing launched at all.
	a.failPost, a.failCleanup, b.failCleanup = nil, nil, nil
	a.failPrepare = errors.New("download refused")
	if _, err := f.svc.Start(ctx, "ai", nil); err == nil || !strings.Contains(err.Error(), "capability alpha: prepare: download refused") {
		t.Fatalf("start with a failing prepare: %v", err)
	}
	if len(a.vmmAtPost) != 1 || f.h.String() != "procs=0 taps=[]" {
		t.Fatalf("a failed prepare booted the VM: post-starts %v, host %s", a.vmmAtPost, f.h)
	}
}

// TestCapabilityCreateRefusals: bad --cap/--cap-env input is refused before
// anything exists; nat is a capability that turns NAT on.
func TestCapabilityCreateRefusals(t *testing.T) {
	f, _, _ := capFixture(t)
	ctx := context.Background()
	for _, p := range []api.CreateVMParams{
		{Name: "x", Caps: []string{"nosuch"}},
		{Name: "x", Caps: []string{"alpha", "alpha"}},
		{Name: "x", Caps: []string{"beta@1.0"}}, // beta has no versions
		{Name: "x", Caps: []string{"alpha@bad"}},
		{Name: "x", Caps: []string{"Alpha"}},
		{Name: "x", Caps: []string{"alpha@../x"}},
		{Name: "x", CapEnv: map[string]string{"K": "v"}}, // no --cap
		{Name: "x", Caps: []string{"alpha"}, CapEnv: map[string]string{"BAD-KEY": "v"}},
		{Name: "x", Caps: []string{"alpha"}, CapEnv: map[string]string{"K": "two\nlines"}},
		{Name: "x", Caps: []string{"alpha"}, CapEnv: map[string]string{"K": strings.Repeat("v", maxCapEnvValue+1)}},
		{Name: "x", Caps: []string{"alpha"}, From: "snap"},
	} {
		if _, err := f.svc.Create(ctx, p, nil); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("create %+v: %v, want invalid", p, err)
		}
	}
	if vms, _ := f.st.ListVMs(ctx); len(vms) != 0 {
		t.Fatalf("refused creates left %d rows", len(vms))
	}
	if entries, _ := os.ReadDir(f.layout.VMsDir()); len(entries) != 0 {
		t.Fatalf("refused creates left %d dirs", len(entries))
	}
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "n", WorkDisk: "32M", Caps: []string{"nat"}, NoStart: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pol, _ := f.st.NetPolicy(ctx, v.ID); !pol.NAT {
		t.Fatal("--cap nat did not turn NAT on")
	}
}

// TestSnapshotCarriesCapabilities: a snapshot keeps which capabilities its
// VM had; a restore gets them with their create-time settings (nat), and
// none of their host files (each restored VM makes its own secrets).
func TestSnapshotCarriesCapabilities(t *testing.T) {
	f, _ := snapFixture(t)
	var order []string
	a := &fakeCap{name: "alpha", h: f.h, held: map[string]bool{}, cleanups: &order}
	f.deps.Caps = capability.NewRegistry(a, capability.NAT{})
	f.svc = New(f.deps)
	ctx := context.Background()
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "ai", WorkDisk: "32M", Caps: []string{"alpha@2", "nat"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.Dir, "opencode.password"), []byte("parent's secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sn, err := f.svc.Snapshot(ctx, "ai", "ai-ready", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := f.layout.Snapshot(sn.ID)
	var p api.CreateVMParams
	refs, err := f.svc.capRestore(&p, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 2 || refs[0] != (capability.Ref{Name: "alpha", Version: "2"}) || refs[1].Name != "nat" || !p.NAT {
		t.Fatalf("carried %+v, NAT %v", refs, p.NAT)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if b, _ := os.ReadFile(filepath.Join(dir, e.Name())); strings.Contains(string(b), "parent's secret") {
			t.Fatalf("the snapshot carries the VM's secret in %s", e.Name())
		}
	}
	// A list naming what this daemon does not know, a symlink, junk: refused.
	for what, content := range map[string]string{
		"unknown":  `{"caps":[{"name":"gone"}]}`,
		"bad name": `{"caps":[{"name":"../x"}]}`,
		"junk":     `{"caps":`,
	} {
		if err := os.WriteFile(filepath.Join(dir, snapCapsFile), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.capRestore(&api.CreateVMParams{}, dir); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: %v, want invalid", what, err)
		}
	}
	_ = os.Remove(filepath.Join(dir, snapCapsFile))
	target := filepath.Join(t.TempDir(), "elsewhere.json")
	_ = os.WriteFile(target, []byte(`{"caps":[{"name":"alpha"}]}`), 0o600)
	if err := os.Symlink(target, filepath.Join(dir, snapCapsFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.capRestore(&api.CreateVMParams{}, dir); err == nil {
		t.Fatal("a symlinked capabilities.json was followed")
	}
	// A snapshot of a VM without capabilities carries none.
	f.create(t, "plain")
	sn2, err := f.svc.Snapshot(ctx, "plain", "plain-ready", nil)
	if err != nil {
		t.Fatal(err)
	}
	if refs, err := f.svc.capRestore(&api.CreateVMParams{}, f.layout.Snapshot(sn2.ID)); err != nil || refs != nil {
		t.Fatalf("plain snapshot carries %v %v", refs, err)
	}
}
