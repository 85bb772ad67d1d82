package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/privileged"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vm"
)

var (
	dnsAddrFlag = flag.String("dns", envOr("BANGER_DNS", ""),
		"DNS server for <name>.vm: host:port, or \"off\" (env BANGER_DNS; default: the bridge gateway, port 53)")
	dnsUpstreamFlag = flag.String("dns-upstream", envOr("BANGER_DNS_UPSTREAM", ""),
		"forward names outside .vm to this resolver host:port, for guests with NAT only (env BANGER_DNS_UPSTREAM; default: refuse them)")
	natBlockFlag = flag.String("nat-block", envOr("BANGER_NAT_BLOCK", ""),
		"CIDR[,CIDR]: IPv4 destinations no NAT guest reaches, even with --nat-private, besides link-local and cloud metadata "+
			"(env BANGER_NAT_BLOCK; all-in-one mode: with a helper, give it to banger system helper)")
)

// dnsVMs is the DNS server's view of the VM service: a sender may have
// names outside .vm forwarded only when it is a running VM with NAT.
type dnsVMs struct{ *vm.Service }

func (d dnsVMs) NATAllowed(ctx context.Context, ip netip.Addr) bool {
	vms, err := d.List(ctx)
	if err != nil {
		return false
	}
	for _, v := range vms {
		if v.GuestIP == ip.String() && d.Running(v) {
			return d.NAT(ctx, v)
		}
	}
	return false
}

// firewallWatchEvery is how often the in-process firewall checks that its
// chains survived a host's `nft flush ruleset`.
const firewallWatchEvery = 5 * time.Second

// newPrivileged picks the one Privileged the daemon talks to: the helper's
// socket when one is named or when bangerd is not root, else in-process
// (the all-in-one mode). Nothing is dialled here: a daemon that only
// downloads or builds works without a helper; the first network verb fails
// with how to start one.
func newPrivileged(log *slog.Logger, runner system.Runner, cfg hostnet.Config, helper string) privileged.Privileged {
	if helper == "" && os.Geteuid() == 0 {
		log.Info("privileged operations in-process (bangerd runs as root)")
		return privileged.NewLocal(log, runner, cfg)
	}
	if helper == "" {
		helper = privileged.DefaultSocket
	}
	log.Info("privileged operations through the helper", "socket", helper)
	return &privileged.Client{Path: helper}
}

// startNetServices starts the .vm DNS server and, on a host whose own
// network namespace runs systemd-resolved, routes ~vm to it over the bridge
// link. Port 53 comes from the privileged side; when the helper is not up
// yet (an owner's daemon auto-started before `banger system helper`), it is
// asked again every few seconds until it answers. It returns the undo, run
// at shutdown.
func startNetServices(ctx context.Context, log *slog.Logger, priv privileged.Privileged, cfg hostnet.Config, vms *vm.Service) func() {
	// The bridge appears with the first VM start (the DNS socket binds with
	// IP_FREEBIND before its address exists), so a daemon used only for
	// downloads or image builds never touches the host's links.
	addr := *dnsAddrFlag
	if addr == "off" {
		return func() {}
	}
	var (
		mu   sync.Mutex
		undo []func()
	)
	start := func(ctx context.Context) error {
		srv := &hostnet.DNSServer{Log: log, Addr: addr, Resolver: dnsVMs{vms}, Upstream: *dnsUpstreamFlag}
		if addr == "" {
			srv.Addr = net.JoinHostPort(cfg.Gateway().String(), "53")
			conns, err := priv.ListenDNS(ctx)
			if err != nil {
				return err
			}
			srv.Conns = conns
		}
		if err := srv.Start(ctx); err != nil {
			return err
		}
		mu.Lock()
		undo = append(undo, func() { _ = srv.Close() })
		mu.Unlock()
		routed, err := priv.RouteDNS(ctx)
		if err != nil {
			log.Warn("resolved routing failed; add the resolver by hand (see README)", "err", err)
		}
		if routed {
			mu.Lock()
			undo = append(undo, func() {
				if err := priv.RevertDNS(context.Background()); err != nil {
					log.Warn("resolved routing revert", "err", err)
				}
			})
			mu.Unlock()
		}
		return nil
	}
	done := make(chan struct{})
	rctx, cancel := context.WithCancel(ctx)
	err := start(rctx)
	switch {
	case err == nil:
		close(done)
	case errors.Is(err, privileged.ErrUnreachable):
		log.Warn("dns server waits for the privileged helper; <name>.vm resolves once it answers", "err", err)
		go func() {
			defer close(done)
			t := time.NewTicker(3 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-rctx.Done():
					return
				case <-t.C:
				}
				err := start(rctx)
				if err == nil {
					return
				}
				if !errors.Is(err, privileged.ErrUnreachable) {
					log.Warn("dns server not started; <name>.vm will not resolve", "err", err)
					return
				}
			}
		}()
	default:
		close(done)
		log.Warn("dns server not started; <name>.vm will not resolve", "err", err)
	}
	return func() {
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
}

// privilegedStatus is doctor's view of the Privileged in use.
func privilegedStatus(ctx context.Context, priv privileged.Privileged) (bool, string) {
	c, ok := priv.(*privileged.Client)
	if !ok {
		return true, "running as root: privileged operations in-process (all-in-one mode)"
	}
	if _, err := c.PoolTaps(ctx); err != nil {
		return false, err.Error()
	}
	return true, "helper at " + c.Path + " answers"
}
