package vm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"net/netip"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/hostnet"
)

// fakeFirewall keeps the rules it was asked for; tests compare the text.
type fakeFirewall struct {
	mu    sync.Mutex
	rules map[string]hostnet.VMNet // by vm id
	taps  map[string]bool          // guard chains
}

func newFakeFirewall() *fakeFirewall {
	return &fakeFirewall{rules: map[string]hostnet.VMNet{}, taps: map[string]bool{}}
}

func (f *fakeFirewall) Apply(ctx context.Context, v hostnet.VMNet) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules[v.ID] = v
	f.taps[v.Tap] = true
	return nil
}

func (f *fakeFirewall) Remove(ctx context.Context, id, tap string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.rules, id)
	delete(f.taps, tap)
	return nil
}

func (f *fakeFirewall) Prune(ctx context.Context, keep map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	kt := map[string]bool{}
	for _, t := range keep {
		kt[t] = true
	}
	for id := range f.rules {
		if _, ok := keep[id]; !ok {
			delete(f.rules, id)
		}
	}
	for t := range f.taps {
		if !kt[t] {
			delete(f.taps, t)
		}
	}
	return nil
}

func (f *fakeFirewall) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, v := range f.rules {
		out = append(out, fmt.Sprintf("%s ip=%s tap=%s nat=%v nat_private=%v host_access=%v", v.ID, v.IP, v.Tap, v.NAT,
			v.NATPrivate, v.HostAccess))
	}
	for t := range f.taps {
		out = append(out, "guard "+t)
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func withFirewall(t *testing.T) (*fixture, *fakeFirewall) {
	f := newFixture(t)
	fw := newFakeFirewall()
	f.deps.Firewall = fw
	f.svc = New(f.deps)
	return f, fw
}

func TestNATFollowsTheRow(t *testing.T) {
	f, fw := withFirewall(t)
	ctx := context.Background()
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "web", WorkDisk: "32M", NAT: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%s ip=%s tap=%s nat=true nat_private=false host_access=false; guard %s", v.ID, v.GuestIP, v.Tap, v.Tap)
	if fw.String() != want {
		t.Fatalf("rules = %q, want %q", fw, want)
	}
	if view := f.svc.View(v); !view.NAT || view.NATPrivate || view.HostAccess {
		t.Errorf("view: nat %v nat_private %v host_access %v", view.NAT, view.NATPrivate, view.HostAccess)
	}
	off := false
	if _, err := f.svc.Set(ctx, api.SetVMParams{Name: "web", NAT: &off}); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("set on a running vm: %v", err)
	}
	if _, err := f.svc.Stop(ctx, "web", true); err != nil {
		t.Fatal(err)
	}
	if fw.String() != "" {
		t.Fatalf("rules after stop = %q", fw)
	}
	vcpu, mem := 1, 256
	if _, err := f.svc.Set(ctx, api.SetVMParams{Name: "web", NAT: &off, VCPU: &vcpu, MemoryMiB: &mem}); err != nil {
		t.Fatal(err)
	}
	bad := 0
	if _, err := f.svc.Set(ctx, api.SetVMParams{Name: "web", VCPU: &bad}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("vcpu 0 accepted: %v", err)
	}
	if _, err := f.svc.Set(ctx, api.SetVMParams{Name: "web"}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("empty set accepted: %v", err)
	}
	v, err = f.svc.Start(ctx, "web", nil)
	if err != nil {
		t.Fatal(err)
	}
	if v.VCPU != 1 || v.MemoryMiB != 256 {
		t.Errorf("vm after set = %+v", v)
	}
	want = fmt.Sprintf("%s ip=%s tap=%s nat=false nat_private=false host_access=false; guard %s", v.ID, v.GuestIP, v.Tap, v.Tap)
	if fw.String() != want {
		t.Fatalf("rules after set --nat=false = %q, want %q", fw, want)
	}
	if err := f.svc.Delete(ctx, "web", true); err != nil {
		t.Fatal(err)
	}
	if fw.String() != "" {
		t.Fatalf("rules after delete = %q", fw)
	}
}

