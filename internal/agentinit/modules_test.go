package agentinit

import (
	"bytes"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestReadModuleList(t *testing.T) {
	got, err := ReadModuleList(strings.NewReader("# order\n/lib/modules/virtio.ko\n\n  /lib/modules/virtio_blk.ko  \n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/lib/modules/virtio.ko", "/lib/modules/virtio_blk.ko"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v", got)
	}
	for _, bad := range []string{"virtio.ko\n", "/lib/../etc/shadow\n", "/lib//x.ko\n", "./x.ko\n"} {
		if _, err := ReadModuleList(strings.NewReader(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestLoadModulesReportsAll(t *testing.T) {
	var logged []string
	err := LoadModules([]string{"/nonexistent/a.ko", "/nonexistent/b.ko"}, func(f string, a ...any) { logged = append(logged, f) })
	if err == nil || !strings.Contains(err.Error(), "load a.ko") || !strings.Contains(err.Error(), "load b.ko") {
		t.Fatalf("err = %v: want both failures reported", err)
	}
	if len(logged) != 0 {
		t.Fatalf("logged success for failed modules: %v", logged)
	}
}

func TestGratuitousARP(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:ac:1f:63:02")
	p, err := GratuitousARP(mac, netip.MustParseAddr("172.31.99.2"))
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0, 1, 8, 0, 6, 4, 0, 1, // Ethernet, IPv4, request
		2, 0, 0xac, 0x1f, 0x63, 2, 172, 31, 99, 2, // sender
		0, 0, 0, 0, 0, 0, 172, 31, 99, 2, // target: own IP
	}
	if !bytes.Equal(p, want) {
		t.Fatalf("got % x\nwant % x", p, want)
	}
	if _, err := GratuitousARP(mac[:4], netip.MustParseAddr("172.31.99.2")); err == nil {
		t.Error("short MAC accepted")
	}
	if _, err := GratuitousARP(mac, netip.MustParseAddr("::1")); err == nil {
		t.Error("IPv6 accepted")
	}
}
