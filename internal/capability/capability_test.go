package capability

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

// recordingCap is a capability whose cleanup writes what it was asked into
// a shared log and fails with err when set.
type recordingCap struct {
	name string
	err  error
	log  *cleanupLog
}

type cleanupLog struct {
	mu      sync.Mutex
	entries []string
}

func (l *cleanupLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = append(l.entries, s)
}

func (c *recordingCap) Info() Info                                            { return Info{Name: c.name} }
func (c *recordingCap) Configure(p *api.CreateVMParams, version string) error { return nil }
func (c *recordingCap) Prepare(ctx context.Context, vm VM) error              { return nil }
func (c *recordingCap) PostStart(ctx context.Context, vm VM, g Guest) error   { return nil }
func (c *recordingCap) Connect(vm VM, host string) Connection                 { return Connection{} }
func (c *recordingCap) Cleanup(ctx context.Context, vm VM) error {
	c.log.add(fmt.Sprintf("%s@%s vm=%s", c.name, vm.Version, vm.ID))
	return c.err
}

func TestRegistryListSortedByName(t *testing.T) {
	r := NewRegistry(&recordingCap{name: "zeta"}, NAT{}, &recordingCap{name: "alpha"}, &Opencode{})
	var names []string
	for _, i := range r.List() {
		names = append(names, i.Name)
	}
	if want := []string{"alpha", "nat", "opencode", "zeta"}; !slices.Equal(names, want) {
		t.Fatalf("List names = %v, want %v", names, want)
	}
}

func TestRegistryLookup(t *testing.T) {
	r := NewRegistry(&Opencode{}, NAT{})
	c, err := r.Lookup("nat")
	if err != nil {
		t.Fatalf("Lookup(nat): %v", err)
	}
	if c.Info().Name != "nat" {
		t.Fatalf("Lookup(nat) = %q", c.Info().Name)
	}
	_, err = r.Lookup("gpu")
	if !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("Lookup(gpu) error %v, want api.ErrInvalid", err)
	}
	// The known ones are named, sorted, so the user sees what to type.
	if !strings.Contains(err.Error(), `"gpu"`) || !strings.Contains(err.Error(), "known: nat, opencode") {
		t.Fatalf("Lookup(gpu) error %q: want the name and the known ones (nat, opencode)", err)
	}
}

func TestParseRef(t *testing.T) {
	long := strings.Repeat("a", 32)
	for _, tc := range []struct {
		in      string
		want    Ref
		wantErr bool
	}{
		{in: "nat", want: Ref{Name: "nat"}},
		{in: "opencode", want: Ref{Name: "opencode"}},
		{in: "opencode@1.18.33", want: Ref{Name: "opencode", Version: "1.18.33"}},
		{in: "opencode@2.0.0-beta.1+build5", want: Ref{Name: "opencode", Version: "2.0.0-beta.1+build5"}},
		{in: "my-cap2", want: Ref{Name: "my-cap2"}},
		{in: long, want: Ref{Name: long}},
		{in: long + "a", wantErr: true},    // 33 characters
		{in: "", wantErr: true},            // no name
		{in: "@1.0", wantErr: true},        // no name
		{in: "Opencode", wantErr: true},    // upper case
		{in: "2fa", wantErr: true},         // starts with a digit
		{in: "-x", wantErr: true},          // starts with '-'
		{in: "open_code", wantErr: true},   // '_'
		{in: "opencode@", wantErr: true},   // an empty version
		{in: "opencode@.1", wantErr: true}, // a version starts with a letter or digit
		{in: "opencode@1.0/../x", wantErr: true},
		{in: "opencode@1 2", wantErr: true},
		{in: "opencode@1@2", wantErr: true},
		{in: "opencode@$(id)", wantErr: true},
		{in: "opencode@" + strings.Repeat("1", 65), wantErr: true},
		{in: "nat\n", wantErr: true},
	} {
		got, err := ParseRef(tc.in)
		if tc.wantErr {
			if !errors.Is(err, api.ErrInvalid) {
				t.Errorf("ParseRef(%q) = %+v, %v; want api.ErrInvalid", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		if got.String() != tc.in {
			t.Errorf("ParseRef(%q).String() = %q", tc.in, got.String())
		}
	}
}

func TestCleanupAllReverseOrderJoinsEveryError(t *testing.T) {
	errA := errors.New("a is stuck")
	errC := errors.New("c is stuck")
	log := &cleanupLog{}
	r := NewRegistry(
		&recordingCap{name: "a", err: errA, log: log},
		&recordingCap{name: "b", log: log},
		&recordingCap{name: "c", err: errC, log: log},
	)
	refs := []Ref{{Name: "a", Version: "1"}, {Name: "gone"}, {Name: "b"}, {Name: "c", Version: "3"}}
	err := r.CleanupAll(t.Context(), VM{ID: "vm1", Version: "ignored"}, refs)

	// Every cleanup ran, last first, each with its own ref's version.
	if want := []string{"c@3 vm=vm1", "b@ vm=vm1", "a@1 vm=vm1"}; !slices.Equal(log.entries, want) {
		t.Fatalf("cleanups ran %v, want %v", log.entries, want)
	}
	for _, want := range []error{errA, errC} {
		if !errors.Is(err, want) {
			t.Errorf("CleanupAll error %v: errors.Is(%v) is false", err, want)
		}
	}
	// Each failing one is named, in the order the cleanups ran; one this
	// registry does not know (a downgrade) held nothing here and is no
	// failure (else its VM could never be stopped or deleted).
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 2 ||
		!strings.HasPrefix(lines[0], "capability c: cleanup: c is stuck") ||
		!strings.HasPrefix(lines[1], "capability a: cleanup: a is stuck") {
		t.Fatalf("CleanupAll error:\n%s\nwant c, a named, one a line", err)
	}

	// None failing: nil, and nothing for no refs.
	log.entries = nil
	if err := r.CleanupAll(t.Context(), VM{ID: "vm1"}, []Ref{{Name: "b"}}); err != nil || len(log.entries) != 1 {
		t.Fatalf("CleanupAll(b) = %v, ran %v", err, log.entries)
	}
	if err := r.CleanupAll(t.Context(), VM{ID: "vm1"}, nil); err != nil {
		t.Fatalf("CleanupAll(nil) = %v", err)
	}
}

func TestNATConfigureTurnsNATOn(t *testing.T) {
	var p api.CreateVMParams
	if err := (NAT{}).Configure(&p, ""); err != nil {
		t.Fatal(err)
	}
	if !p.NAT {
		t.Fatal("NAT.Configure left p.NAT false")
	}
	n := NAT{}
	if n.Info().Name != "nat" || n.Info().Versioned {
		t.Fatalf("NAT info %+v", n.Info())
	}
	if err := errors.Join(n.Prepare(t.Context(), VM{}), n.PostStart(t.Context(), VM{}, nil), n.Cleanup(t.Context(), VM{})); err != nil {
		t.Fatalf("NAT hooks: %v", err)
	}
	if n.Connect(VM{}, "x.vm") != (Connection{}) {
		t.Fatal("NAT has nothing to connect to")
	}
}
