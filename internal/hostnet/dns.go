package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/netutil"
	"golang.org/x/sys/unix"
)

// DNSZone is the domain banger answers for: <vm name>.vm.
const DNSZone = "vm"

// dnsTTL is short: VMs come and go.
const dnsTTL = 5

// Guests are hostile and the server runs inside bangerd, so its work is
// bounded: at most DNSMaxInFlight queries are answered at once (more are
// dropped, as an overloaded resolver does; clients retry), at most
// DNSMaxTCPConns TCP connections are served at once (further ones wait in
// the listen backlog), and a TCP connection gets DNSMaxTCPQueries queries.
const (
	DNSMaxInFlight   = 64
	DNSMaxTCPConns   = 32
	DNSMaxTCPQueries = 16
	dnsTCPIdle       = 2 * time.Second
)

// VMResolver maps live VMs' names and addresses (the VM service).
type VMResolver interface {
	LookupVM(ctx context.Context, name string) (netip.Addr, bool)
	LookupVMAddr(ctx context.Context, ip netip.Addr) (string, bool)
	// NATAllowed reports whether ip is a running VM's with NAT on: only
	// its queries for names outside .vm are forwarded upstream.
	NATAllowed(ctx context.Context, ip netip.Addr) bool
}

// DNSServer answers A (and PTR) queries for <name>.vm of live VMs, on UDP
// and TCP. Other names are forwarded to Upstream when set and the query
// comes from a running VM with NAT, else refused: a guest without NAT gets
// no way out, not even a tunnel through DNS.
type DNSServer struct {
	Log      *slog.Logger
	Addr     string // host:port, e.g. the bridge gateway ":53"; port 0 picks one
	Resolver VMResolver
	Upstream string // optional resolver (host:port) for names outside .vm, for NAT guests
	// Conns, when set, are sockets bound by someone else (the privileged
	// helper binds port 53 for a daemon that may not): Start serves them
	// instead of binding Addr.
	Conns *DNSConns

	mu      sync.Mutex
	servers []*dns.Server
	udp     net.Addr

	inflight chan struct{} // a slot per query being answered
}

func (d *DNSServer) log() *slog.Logger {
	if d.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Log
}

// freebind lets the server bind the gateway address before the bridge has
// it (the bridge is created lazily at the first VM start).
func freebind(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// Start listens and serves in the background until Close.
func (d *DNSServer) Start(ctx context.Context) error {
	if d.Conns != nil {
		return d.serve(ctx, d.Conns.UDP, d.Conns.TCP)
	}
	c, err := ListenDNS(ctx, d.Addr)
	if err != nil {
		return err
	}
	return d.serve(ctx, c.UDP, c.TCP)
}

// DNSConns are bound DNS sockets (UDP and TCP on the same address).
type DNSConns struct {
	UDP net.PacketConn
	TCP net.Listener
}

// ListenDNS binds addr (host:port) for UDP and TCP with IP_FREEBIND.
func ListenDNS(ctx context.Context, addr string) (*DNSConns, error) {
	lc := net.ListenConfig{Control: freebind}
	pc, err := lc.ListenPacket(ctx, "udp4", addr)
	if err != nil {
		return nil, fmt.Errorf("dns: listen udp %s: %w", addr, err)
	}
	// TCP on the same port as UDP (matters when the port was picked).
	ln, err := lc.Listen(ctx, "tcp4", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("dns: listen tcp %s: %w", addr, err)
	}
	return &DNSConns{UDP: pc, TCP: ln}, nil
}

func (d *DNSServer) serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	tcpAddr := ln.Addr().String()
	d.inflight = make(chan struct{}, DNSMaxInFlight)
	udpSrv := &dns.Server{PacketConn: pc, Handler: d}
	tcpSrv := &dns.Server{Listener: netutil.LimitListener(ln, DNSMaxTCPConns), Handler: d,
		MaxTCPQueries: DNSMaxTCPQueries, IdleTimeout: func() time.Duration { return dnsTCPIdle }}
	d.mu.Lock()
	d.servers = []*dns.Server{udpSrv, tcpSrv}
	d.udp = pc.LocalAddr()
	d.mu.Unlock()
	for _, s := range d.servers {
		go func() {
			if err := s.ActivateAndServe(); err != nil {
				d.log().Warn("dns server stopped", "err", err)
			}
		}()
	}
	d.log().InfoContext(ctx, "dns server listening", "addr", tcpAddr, "zone", DNSZone, "upstream", d.Upstream)
	return nil
}

