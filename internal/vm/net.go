package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/store"
)

// Firewall programs per-VM anti-spoofing and NAT rules (hostnet.Firewall in
// production). Rules are keyed by durable data from the row: VM id, guest IP,
// TAP name, so teardown never depends on memory or a scratch file.
type Firewall interface {
	Apply(ctx context.Context, v hostnet.VMNet) error
	Remove(ctx context.Context, id, tap string) error
	Prune(ctx context.Context, keep map[string]string) error
}

func (s *Service) vmNet(ctx context.Context, v store.VM) (hostnet.VMNet, error) {
	ip, err := netip.ParseAddr(v.GuestIP)
	if err != nil {
		return hostnet.VMNet{}, fmt.Errorf("guest ip %q: %w", v.GuestIP, api.ErrInvalid)
	}
	mac, err := net.ParseMAC(v.MAC)
	if err != nil {
		return hostnet.VMNet{}, fmt.Errorf("mac %q: %w", v.MAC, api.ErrInvalid)
	}
	pol, err := s.d.Store.NetPolicy(ctx, v.ID)
	if err != nil {
		return hostnet.VMNet{}, err
	}
	return hostnet.VMNet{ID: v.ID, IP: ip, MAC: mac, Tap: v.Tap, NAT: pol.NAT, NATPrivate: pol.NATPrivate,
		HostAccess: pol.HostAccess}, nil
}

// applyFirewall is the `nat` start step: the allowlist on the TAP always;
// masquerade + forward when the VM has NAT (private ranges only with
// nat_private); host services beyond DNS only with host_access.
func (s *Service) applyFirewall(ctx context.Context, v store.VM) error {
	if s.d.Firewall == nil {
		return nil
	}
	n, err := s.vmNet(ctx, v)
	if err != nil {
		return err
	}
	return s.d.Firewall.Apply(ctx, n)
}

// removeFirewall deletes the VM's rules by its id and TAP name (both from the row).
func (s *Service) removeFirewall(ctx context.Context, v store.VM) error {
	if s.d.Firewall == nil {
		return nil
	}
	if err := s.d.Firewall.Remove(ctx, v.ID, v.Tap); err != nil {
		return fmt.Errorf("remove firewall rules: %w", err)
	}
	return nil
}