func TestFailedBootRemovesRules(t *testing.T) {
	f, fw := withFirewall(t)
	ctx := context.Background()
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "slow", WorkDisk: "32M", NoStart: true, NAT: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.h.ready[v.ID] = errors.New("connection refused")
	if err := f.svc.start(ctx, &v, 200*time.Millisecond, nil); err == nil {
		t.Fatal("start succeeded")
	}
	if fw.String() != "" || f.h.String() != "procs=0 taps=[]" {
		t.Fatalf("failed boot leaked: rules %q host %s", fw, f.h)
	}
}

func TestReconcilePrunesStaleRules(t *testing.T) {
	f, fw := withFirewall(t)
	ctx := context.Background()
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "keep", WorkDisk: "32M", NAT: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := f.svc.Create(ctx, api.CreateVMParams{Name: "idle", WorkDisk: "32M", NoStart: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A daemon killed mid-start: a stopped row whose TAP and rules exist,
	// and rules of a VM whose row is gone.
	s.Tap = hostnet.PoolTapName(7)
	if err := f.st.UpdateVM(ctx, &s); err != nil {
		t.Fatal(err)
	}
	_ = f.deps.Net.CreateTap(ctx, s.Tap, 0)
	_ = fw.Apply(ctx, hostnet.VMNet{ID: s.ID, Tap: s.Tap})
	_ = fw.Apply(ctx, hostnet.VMNet{ID: "ghost", Tap: "bgr-ghost"})
	svc2 := New(f.deps) // a restarted daemon
	if err := svc2.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%s ip=%s tap=%s nat=true nat_private=false host_access=false; guard %s", v.ID, v.GuestIP, v.Tap, v.Tap)
	if fw.String() != want {
		t.Fatalf("rules after reconcile = %q, want %q", fw, want)
	}
	if f.h.String() != "procs=1 taps=["+v.Tap+"]" {
		t.Fatalf("host after reconcile = %s", f.h)
	}
}

// The opt-ins reach the firewall from create and from vm set, and show in
// the view.
func TestNetOptIns(t *testing.T) {
	f, fw := withFirewall(t)
	ctx := context.Background()
	if _, err := f.svc.Create(ctx, api.CreateVMParams{Name: "bad", WorkDisk: "32M", NATPrivate: true}, nil); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("--nat-private without --nat: %v", err)
	}
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "dev", WorkDisk: "32M", NAT: true, NATPrivate: true, HostAccess: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%s ip=%s tap=%s nat=true nat_private=true host_access=true; guard %s", v.ID, v.GuestIP, v.Tap, v.Tap)
	if fw.String() != want {
		t.Fatalf("rules = %q, want %q", fw, want)
	}
	if view := f.svc.View(v); !view.NAT || !view.NATPrivate || !view.HostAccess {
		t.Errorf("view: nat %v nat_private %v host_access %v", view.NAT, view.NATPrivate, view.HostAccess)
	}
	off, on := false, true
	if _, err := f.svc.Set(ctx, api.SetVMParams{Name: "dev", HostAccess: &off}); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("set on a running vm: %v", err)
	}
	if _, err := f.svc.Stop(ctx, "dev", true); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Set(ctx, api.SetVMParams{Name: "dev", NAT: &off}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("nat off leaving nat_private on: %v", err)
	}
	if _, err := f.svc.Set(ctx, api.SetVMParams{Name: "dev", NATPrivate: &off, HostAccess: &off}); err != nil {
		t.Fatal(err)
	}
	if v, err = f.svc.Start(ctx, "dev", nil); err != nil {
		t.Fatal(err)
	}
	want = fmt.Sprintf("%s ip=%s tap=%s nat=true nat_private=false host_access=false; guard %s", v.ID, v.GuestIP, v.Tap, v.Tap)
	if fw.String() != want {
		t.Fatalf("rules after set = %q, want %q", fw, want)
	}
	if _, err := f.svc.Stop(ctx, "dev", true); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Set(ctx, api.SetVMParams{Name: "dev", NAT: &off, HostAccess: &on}); err != nil {
		t.Fatal(err)
	}
	if v, err = f.svc.Start(ctx, "dev", nil); err != nil {
		t.Fatal(err)
	}
	want = fmt.Sprintf("%s ip=%s tap=%s nat=false nat_private=false host_access=true; guard %s", v.ID, v.GuestIP, v.Tap, v.Tap)
	if fw.String() != want {
		t.Fatalf("rules after set --host-access = %q, want %q", fw, want)
	}
}

