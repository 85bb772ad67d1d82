//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
)

const (
	e2eGateway = "172.30.7.1" // BANGER_SUBNET of the harness
	remoteIP   = "198.20.0.1" // public space outside every blocked range (198.51.100/24 is documentation: blocked)
	uplinkIP   = "198.20.0.2"
)

// inNS runs f on a thread switched into the named namespace; sockets made
// there stay in it.
func inNS(t *testing.T, name string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(fmt.Sprintf("cannot restore netns: %v", err)) // never hand back a thread in the wrong namespace
		}
	}()
	f()
}

// netState is what a leak would change: banger's ruleset, links, routes.
func netState(t *testing.T) string {
	t.Helper()
	rules, err := run("ip", "netns", "exec", E.ns, "nft", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	links, err := run("ip", "-n", E.ns, "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(links), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			name := strings.TrimSuffix(f[1], ":")
			if strings.HasPrefix(name, poolTapPrefix) {
				continue // idle pooled TAPs may stay; assertNetState checks them
			}
			names = append(names, name)
		}
	}
	// IPv4 routes (IPv6 link-local ones come and go with DAD on the test's
	// veth); carrier ("linkdown") follows whether the bridge has ports.
	routes, err := run("ip", "-4", "-n", E.ns, "route", "show", "table", "all")
	if err != nil {
		t.Fatal(err)
	}
	routes = strings.ReplaceAll(routes, " linkdown", "")
	return "ruleset:\n" + rules + "\nlinks: " + strings.Join(names, " ") + "\nroutes:\n" + routes
}

