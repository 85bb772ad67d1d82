package hostnet

import (
	"context"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

type fakeVMs map[string]netip.Addr

func (f fakeVMs) LookupVM(_ context.Context, name string) (netip.Addr, bool) {
	a, ok := f[name]
	return a, ok
}

func (f fakeVMs) LookupVMAddr(_ context.Context, ip netip.Addr) (string, bool) {
	for n, a := range f {
		if a == ip {
			return n, true
		}
	}
	return "", false
}

func startDNS(t *testing.T, vms fakeVMs, upstream string) string {
	t.Helper()
	s := &DNSServer{Addr: "127.0.0.1:0", Resolver: vms, Upstream: upstream}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s.LocalAddr().String()
}

func query(t *testing.T, addr, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: network}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	return r
}

func TestDNSAnswers(t *testing.T) {
	vms := fakeVMs{"web": netip.MustParseAddr("172.30.0.2"), "db": netip.MustParseAddr("172.30.0.3")}
	addr := startDNS(t, vms, "")
	for _, network := range []string{"udp", "tcp"} {
		r := query(t, addr, network, "web.vm", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 {
			t.Fatalf("%s web.vm: %v", network, r)
		}
		if a := r.Answer[0].(*dns.A); a.A.String() != "172.30.0.2" || a.Hdr.Ttl != dnsTTL {
			t.Errorf("%s web.vm A = %v", network, a)
		}
	}
	if r := query(t, addr, "udp", "DB.VM.", dns.TypeA); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "172.30.0.3" {
		t.Errorf("case-insensitive DB.VM: %v", r)
	}
	if r := query(t, addr, "udp", "web.vm", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("AAAA web.vm: want NOERROR/no data, got %v", r)
	}
	for _, n := range []string{"gone.vm", "a.web.vm", "vm"} {
		if r := query(t, addr, "udp", n, dns.TypeA); r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: rcode %s, want NXDOMAIN", n, dns.RcodeToString[r.Rcode])
		}
	}
	r := query(t, addr, "udp", "2.0.30.172.in-addr.arpa", dns.TypePTR)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "web.vm." {
		t.Errorf("PTR 172.30.0.2: %v", r)
	}
	// Nothing else is answered (no upstream configured).
	if r := query(t, addr, "udp", "example.com", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Errorf("example.com: rcode %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	if r := query(t, addr, "udp", "9.0.30.172.in-addr.arpa", dns.TypePTR); r.Rcode != dns.RcodeRefused {
		t.Errorf("PTR of a non-VM: rcode %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
}

func TestDNSForwardsWhenConfigured(t *testing.T) {
	// The "upstream" is another banger DNS server on loopback: a .vm name
	// there stands in for an outside name here.
	up := startDNS(t, fakeVMs{"other": netip.MustParseAddr("10.9.9.9")}, "")
	addr := startDNS(t, fakeVMs{}, up)
	r := query(t, addr, "udp", "other.vm", dns.TypeA)
	// other.vm is in our zone and unknown here: never forwarded.
	if r.Rcode != dns.RcodeNameError {
		t.Fatalf("in-zone name forwarded: %v", r)
	}
	r = query(t, addr, "udp", "9.9.9.10.in-addr.arpa", dns.TypePTR)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "other.vm." {
		t.Fatalf("forwarded PTR: %v", r)
	}
}

func TestPtrAddr(t *testing.T) {
	for in, want := range map[string]string{"4.3.2.1.in-addr.arpa.": "1.2.3.4", "1.2.3.in-addr.arpa.": "", "x.3.2.1.in-addr.arpa.": ""} {
		a, ok := ptrAddr(in)
		if (want == "") == ok || (ok && a.String() != want) {
			t.Errorf("ptrAddr(%q) = %v, %v", in, a, ok)
		}
	}
}