// reconcileNet runs at the end of Reconcile: the firewall of every adopted
// running VM is applied again (the ruleset may have been flushed, or left
// by an older banger, while the daemon was down; Apply replaces a VM's
// rules atomically, so the guest is never unguarded), a stopped row's TAP
// and rules (left by a daemon killed mid-start, before the row said
// `running`) are removed, and any rule of a VM that is not running now is
// pruned.
func (s *Service) reconcileNet(ctx context.Context) error {
	vms, err := s.d.Store.ListVMs(ctx)
	if err != nil {
		return err
	}
	var errs []error
	keep := map[string]string{}
	for _, v := range vms {
		if s.Running(v) {
			keep[v.ID] = v.Tap
			if err := s.reapplyNet(ctx, v); err != nil {
				errs = append(errs, fmt.Errorf("vm %q: re-apply firewall: %w", v.Name, err))
			}
			continue
		}
		if v.State != StateStopped {
			continue // Reconcile's own teardown handled it
		}
		if spec, err := s.spec(v); err == nil {
			if pid, alive := s.driverFor(v).Find(spec); alive {
				// A VMM launched just before the daemon died, row never updated.
				if err := s.killAndWait(s.driverFor(v), pid); err != nil {
					errs = append(errs, err)
				}
			}
		}
		s.removeHandles(v) // written by that launch; nothing it names is alive now
		if v.Tap != "" {
			// A claim left by a daemon killed mid-start or mid-teardown.
			if err := s.removeFirewall(ctx, v); err != nil {
				errs = append(errs, fmt.Errorf("vm %q: %w", v.Name, err))
			} else if err := s.releaseTap(ctx, &v); err != nil {
				errs = append(errs, fmt.Errorf("vm %q: %w", v.Name, err))
			} else if err := s.d.Store.UpdateVM(ctx, &v); err != nil {
				errs = append(errs, fmt.Errorf("vm %q: %w", v.Name, err))
			}
		}
	}
	if s.d.Firewall != nil {
		if err := s.d.Firewall.Prune(ctx, keep); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.trimPool(ctx); err != nil {
		errs = append(errs, fmt.Errorf("tap pool: %w", err))
	}
	return errors.Join(errs...)
}

// reapplyNet restores an adopted VM's host-side network hardening: the
// bridge's and TAP's IPv6 switches, then its firewall rules.
func (s *Service) reapplyNet(ctx context.Context, v store.VM) error {
	if v.Tap == "" {
		return nil
	}
	if err := s.d.Net.EnsureBridge(ctx); err != nil {
		return err
	}
	if err := s.d.Net.CreateTap(ctx, v.Tap, s.d.UID); err != nil {
		return err
	}
	return s.applyFirewall(ctx, v)
}

// LookupVM resolves a running VM's name to its guest IP (the DNS server).
func (s *Service) LookupVM(ctx context.Context, name string) (netip.Addr, bool) {
	if ValidName(name) != nil {
		return netip.Addr{}, false
	}
	v, err := s.d.Store.GetVM(ctx, name)
	if err != nil || v.Name != name || !s.Running(v) {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(v.GuestIP)
	return ip, err == nil
}

// LookupVMAddr resolves a running VM's guest IP to its name (PTR).
func (s *Service) LookupVMAddr(ctx context.Context, ip netip.Addr) (string, bool) {
	vms, err := s.d.Store.ListVMs(ctx)
	if err != nil {
		return "", false
	}
	for _, v := range vms {
		if v.GuestIP == ip.String() && s.Running(v) {
			return v.Name, true
		}
	}
	return "", false
}

// NAT reports whether the VM has NAT enabled (for views).
func (s *Service) NAT(ctx context.Context, v store.VM) bool {
	return s.netPolicy(ctx, v).NAT
}

// netPolicy is the VM's network opt-ins (for views; all off on error).
func (s *Service) netPolicy(ctx context.Context, v store.VM) store.NetPolicy {
	p, _ := s.d.Store.NetPolicy(ctx, v.ID)
	return p
}

// Set changes a stopped VM: network opt-ins, vCPUs, memory (effective at
// the next start) and the work disk's size (grown at once, workdisk.go).
// Everything is validated before anything changes; the grow, the one step
// that can fail part-way, runs before the row is written.
func (s *Service) Set(ctx context.Context, p api.SetVMParams) (store.VM, error) {
	v, err := s.Get(ctx, p.Name)
	if err != nil {
		return store.VM{}, err
	}
	unlock := s.lock(v.ID)
	defer unlock()
	if v, err = s.Get(ctx, v.ID); err != nil {
		return store.VM{}, err
	}
	others := p.NAT != nil || p.NATPrivate != nil || p.HostAccess != nil || p.VCPU != nil || p.MemoryMiB != nil || p.WorkDisk != ""
	if !others && p.IdleTimeout == nil {
		return v, fmt.Errorf("vm set %q: nothing to change (give --nat, --nat-private, --host-access, --vcpu, --memory, --work-disk or --idle-timeout): %w",
			v.Name, api.ErrInvalid)
	}
	if p.IdleTimeout != nil {
		// The one change a running VM takes, at once (idle.go).
		if err := validIdleTimeout(*p.IdleTimeout); err != nil {
			return v, err
		}
		if !others {
			if err := s.d.Store.SetIdleTimeout(ctx, v.ID, time.Duration(*p.IdleTimeout)*time.Second); err != nil {
				return v, err
			}
			s.Touch(v.ID) // the timeout runs from now
			s.log().InfoContext(ctx, "vm set", "vm", v.Name, "idle_timeout_s", *p.IdleTimeout)
			return v, nil
		}
	}
	if s.Running(v) || v.State == StateRunning || v.State == StateCreating {
		return v, fmt.Errorf("vm %q is %s; stop it first (changes apply at the next start; --idle-timeout alone applies at once): %w",
			v.Name, v.State, api.ErrBusy)
	}
	pol, err := s.d.Store.NetPolicy(ctx, v.ID)
	if err != nil {
		return v, err
	}
	for _, f := range []struct {
		to  *bool
		set *bool
	}{{&pol.NAT, p.NAT}, {&pol.NATPrivate, p.NATPrivate}, {&pol.HostAccess, p.HostAccess}} {
		if f.set != nil {
			*f.to = *f.set
		}
	}
	if pol.NATPrivate && !pol.NAT {
		return v, fmt.Errorf("vm set %q: --nat-private needs --nat (turn both off together): %w", v.Name, api.ErrInvalid)
	}
	if p.VCPU != nil && (*p.VCPU < 1 || *p.VCPU > 32) {
		return v, fmt.Errorf("vcpu %d: must be 1-32: %w", *p.VCPU, api.ErrInvalid)
	}
	if p.MemoryMiB != nil && (*p.MemoryMiB < 128 || *p.MemoryMiB > 64<<10) {
		return v, fmt.Errorf("memory %d MiB: must be 128-65536: %w", *p.MemoryMiB, api.ErrInvalid)
	}
	var workSize int64 // 0: unchanged
	if p.WorkDisk != "" {
		if workSize, err = s.checkWorkGrow(ctx, v, p.WorkDisk); err != nil {
			return v, err
		}
	}
	if workSize != 0 {
		if err := s.growWork(ctx, v, workSize); err != nil {
			return v, err
		}
		// A daemon killed here leaves the row's smaller size: the same
		// set again finds the file already grown and just records it.
	}
	if p.VCPU != nil || p.MemoryMiB != nil || workSize != 0 {
		if p.VCPU != nil {
			v.VCPU = *p.VCPU
		}
		if p.MemoryMiB != nil {
			v.MemoryMiB = *p.MemoryMiB
		}
		if workSize != 0 {
			v.WorkDiskBytes = workSize
		}
		if err := s.d.Store.UpdateVM(ctx, &v); err != nil {
			return v, err
		}
	}
	if p.NAT != nil || p.NATPrivate != nil || p.HostAccess != nil {
		if err := s.d.Store.SetNetPolicy(ctx, v.ID, pol); err != nil {
			return v, err
		}
	}
	if p.IdleTimeout != nil {
		if err := s.d.Store.SetIdleTimeout(ctx, v.ID, time.Duration(*p.IdleTimeout)*time.Second); err != nil {
			return v, err
		}
	}
	s.d.Log.InfoContext(ctx, "vm set", "vm", v.Name, "vcpu", v.VCPU, "memory_mib", v.MemoryMiB, "work_disk_bytes", v.WorkDiskBytes, "nat", pol.NAT,
		"nat_private", pol.NATPrivate, "host_access", pol.HostAccess)
	return v, nil
}

// Ports lists the guest's listening TCP/UDP sockets, read with `ss` over the
// daemon's kept SSH connection.
func (s *Service) Ports(ctx context.Context, name string) ([]api.Port, error) {
	v, err := s.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	if !s.Running(v) {
		return nil, fmt.Errorf("vm %q is %s: %w", v.Name, v.State, api.ErrNotRunning)
	}
	// The guest's ss output is hostile: parsed within a limit, its stderr
	// kept as a bounded tail.
	var out bytes.Buffer
	var errb guest.Tail
	code, err := s.d.Guest.Exec(ctx, s.target(v), guest.ExecRequest{Argv: []string{"ss", "-H", "-l", "-n", "-t", "-u", "-p"},
		Stdout: guest.NewLimitWriter(&out, PortsLimit, "ss output"), Stderr: &errb})
	if err != nil {
		return nil, fmt.Errorf("vm %q: ss: %w", v.Name, err)
	}
	if code != 0 {
		return nil, fmt.Errorf("vm %q: ss exited %d: %s", v.Name, code, errb.String())
	}
	return ParsePorts(out.String(), v.Name), nil
}

// PortsLimit bounds the `ss` output `vm ports` parses (a line is ~150
// bytes: some 25,000 sockets).
const PortsLimit = 4 << 20

// ParsePorts parses `ss -H -lntup` output. Sockets bound to loopback get no
// URL hint; others get http://NAME.vm:PORT (TCP only).
func ParsePorts(ssOut, vmName string) []api.Port {
	var ports []api.Port
	seen := map[string]bool{}
	for _, line := range strings.Split(ssOut, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		proto := f[0]
		if proto != "tcp" && proto != "udp" {
			continue
		}
		local := f[4]
		i := strings.LastIndexByte(local, ':')
		if i < 0 {
			continue
		}
		port, err := strconv.Atoi(local[i+1:])
		if err != nil || port <= 0 {
			continue
		}
		addr := strings.Trim(local[:i], "[]")
		if j := strings.IndexByte(addr, '%'); j >= 0 {
			addr = addr[:j]
		}
		if addr == "*" {
			addr = "0.0.0.0"
		}
		p := api.Port{Proto: proto, Address: addr, Port: port}
		if len(f) > 6 {
			p.Process = guest.Printable(processName(strings.Join(f[6:], " ")))
		}
		loop, wild := false, false
		if a, err := netip.ParseAddr(addr); err == nil {
			loop, wild = a.Unmap().IsLoopback(), a.IsUnspecified()
		}
		if proto == "tcp" && !loop {
			p.URL = fmt.Sprintf("http://%s.%s:%d", vmName, hostnet.DNSZone, port)
		}
		if proto == "tcp" && (loop || wild) {
			p.Forward = ForwardHint(vmName, port)
		}
		key := fmt.Sprintf("%s|%s|%d", p.Proto, p.Address, p.Port)
		if seen[key] {
			continue
		}
		seen[key] = true
		ports = append(ports, p)
	}
	sort.SliceStable(ports, func(i, j int) bool {
		if ports[i].Port != ports[j].Port {
			return ports[i].Port < ports[j].Port
		}
		if ports[i].Proto != ports[j].Proto {
			return ports[i].Proto < ports[j].Proto
		}
		return ports[i].Address < ports[j].Address
	})
	return ports
}

// ForwardHint is the command that forwards a host port to a guest's TCP
// port through its agent (`vm forward`).
func ForwardHint(vmName string, port int) string {
	return fmt.Sprintf("banger vm forward %s %d", vmName, port)
}

// processName extracts "sshd" from users:(("sshd",pid=1,fd=3)).
func processName(s string) string {
	_, rest, ok := strings.Cut(s, `(("`)
	if !ok {
		return ""
	}
	name, _, ok := strings.Cut(rest, `"`)
	if !ok {
		return ""
	}
	return name
}
