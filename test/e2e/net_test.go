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
	remoteIP   = "198.51.100.1"
	uplinkIP   = "198.51.100.2"
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
	routes, _ := run("ip", "-4", "-n", E.ns, "route", "show", "table", "all")
	routes = strings.ReplaceAll(routes, " linkdown", "")
	return "ruleset:\n" + rules + "\nlinks: " + strings.Join(names, " ") + "\nroutes:\n" + routes
}

func assertNetState(t *testing.T, want, when string) {
	t.Helper()
	if got := netState(t); got != want {
		t.Errorf("%s: host network differs from before the test\ngot:\n%s\nwant:\n%s", when, got, want)
	}
	assertPoolIdle(t)
}

// remoteTopology makes a namespace that is reachable from the daemon's
// namespace only over a veth, with no route back to the guest subnet: a
// guest reaches it only through banger's NAT. It serves one line per TCP
// connection naming the peer address it saw.
func remoteTopology(t *testing.T) {
	t.Helper()
	remote := fmt.Sprintf("banger-remote-%d", os.Getpid())
	for _, c := range [][]string{
		{"ip", "netns", "add", remote},
		{"ip", "-n", remote, "link", "set", "lo", "up"},
		{"ip", "-n", E.ns, "link", "add", "bgnat0", "type", "veth", "peer", "name", "bgnat1", "netns", remote},
		{"ip", "-n", E.ns, "addr", "add", uplinkIP + "/24", "dev", "bgnat0"},
		{"ip", "-n", E.ns, "link", "set", "bgnat0", "up"},
		{"ip", "-n", remote, "addr", "add", remoteIP + "/24", "dev", "bgnat1"},
		{"ip", "-n", remote, "link", "set", "bgnat1", "up"},
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
}

const reachRemote = "exec 3<>/dev/tcp/" + remoteIP + "/8080 && head -n1 <&3"

func TestNetworking(t *testing.T) {
	remoteTopology(t)
	before := netState(t)
	deleteOnCleanup(t, "neta")
	deleteOnCleanup(t, "netb")

	// Two guests at once: neta with NAT, netb without.
	var wg sync.WaitGroup
	res := map[string]result{}
	var mu sync.Mutex
	for _, args := range [][]string{{"neta", "--nat"}, {"netb"}} {
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
		r := E.bangerRes("vm", "ssh", "netb", "--", "timeout 4 bash -c '"+reachRemote+"'")
		if r.code == 0 || strings.Contains(r.stdout, "hello") {
			t.Fatalf("non-nat guest reached the remote: code %d %q", r.code, r.stdout)
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
	})

	for _, n := range []string{"neta", "netb"} {
		must(t, "vm", "delete", "--force", n)
	}
	assertGone(t, a)
	assertGone(t, b)
	assertNetState(t, before, "after deleting every VM")
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
