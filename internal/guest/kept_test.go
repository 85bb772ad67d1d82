package guest

import (
	"net/netip"
	"testing"
)

// KeptSSH names the host end of the daemon's own kept connection exactly as
// the guest's sshd sees its peer, and nothing once it is dropped.
func TestKeptSSHIsTheServersPeer(t *testing.T) {
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	tg := target(s)
	r := &Router{SSH: f.pool, Agents: NewAgents(nil)}
	if got := r.KeptSSH(tg.VMID); got != nil {
		t.Fatalf("before any dial: %v", got)
	}
	if code, _ := run(t, f, tg, ExecRequest{Argv: []string{"true"}}); code != 0 {
		t.Fatalf("exec: %d", code)
	}
	s.mu.Lock()
	peer := netip.MustParseAddrPort(s.open[0].RemoteAddr().String())
	s.mu.Unlock()
	if got := r.KeptSSH(tg.VMID); len(got) != 1 || got[0] != peer {
		t.Fatalf("KeptSSH = %v, server's peer %v", got, peer)
	}
	f.pool.Drop(tg.VMID)
	if got := r.KeptSSH(tg.VMID); got != nil {
		t.Fatalf("after Drop: %v", got)
	}
}