// withoutBridge drops the bridge's link and the kernel routes of its own
// address: the bridge appears at the first VM start anywhere in the run and
// stays by design, so whether it exists depends on the tests that ran
// before. Any other route on it (a leaked one) still shows.
func withoutBridge(state string) string {
	var out []string
	for _, l := range strings.Split(state, "\n") {
		if strings.HasPrefix(l, "links: ") {
			l = strings.Replace(l, " banger0", "", 1)
		}
		if strings.Contains(l, " dev banger0 ") && strings.Contains(l, " proto kernel ") && (strings.HasPrefix(l, "172.30.7.0/24 ") ||
			strings.HasPrefix(l, "local "+e2eGateway+" ") || strings.HasPrefix(l, "broadcast 172.30.7.255 ")) {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

func assertNetState(t *testing.T, want, when string) {
	t.Helper()
	if got := netState(t); withoutBridge(got) != withoutBridge(want) {
		t.Errorf("%s: host network differs from before the test\ngot:\n%s\nwant:\n%s", when, got, want)
	}
	assertPoolIdle(t)
}

// remoteTopology makes a namespace reachable from the daemon's namespace
// over a veth. It has a route back to the guest subnet, so only banger's
// forward rules keep a non-NAT guest's packets from reaching it (and getting
// answers); an nft counter there counts every packet from the guest subnet
// (remoteSawGuests). It serves one line per TCP connection naming the peer
// address it saw.
func remoteTopology(t *testing.T) string {
	t.Helper()
	remote := fmt.Sprintf("banger-remote-%d", os.Getpid())
	const guestNet = "172.30.7.0/24" // BANGER_SUBNET of the harness
	for _, c := range [][]string{
		{"ip", "netns", "add", remote},
		{"ip", "-n", remote, "link", "set", "lo", "up"},
		{"ip", "-n", E.ns, "link", "add", "bgnat0", "type", "veth", "peer", "name", "bgnat1", "netns", remote},
		{"ip", "-n", E.ns, "addr", "add", uplinkIP + "/24", "dev", "bgnat0"},
		{"ip", "-n", E.ns, "link", "set", "bgnat0", "up"},
		{"ip", "-n", remote, "addr", "add", remoteIP + "/24", "dev", "bgnat1"},
		{"ip", "-n", remote, "link", "set", "bgnat1", "up"},
		{"ip", "-n", remote, "route", "add", guestNet, "via", uplinkIP},
		{"ip", "netns", "exec", remote, "nft", "add table ip watch"},
		{"ip", "netns", "exec", remote, "nft", "add chain ip watch pre { type filter hook prerouting priority -300; }"},
		{"ip", "netns", "exec", remote, "nft", "add rule ip watch pre ip saddr " + guestNet + " counter"},
	} {
		if _, err := run(c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_, _ = run("ip", "-n", E.ns, "link", "del", "bgnat0")
		_, _ = run("ip", "netns", "del", remote)
	})
	var ln net.Listener
	inNS(t, remote, func() {
		var err error
		if ln, err = net.Listen("tcp4", remoteIP+":8080"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "hello-from-remote %s\n", host)
			c.Close()
		}
	}()
	return remote
}

// remoteSawGuests returns how many packets with a guest-subnet source
// address reached the remote namespace.
func remoteSawGuests(t *testing.T, remote string) int {
	t.Helper()
	out, err := run("ip", "netns", "exec", remote, "nft", "list", "chain", "ip", "watch", "pre")
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(out, "counter packets ")
	if i < 0 {
		t.Fatalf("no counter in the remote's watch chain:\n%s", out)
	}
	n, err := strconv.Atoi(strings.Fields(out[i+len("counter packets "):])[0])
	if err != nil {
		t.Fatalf("counter: %v\n%s", err, out)
	}
	return n
}

const reachRemote = "exec 3<>/dev/tcp/" + remoteIP + "/8080 && head -n1 <&3"

func TestNetworking(t *testing.T) {
	remote := remoteTopology(t)
	before := netState(t)
	deleteOnCleanup(t, "neta")
	deleteOnCleanup(t, "netb")

	// Two guests at once: neta with NAT, netb without. Both have
	// --host-access so anti_spoof's listener on the gateway hears them at all
	// (a guest without it reaches only the gateway's DNS; hostile_test checks
	// that): the spoofed datagrams are then stopped by the TAP guard alone.
	var wg sync.WaitGroup
	res := map[string]result{}
	var mu sync.Mutex
	for _, args := range [][]string{{"neta", "--nat", "--host-access"}, {"netb", "--host-access"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := E.bangerRes(append([]string{"vm", "create", "--name", args[0], "--memory", "512"}, args[1:]...)...)
			mu.Lock()
			res[args[0]] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	for n, r := range res {
		if r.code != 0 {
			t.Fatalf("create %s: exit %d\n%s\n%s", n, r.code, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stderr, "nat") {
			t.Errorf("create %s progress does not show the nat stage:\n%s", n, r.stderr)
		}
	}
	a, b := showVM(t, "neta"), showVM(t, "netb")

	t.Run("nat", func(t *testing.T) {
		out := must(t, "vm", "ssh", "neta", "--", "timeout 10 bash -c '"+reachRemote+"'")
		if strings.TrimSpace(out) != "hello-from-remote "+uplinkIP {
			t.Fatalf("nat guest: %q (want the remote to see the host's uplink address)", out)
		}
		r := E.bangerRes("vm", "ssh", "netb", "--", "timeout 4 bash -c '"+reachRemote+"'; "+
			"for i in 1 2 3; do echo x > /dev/udp/"+remoteIP+"/9; done")
		if strings.Contains(r.stdout, "hello") {
			t.Fatalf("non-nat guest reached the remote: code %d %q", r.code, r.stdout)
		}
		// The remote routes back to the guest subnet, so nothing but banger's
		// forward rules stopped those packets; neta's arrived masqueraded.
		if n := remoteSawGuests(t, remote); n != 0 {
			t.Fatalf("the remote saw %d packets from the guest subnet (non-nat guest forwarded, or nat not masqueraded)", n)
		}
	})

	t.Run("dns", func(t *testing.T) {
		var ans *dns.Msg
		inNS(t, E.ns, func() {
			m := new(dns.Msg)
			m.SetQuestion("neta.vm.", dns.TypeA)
			var err error
			if ans, _, err = (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, e2eGateway+":53"); err != nil {
				t.Fatal(err)
			}
		})
		if len(ans.Answer) != 1 || ans.Answer[0].(*dns.A).A.String() != a.GuestIP {
			t.Fatalf("host: neta.vm = %v, want %s", ans, a.GuestIP)
		}
		inNS(t, E.ns, func() {
			m := new(dns.Msg)
			m.SetQuestion(mustReverse(t, b.GuestIP), dns.TypePTR)
			var err error
			if ans, _, err = (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, e2eGateway+":53"); err != nil {
				t.Fatal(err)
			}
		})
		if len(ans.Answer) != 1 || ans.Answer[0].(*dns.PTR).Ptr != "netb.vm." {
			t.Fatalf("host: PTR %s = %v", b.GuestIP, ans)
		}
		out := must(t, "vm", "ssh", "netb", "--", "getent hosts neta.vm; cat /etc/resolv.conf")
		if !strings.HasPrefix(out, a.GuestIP+" ") || !strings.Contains(out, "nameserver "+e2eGateway) {
			t.Fatalf("guest netb: %q", out)
		}
	})

	t.Run("ssh_config", func(t *testing.T) {
		if _, err := exec.LookPath("ssh"); err != nil {
			t.Skip("openssh-client not installed")
		}
		cfg := filepath.Join(t.TempDir(), "ssh_config")
		if err := os.WriteFile(cfg, []byte("Host example\n    User nobody\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			must(t, "ssh-config", "--install", "--ssh-config", cfg)
		}
		// The namespace's resolver is banger's DNS server (the documented
		// resolver line for hosts without systemd-resolved).
		etc := filepath.Join("/etc/netns", E.ns)
		if err := os.MkdirAll(etc, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(etc) })
		if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver "+e2eGateway+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		kh := filepath.Join(E.stateDir, "ssh", "known_hosts")
		khBefore, _ := os.ReadFile(kh)
		out, err := run("ip", "netns", "exec", E.ns, "ssh", "-F", cfg, "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
			"root@neta.vm", "hostname")
		if err != nil || strings.TrimSpace(out) != "neta" {
			t.Fatalf("ssh root@neta.vm: %q %v", out, err)
		}
		if khAfter, _ := os.ReadFile(kh); string(khAfter) != string(khBefore) {
			t.Errorf("ssh had to learn a key (the name should be pinned before boot):\n%s", khAfter)
		}
		must(t, "ssh-config", "--uninstall", "--ssh-config", cfg)
		if got, _ := os.ReadFile(cfg); string(got) != "Host example\n    User nobody\n" {
			t.Errorf("config after uninstall: %q", got)
		}
	})

	t.Run("ports", func(t *testing.T) {
		var ports []struct {
			Proto, Address, Process, URL string
			Port                         int
		}
		out := must(t, "vm", "ports", "neta", "--json")
		if err := json.Unmarshal([]byte(out), &ports); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		found := false
		for _, p := range ports {
			if p.Proto == "tcp" && p.Port == 22 && p.URL == "http://neta.vm:22" {
				found = true
			}
		}
		if !found {
			t.Fatalf("ssh port missing: %s", out)
		}
		if out := must(t, "vm", "ports", "neta"); !strings.Contains(out, "PROTO") || !strings.Contains(out, "sshd") {
			t.Errorf("table: %s", out)
		}
	})

	t.Run("anti_spoof", func(t *testing.T) {
		var pc net.PacketConn
		inNS(t, E.ns, func() {
			var err error
			if pc, err = net.ListenPacket("udp4", e2eGateway+":5555"); err != nil {
				t.Fatal(err)
			}
		})
		defer pc.Close()
		got := make(chan string, 16)
		go func() {
			buf := make([]byte, 512)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				got <- from.(*net.UDPAddr).IP.String() + " " + strings.TrimSpace(string(buf[:n]))
			}
		}()
		// netb claims neta's address and sends from it; then from its own.
		spoof := fmt.Sprintf("ip addr add %[1]s/32 dev eth0 && ip route replace %[2]s/32 dev eth0 src %[1]s && "+
			"(echo spoofed > /dev/udp/%[2]s/5555; sleep 0.5; echo spoofed > /dev/udp/%[2]s/5555); "+
			"ip route del %[2]s/32 dev eth0; ip addr del %[1]s/32 dev eth0; echo own > /dev/udp/%[2]s/5555", a.GuestIP, e2eGateway)
		must(t, "vm", "ssh", "netb", "--", spoof)
		deadline := time.After(3 * time.Second)
		var seen []string
	loop:
		for {
			select {
			case s := <-got:
				seen = append(seen, s)
				if strings.HasSuffix(s, " own") {
					time.Sleep(500 * time.Millisecond) // let any straggler arrive
					for len(got) > 0 {
						seen = append(seen, <-got)
					}
					break loop
				}
			case <-deadline:
				break loop
			}
		}
		if strings.Join(seen, ",") != b.GuestIP+" own" {
			t.Fatalf("datagrams received: %q, want only %q", seen, b.GuestIP+" own")
		}
		// neta is unharmed (its neighbour entry was not poisoned).
		must(t, "vm", "exec", "neta", "--", "true")
	})

	t.Run("mac_spoof", func(t *testing.T) {
		// netb takes another MAC: its ARP from it must not reach the host's
		// neighbour table, nor its IPv4 frames the host; then its own again.
		got := gatewayDatagrams(t, 5556)
		const fake = "02:66:66:66:66:66"
		// The MAC change flushes the guest's ARP cache: the datagram to 5557
		// makes it ARP for the gateway from the new MAC. A static entry then
		// makes the IPv4 frames go out regardless, so their rule is tested too.
		spoof := fmt.Sprintf("m=$(cat /sys/class/net/eth0/address); echo warm > /dev/udp/%[1]s/5557; "+
			"g=$(ip neigh show %[1]s dev eth0 | cut -d' ' -f3); "+
			"ip link set eth0 address %[2]s || exit 3; echo arp > /dev/udp/%[1]s/5557; sleep 2; "+
			"ip neigh replace %[1]s lladdr $g dev eth0 nud permanent; "+
			"echo sent-from $(cat /sys/class/net/eth0/address) to $g; "+
			"(echo macspoof > /dev/udp/%[1]s/5556; sleep 0.5; echo macspoof > /dev/udp/%[1]s/5556); "+
			"ip link set eth0 address $m; ip neigh del %[1]s dev eth0; echo own > /dev/udp/%[1]s/5556", e2eGateway, fake)
		done := make(chan result, 1)
		go func() { done <- E.bangerRes("vm", "ssh", "netb", "--", spoof) }()
		time.Sleep(1500 * time.Millisecond) // while the guest wears the fake MAC
		neigh, err := run("ip", "-n", E.ns, "neigh", "show", "to", b.GuestIP)
		if err != nil {
			t.Fatal(err)
		}
		r := <-done
		if r.code != 0 || !strings.Contains(r.stdout, "sent-from "+fake+" to ") || strings.Contains(r.stdout, "to \n") {
			t.Fatalf("the guest could not take another MAC: exit %d %q %s", r.code, r.stdout, r.stderr)
		}
		if strings.Contains(neigh, fake) {
			t.Errorf("the host learnt netb's address at the forged MAC: %s", neigh)
		}
		if seen := got("own"); strings.Join(seen, ",") != b.GuestIP+" own" {
			t.Fatalf("datagrams received: %q, want only %q", seen, b.GuestIP+" own")
		}
	})

	t.Run("arp_spoof", func(t *testing.T) {
		// netb answers ARP for an address no guest owns; the host asks for it.
		const victim = "172.30.7.250"
		done := make(chan result, 1)
		go func() {
			done <- E.bangerRes("vm", "ssh", "netb", "--",
				"ip addr add "+victim+"/32 dev eth0 && sleep 5; ip addr del "+victim+"/32 dev eth0")
		}()
		time.Sleep(2 * time.Second)
		if _, err := run("ip", "-n", E.ns, "neigh", "flush", "to", victim); err != nil {
			t.Fatal(err)
		}
		inNS(t, E.ns, func() {
			c, err := net.Dial("udp4", victim+":9") // makes the host ARP for victim
			if err != nil {
				t.Fatal(err)
			}
			_, _ = c.Write([]byte("x"))
			c.Close()
		})
		time.Sleep(1500 * time.Millisecond)
		neigh, err := run("ip", "-n", E.ns, "neigh", "show", "to", victim)
		if err != nil {
			t.Fatal(err)
		}
		if r := <-done; r.code != 0 {
			t.Fatalf("netb: exit %d %s", r.code, r.stderr)
		}
		if strings.Contains(neigh, "lladdr") {
			t.Fatalf("the host learnt a MAC for %s, which only netb's forged ARP claimed: %s", victim, neigh)
		}
		must(t, "vm", "exec", "netb", "--", "true") // its own ARP still works
	})

	t.Run("set_nat_and_daemon_crash", func(t *testing.T) {
		if r := E.bangerRes("vm", "set", "netb", "--nat=true"); r.code == 0 || !strings.Contains(r.stderr, "busy") {
			t.Fatalf("set on a running vm: code %d %s", r.code, r.stderr)
		}
		must(t, "vm", "stop", "netb")
		if rules, _ := run("ip", "netns", "exec", E.ns, "nft", "list", "ruleset"); strings.Contains(rules, b.Tap) || strings.Contains(rules, b.ID) {
			t.Fatalf("stopped netb still has rules:\n%s", rules)
		}
		out := must(t, "vm", "set", "netb", "--nat=true", "--vcpu", "1", "--json")
		var v struct {
			NAT  bool `json:"nat"`
			VCPU int  `json:"vcpu"`
		}
		_ = json.Unmarshal([]byte(out), &v)
		if !v.NAT || v.VCPU != 1 {
			t.Fatalf("after set: %s", out)
		}
		// Start, and kill -9 the daemon once the TAP and rules exist but
		// before the guest answers.
		start := E.cmd("vm", "start", "netb")
		if err := start.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			rules, _ := run("ip", "netns", "exec", E.ns, "nft", "list", "ruleset")
			if strings.Contains(rules, "guard-"+b.Tap) && strings.Contains(rules, "banger vm="+b.ID) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("rules for netb never appeared:\n%s", rules)
			}
			time.Sleep(20 * time.Millisecond)
		}
		pidb, _ := os.ReadFile(filepath.Join(E.stateDir, "bangerd.pid"))
		pid, err := strconv.Atoi(strings.TrimSpace(string(pidb)))
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = start.Wait()
		for syscall.Kill(pid, 0) == nil {
			time.Sleep(20 * time.Millisecond)
		}
		// The next CLI call starts a new daemon, which reconciles.
		v2 := showVM(t, "netb")
		if v2.State != "running" {
			t.Logf("netb after restart: %s (%s); starting again", v2.State, v2.LastError)
			must(t, "vm", "start", "netb")
		} else {
			waitSSH(t, "netb")
		}
		out = must(t, "vm", "ssh", "netb", "--", "timeout 10 bash -c '"+reachRemote+"'")
		if strings.TrimSpace(out) != "hello-from-remote "+uplinkIP {
			t.Fatalf("netb after --nat=true: %q", out)
		}
		if n := remoteSawGuests(t, remote); n != 0 {
			t.Fatalf("the remote saw %d packets from the guest subnet", n)
		}
	})

	for _, n := range []string{"neta", "netb"} {
		must(t, "vm", "delete", "--force", n)
	}
	assertGone(t, a)
	assertGone(t, b)
	assertNetState(t, before, "after deleting every VM")
}

// gatewayDatagrams listens on the gateway's UDP port in the test namespace
// and returns a function that collects "<source ip> <text>" lines until one
// ends with end (plus stragglers), or 3 s pass.
func gatewayDatagrams(t *testing.T, port int) func(end string) []string {
	t.Helper()
	var pc net.PacketConn
	inNS(t, E.ns, func() {
		var err error
		if pc, err = net.ListenPacket("udp4", fmt.Sprintf("%s:%d", e2eGateway, port)); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { pc.Close() })
	got := make(chan string, 16)
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			got <- from.(*net.UDPAddr).IP.String() + " " + strings.TrimSpace(string(buf[:n]))
		}
	}()
	return func(end string) []string {
		var seen []string
		deadline := time.After(3 * time.Second)
		for {
			select {
			case s := <-got:
				seen = append(seen, s)
				if strings.HasSuffix(s, " "+end) {
					time.Sleep(500 * time.Millisecond) // let any straggler arrive
					for len(got) > 0 {
						seen = append(seen, <-got)
					}
					return seen
				}
			case <-deadline:
				return seen
			}
		}
	}
}

// waitSSH waits until an adopted VM (whose boot the killed daemon was
// watching) answers.
func waitSSH(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(120 * time.Second)
	for {
		r := E.bangerRes("vm", "exec", name, "--", "true")
		if r.code == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered: %s", name, r.stderr)
		}
		time.Sleep(time.Second)
	}
}

func mustReverse(t *testing.T, ip string) string {
	t.Helper()
	r, err := dns.ReverseAddr(ip)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