// LocalAddr is the bound UDP address (after Start).
func (d *DNSServer) LocalAddr() net.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.udp
}

// Close stops both listeners.
func (d *DNSServer) Close() error {
	d.mu.Lock()
	srvs := d.servers
	d.servers = nil
	d.mu.Unlock()
	var errs []error
	for _, s := range srvs {
		if err := s.Shutdown(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ServeDNS implements dns.Handler.
func (d *DNSServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	select {
	case d.inflight <- struct{}{}:
		defer func() { <-d.inflight }()
	default:
		return // overloaded: drop, the client retries
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	resp := d.answer(ctx, req, remoteIP(w.RemoteAddr()))
	if err := w.WriteMsg(resp); err != nil {
		d.log().Debug("dns: write reply", "err", err)
	}
}

// remoteIP is the address a query came from (invalid when unknown).
func remoteIP(a net.Addr) netip.Addr {
	var ip net.IP
	switch a := a.(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.TCPAddr:
		ip = a.IP
	default:
		return netip.Addr{}
	}
	out, _ := netip.AddrFromSlice(ip)
	return out.Unmap()
}

// answer replies to req from src.
func (d *DNSServer) answer(ctx context.Context, req *dns.Msg, src netip.Addr) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		m.SetRcode(req, dns.RcodeNotImplemented)
		return m
	}
	q := req.Question[0]
	name := strings.ToLower(dns.Fqdn(q.Name))
	switch {
	case dns.IsSubDomain(DNSZone+".", name):
		m.Authoritative = true
		label := strings.TrimSuffix(name, "."+DNSZone+".")
		if label == name || strings.Contains(label, ".") {
			m.SetRcode(req, dns.RcodeNameError)
			return m
		}
		ip, ok := d.Resolver.LookupVM(ctx, label)
		if !ok {
			m.SetRcode(req, dns.RcodeNameError)
			return m
		}
		if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: dnsTTL},
				A:   ip.AsSlice(),
			})
		}
		return m
	case q.Qtype == dns.TypePTR && dns.IsSubDomain("in-addr.arpa.", name):
		if ip, ok := ptrAddr(name); ok {
			if vm, ok := d.Resolver.LookupVMAddr(ctx, ip); ok {
				m.Authoritative = true
				m.Answer = append(m.Answer, &dns.PTR{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: dnsTTL},
					Ptr: vm + "." + DNSZone + ".",
				})
				return m
			}
		}
	}
	if d.Upstream != "" && src.IsValid() && d.Resolver.NATAllowed(ctx, src) {
		c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
		r, _, err := c.ExchangeContext(ctx, req, d.Upstream)
		if err == nil {
			return r
		}
		d.log().Debug("dns: upstream", "upstream", d.Upstream, "err", err)
		m.SetRcode(req, dns.RcodeServerFailure)
		return m
	}
	m.SetRcode(req, dns.RcodeRefused)
	return m
}

// ptrAddr parses d.c.b.a.in-addr.arpa.
func ptrAddr(name string) (netip.Addr, bool) {
	rest, ok := strings.CutSuffix(name, ".in-addr.arpa.")
	if !ok {
		return netip.Addr{}, false
	}
	p := strings.Split(rest, ".")
	if len(p) != 4 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(p[3] + "." + p[2] + "." + p[1] + "." + p[0])
	if err != nil || !a.Is4() {
		return netip.Addr{}, false
	}
	return a, true
}
