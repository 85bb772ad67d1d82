package hostnet

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

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

func (f fakeVMs) NATAllowed(context.Context, netip.Addr) bool { return false }

// natVMs are fakeVMs of which those at the addresses in nat have NAT on.
type natVMs struct {
	fakeVMs
	nat map[netip.Addr]bool
}

func (n natVMs) NATAllowed(_ context.Context, ip netip.Addr) bool {
	_, known := n.LookupVMAddr(context.Background(), ip)
	return known && n.nat[ip]
}

func startDNS(t *testing.T, vms VMResolver, upstream string) string {
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

// fakeUpstream is a resolver on loopback answering every A query with
// 192.0.2.7, and counting them.
func fakeUpstream(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		n.Add(1)
		m := new(dns.Msg)
		m.SetReply(req)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA,
			Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.7")})
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String(), &n
}

// queryFrom is query with the client bound to the source address src.
func queryFrom(t *testing.T, addr, network, src, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	d := &net.Dialer{Timeout: 3 * time.Second}
	if network == "udp" {
		d.LocalAddr = &net.UDPAddr{IP: net.ParseIP(src)}
	} else {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c := &dns.Client{Net: network, Dialer: d}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s from %s: %v", network, name, dns.TypeToString[qtype], src, err)
	}
	return r
}

// Names outside .vm are forwarded only for a running VM with NAT: a guest
// without NAT, or any other sender, gets REFUSED (no DNS tunnel out). The
// senders are loopback addresses standing in for guest addresses.
func TestDNSForwardsOnlyForNATGuests(t *testing.T) {
	up, asked := fakeUpstream(t)
	natIP, plainIP := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	vms := natVMs{fakeVMs: fakeVMs{"natvm": natIP, "plain": plainIP}, nat: map[netip.Addr]bool{natIP: true}}
	addr := startDNS(t, vms, up)
	for _, network := range []string{"udp", "tcp"} {
		r := queryFrom(t, addr, network, natIP.String(), "example.com", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.7" {
			t.Errorf("%s example.com from the NAT guest: not forwarded: %v", network, r)
		}
		before := asked.Load()
		for _, src := range []string{plainIP.String(), "127.0.0.4"} {
			for _, q := range []struct {
				name  string
				qtype uint16
			}{{"example.com", dns.TypeA}, {"9.9.9.10.in-addr.arpa", dns.TypePTR}} {
				r := queryFrom(t, addr, network, src, q.name, q.qtype)
				if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
					t.Errorf("%s %s from %s: rcode %s, %d answers; want REFUSED", network, q.name, src,
						dns.RcodeToString[r.Rcode], len(r.Answer))
				}
			}
		}
		if n := asked.Load() - before; n != 0 {
			t.Errorf("%s: the upstream was asked %d times for senders without NAT", network, n)
		}
		// .vm names still answer for everyone.
		if r := queryFrom(t, addr, network, plainIP.String(), "natvm.vm", dns.TypeA); len(r.Answer) != 1 {
			t.Errorf("%s natvm.vm from the plain guest: %v", network, r)
		}
	}
	// In-zone names are never forwarded, even for the NAT guest.
	before := asked.Load()
	if r := queryFrom(t, addr, "udp", natIP.String(), "other.vm", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("other.vm from the NAT guest: %v", r)
	}
	if asked.Load() != before {
		t.Error("an in-zone name was forwarded")
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
