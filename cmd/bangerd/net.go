package main

import (
	"context"
	"flag"
	"log/slog"
	"net"
	"os"

	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/system"
	"golang.org/x/sys/unix"
)

var (
	dnsAddrFlag = flag.String("dns", envOr("BANGER_DNS", ""),
		"DNS server for <name>.vm: host:port, or \"off\" (env BANGER_DNS; default: the bridge gateway, port 53)")
	dnsUpstreamFlag = flag.String("dns-upstream", envOr("BANGER_DNS_UPSTREAM", ""),
		"forward names outside .vm to this resolver host:port (env BANGER_DNS_UPSTREAM; default: refuse them)")
)

// startNetServices starts the .vm DNS server and, on a host whose own
// network namespace runs systemd-resolved, routes ~vm to it over the bridge
// link. It returns the undo, run at shutdown.
func startNetServices(ctx context.Context, log *slog.Logger, runner system.Runner, netm *hostnet.Manager, r hostnet.VMResolver) func() {
	// The bridge appears with the first VM start (the DNS socket binds with
	// IP_FREEBIND before its address exists), so a daemon used only for
	// downloads or image builds never touches the host's links.
	addr := *dnsAddrFlag
	if addr == "off" {
		return func() {}
	}
	gw := netm.Cfg.Gateway()
	if addr == "" {
		addr = net.JoinHostPort(gw.String(), "53")
	}
	srv := &hostnet.DNSServer{Log: log, Addr: addr, Resolver: r, Upstream: *dnsUpstreamFlag}
	if err := srv.Start(ctx); err != nil {
		log.Warn("dns server not started; <name>.vm will not resolve", "err", err)
		return func() {}
	}
	undo := []func(){func() { _ = srv.Close() }}
	bridge := netm.Cfg.Bridge
	if bridge == "" {
		bridge = hostnet.DefaultBridge
	}
	if routeResolved(ctx, log, runner, netm, bridge, gw.String()) {
		undo = append(undo, func() {
			if out, err := runner.Run(context.Background(), "resolvectl", "revert", bridge); err != nil {
				log.Warn("resolvectl revert", "link", bridge, "err", err, "out", string(out))
			}
		})
	}
	return func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
}

// routeResolved tells systemd-resolved to send *.vm queries for the bridge
// link to banger's server. Only when the daemon runs in the host's own
// network namespace (never from a test's namespace, whose bridge the host
// resolver cannot see) and resolved is running.
func routeResolved(ctx context.Context, log *slog.Logger, runner system.Runner, netm *hostnet.Manager, bridge, gw string) bool {
	if !inInitNetNS() {
		return false
	}
	if _, err := os.Stat("/run/systemd/resolve/io.systemd.Resolve"); err != nil {
		return false
	}
	if _, err := system.LookPath("resolvectl"); err != nil {
		return false
	}
	if err := netm.EnsureBridge(ctx); err != nil {
		log.Warn("resolved routing: bridge", "err", err)
		return false
	}
	for _, args := range [][]string{{"dns", bridge, gw}, {"domain", bridge, "~" + hostnet.DNSZone}} {
		if out, err := runner.Run(ctx, "resolvectl", args...); err != nil {
			log.Warn("resolved routing failed; add the resolver by hand (see README)", "err", err, "out", string(out))
			return false
		}
	}
	log.Info("systemd-resolved routes ~vm to banger", "link", bridge, "dns", gw)
	return true
}

func inInitNetNS() bool {
	var self, init unix.Stat_t
	if unix.Stat("/proc/self/ns/net", &self) != nil || unix.Stat("/proc/1/ns/net", &init) != nil {
		return false
	}
	return self.Ino == init.Ino && self.Dev == init.Dev
}
