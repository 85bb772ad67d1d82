package kernel

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"virtio-rng.ko":              "virtio_rng",
		"/x/y/virtio_blk.ko.xz":      "virtio_blk",
		"kernel/net/vsock.ko.zst":    "vsock",
		"vmw_vsock_virtio_transport": "vmw_vsock_virtio_transport",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseModinfo(t *testing.T) {
	data := []byte("license=GPL\x00alias=a\x00alias=b\x00\x00depends=virtio,virtio_ring\x00garbage\x00=novalue\x00")
	got := ParseModinfo(data)
	want := map[string][]string{"license": {"GPL"}, "alias": {"a", "b"}, "depends": {"virtio,virtio_ring"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestModuleDepends(t *testing.T) {
	ko := fakeModuleELF("name=virtio_net", "depends=net_failover,virtio-ring,virtio", "vermagic=6.1")
	deps, err := ModuleDepends(bytes.NewReader(ko))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"net_failover", "virtio_ring", "virtio"}; !reflect.DeepEqual(deps, want) {
		t.Fatalf("deps = %v, want %v", deps, want)
	}
	deps, err = ModuleDepends(bytes.NewReader(fakeModuleELF("depends=")))
	if err != nil || len(deps) != 0 {
		t.Fatalf("empty depends: %v %v", deps, err)
	}
	if _, err := ModuleDepends(bytes.NewReader([]byte("not an elf at all, definitely not"))); err == nil {
		t.Fatal("garbage accepted as a module")
	}
}

func resolveWith(t *testing.T, wanted []string, graph map[string][]string, builtin ...string) ([]string, []string, error) {
	t.Helper()
	avail := map[string]bool{}
	for k := range graph {
		avail[k] = true
	}
	bi := map[string]bool{}
	for _, b := range builtin {
		bi[b] = true
	}
	calls := map[string]int{}
	order, skipped, err := ResolveOrder(wanted, avail, bi, func(n string) ([]string, error) {
		calls[n]++
		if calls[n] > 1 {
			t.Errorf("depsOf(%s) called %d times", n, calls[n])
		}
		return graph[n], nil
	})
	return order, skipped, err
}

func TestResolveOrder(t *testing.T) {
	graph := map[string][]string{
		"virtio":                {},
		"virtio_ring":           {},
		"virtio_mmio":           {"virtio", "virtio_ring"},
		"virtio_pci_modern_dev": {},
		"virtio_pci_legacy_dev": {},
		"virtio_pci":            {"virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio", "virtio_ring"},
		"virtio_blk":            {"virtio", "virtio_ring"},
		"failover":              {},
		"net_failover":          {"failover"},
		"virtio_net":            {"net_failover", "virtio", "virtio_ring", "crc32c_generic"},
	}
	order, skipped, err := resolveWith(t, []string{"virtio_blk", "virtio_net", "virtio_pci", "virtio_mmio", "vsock", "virtio-rng"}, graph, "crc32c_generic")
	if err != nil {
		t.Fatal(err)
	}
	want := "virtio virtio_ring virtio_blk failover net_failover virtio_net virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio"
	if got := strings.Join(order, " "); got != want {
		t.Fatalf("order:\n got %s\nwant %s", got, want)
	}
	if got := strings.Join(skipped, " "); got != "vsock virtio_rng" {
		t.Fatalf("skipped = %q", got)
	}
	// Every module after its dependencies.
	pos := map[string]int{}
	for i, m := range order {
		pos[m] = i
	}
	for m, deps := range graph {
		for _, d := range deps {
			if _, ok := pos[d]; ok && pos[d] > pos[m] {
				t.Errorf("%s loads before its dependency %s", m, d)
			}
		}
	}
}

func TestResolveOrderCycle(t *testing.T) {
	_, _, err := resolveWith(t, []string{"a"}, map[string][]string{"a": {"b"}, "b": {"c"}, "c": {"a"}})
	if err == nil || !strings.Contains(err.Error(), "cycle: a -> b -> c -> a") {
		t.Fatalf("err = %v, want a cycle naming a -> b -> c -> a", err)
	}
	_, _, err = resolveWith(t, []string{"self"}, map[string][]string{"self": {"self"}})
	if err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("self cycle: err = %v", err)
	}
}

func TestResolveOrderMissingDep(t *testing.T) {
	_, _, err := resolveWith(t, []string{"virtio_net"}, map[string][]string{"virtio_net": {"net_failover"}})
	if err == nil || !strings.Contains(err.Error(), "virtio_net depends on net_failover, which is neither a module file nor built in") {
		t.Fatalf("err = %v", err)
	}
}

func TestResolveOrderDepsError(t *testing.T) {
	boom := errors.New("bad elf")
	_, _, err := ResolveOrder([]string{"x"}, map[string]bool{"x": true}, nil, func(string) ([]string, error) { return nil, boom })
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "module x") {
		t.Fatalf("err = %v", err)
	}
}
