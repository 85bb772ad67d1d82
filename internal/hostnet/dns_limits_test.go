package hostnet

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// blockingVMs holds every lookup until release is closed and records the
// highest number of lookups running at once.
type blockingVMs struct {
	release   chan struct{}
	now, peak atomic.Int64
	calls     atomic.Int64
	peakMu    sync.Mutex
}

func (b *blockingVMs) LookupVM(ctx context.Context, name string) (netip.Addr, bool) {
	b.calls.Add(1)
	n := b.now.Add(1)
	b.peakMu.Lock()
	if n > b.peak.Load() {
		b.peak.Store(n)
	}
	b.peakMu.Unlock()
	defer b.now.Add(-1)
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return netip.MustParseAddr("172.30.0.2"), true
}

func (b *blockingVMs) LookupVMAddr(context.Context, netip.Addr) (string, bool) { return "", false }

func (b *blockingVMs) NATAllowed(context.Context, netip.Addr) bool { return false }

// A guest flooding the resolver cannot make bangerd answer more than
// DNSMaxInFlight queries at once.
func TestDNSBoundsConcurrentQueries(t *testing.T) {
	b := &blockingVMs{release: make(chan struct{})}
	s := &DNSServer{Addr: "127.0.0.1:0", Resolver: b}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	conn, err := net.Dial("udp", s.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const flood = 4 * DNSMaxInFlight
	for i := range flood {
		m := new(dns.Msg)
		m.SetQuestion("web.vm.", dns.TypeA)
		m.Id = uint16(i + 1)
		buf, _ := m.Pack()
		if _, err := conn.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.now.Load() < DNSMaxInFlight && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let the rest of the flood arrive
	if p := b.peak.Load(); p != DNSMaxInFlight {
		t.Fatalf("%d lookups ran at once, want exactly the cap %d", p, DNSMaxInFlight)
	}
	close(b.release)
	// Still answers after the flood.
	r := query(t, s.LocalAddr().String(), "udp", "web.vm", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("after the flood: %v", r)
	}
	if c := b.calls.Load(); c >= flood+1 {
		t.Fatalf("%d lookups for %d queries: nothing was dropped", c, flood+1)
	}
}

// Idle TCP connections beyond DNSMaxTCPConns are not served until one
// closes, so a guest cannot pin unbounded buffers and descriptors.
func TestDNSBoundsTCPConnections(t *testing.T) {
	addr := startDNS(t, fakeVMs{"web": netip.MustParseAddr("172.30.0.2")}, "")
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range DNSMaxTCPConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	time.Sleep(100 * time.Millisecond) // all accepted
	m := new(dns.Msg)
	m.SetQuestion("web.vm.", dns.TypeA)
	c := &dns.Client{Net: "tcp", Timeout: 500 * time.Millisecond}
	if _, _, err := c.Exchange(m, addr); err == nil {
		t.Fatalf("query answered with %d connections already served", DNSMaxTCPConns)
	}
	// The server closes idle connections after dnsTCPIdle; then it answers.
	c.Timeout = 5 * time.Second
	if r, _, err := c.Exchange(m, addr); err != nil || len(r.Answer) != 1 {
		t.Fatalf("after idle connections expired: %v %v", r, err)
	}
}