// A daemon restarted while VMs run finds their rules gone (flushed by
// someone, or a host firewall reload): reconcile applies them again, with
// the row's opt-ins.
func TestReconcileReappliesFirewall(t *testing.T) {
	f, fw := withFirewall(t)
	ctx := context.Background()
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "keep", WorkDisk: "32M", NAT: true, HostAccess: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := fw.String()
	if err := fw.Remove(ctx, v.ID, v.Tap); err != nil { // `nft flush ruleset` while the daemon was down
		t.Fatal(err)
	}
	svc2 := New(f.deps)
	if err := svc2.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := fw.String(); got != want || !strings.Contains(got, "host_access=true") {
		t.Fatalf("rules after reconcile = %q, want %q", got, want)
	}
	if f.h.String() != "procs=1 taps=["+v.Tap+"]" {
		t.Fatalf("host after reconcile = %s", f.h)
	}
}

func TestLookupOnlyRunningVMs(t *testing.T) {
	f, _ := withFirewall(t)
	ctx := context.Background()
	v, err := f.svc.Create(ctx, api.CreateVMParams{Name: "web", WorkDisk: "32M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ip, ok := f.svc.LookupVM(ctx, "web"); !ok || ip.String() != v.GuestIP {
		t.Fatalf("LookupVM(web) = %v, %v", ip, ok)
	}
	if n, ok := f.svc.LookupVMAddr(ctx, mustAddr(v.GuestIP)); !ok || n != "web" {
		t.Fatalf("LookupVMAddr = %q, %v", n, ok)
	}
	if _, ok := f.svc.LookupVM(ctx, v.ID); ok {
		t.Error("lookup by id answered")
	}
	if _, err := f.svc.Stop(ctx, "web", true); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.svc.LookupVM(ctx, "web"); ok {
		t.Error("stopped vm resolves")
	}
}

func TestParsePorts(t *testing.T) {
	out := `udp   UNCONN 0      0          127.0.0.53%lo:53        0.0.0.0:*    users:(("systemd-resolve",pid=300,fd=13))
tcp   LISTEN 0      128              0.0.0.0:22        0.0.0.0:*    users:(("sshd",pid=210,fd=3))
tcp   LISTEN 0      128                 [::]:22           [::]:*    users:(("sshd",pid=210,fd=4))
tcp   LISTEN 0      5              127.0.0.1:6060      0.0.0.0:*    users:(("python3",pid=400,fd=3))
tcp   LISTEN 0      4096                   *:8080            *:*
tcp   LISTEN 0      4096          172.30.0.5:9000      0.0.0.0:*
garbage
`
	got := ParsePorts(out, "web")
	var lines []string
	for _, p := range got {
		lines = append(lines, fmt.Sprintf("%s %s %d %s %s | %s", p.Proto, p.Address, p.Port, p.Process, p.URL, p.Forward))
	}
	want := strings.Join([]string{
		"tcp 0.0.0.0 22 sshd http://web.vm:22 | banger vm forward web 22",
		"tcp :: 22 sshd http://web.vm:22 | banger vm forward web 22",
		"udp 127.0.0.53 53 systemd-resolve  | ",
		"tcp 127.0.0.1 6060 python3  | banger vm forward web 6060",
		"tcp 0.0.0.0 8080  http://web.vm:8080 | banger vm forward web 8080",
		"tcp 172.30.0.5 9000  http://web.vm:9000 | ",
	}, "\n")
	if g := strings.Join(lines, "\n"); g != want {
		t.Fatalf("ports:\n%s\nwant:\n%s", g, want)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
