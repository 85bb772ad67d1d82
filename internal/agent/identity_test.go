package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/crypto/ssh"
)

// fakeIdentityOS keeps the state the identity operation changes and a
// journal of the changes, compared as text.
type fakeIdentityOS struct {
	root string // to see what sshd would load when reloaded

	mu       sync.Mutex
	journal  []string
	fail     map[string]error // by journal verb
	links    map[string]*fakeLink
	hostname string
}

type fakeLink struct {
	mac   net.HardwareAddr
	addrs []netip.Prefix
	gw    netip.Addr
	neigh []string
}

func newFakeIdentityOS(root string) *fakeIdentityOS {
	mac, _ := net.ParseMAC("02:00:ac:10:00:02")
	return &fakeIdentityOS{root: root, hostname: "parent", links: map[string]*fakeLink{
		"eth0": {mac: mac, addrs: []netip.Prefix{netip.MustParsePrefix("172.16.0.2/24")},
			gw: netip.MustParseAddr("172.16.0.1"), neigh: []string{"172.16.0.1 lladdr 02:00:ac:10:00:01"}},
	}}
}

func (f *fakeIdentityOS) do(verb, format string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail[verb]; err != nil {
		return err
	}
	f.journal = append(f.journal, verb+" "+fmt.Sprintf(format, args...))
	return nil
}

func (f *fakeIdentityOS) link(name string) (*fakeLink, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.links[name]
	if l == nil {
		return nil, fmt.Errorf("link %s: not found", name)
	}
	return l, nil
}

func (f *fakeIdentityOS) text() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.journal, "\n")
}

func (f *fakeIdentityOS) SetClock(t time.Time) error {
	return f.do("clock", "%s", t.UTC().Format(time.RFC3339Nano))
}

func (f *fakeIdentityOS) AddEntropy(seed []byte) error {
	first := "none"
	if len(seed) > 0 {
		first = fmt.Sprintf("%02x", seed[0])
	}
	return f.do("rng", "%d bytes credited, first %s", len(seed), first)
}

func (f *fakeIdentityOS) SetMAC(ifname string, mac net.HardwareAddr) error {
	l, err := f.link(ifname)
	if err != nil {
		return err
	}
	l.mac = mac
	return f.do("mac", "%s %s", ifname, mac)
}

func (f *fakeIdentityOS) SetAddress(ifname string, addr netip.Prefix) error {
	l, err := f.link(ifname)
	if err != nil {
		return err
	}
	l.addrs = []netip.Prefix{addr}
	return f.do("address", "%s %s", ifname, addr)
}

func (f *fakeIdentityOS) SetDefaultRoute(ifname string, gw netip.Addr) error {
	l, err := f.link(ifname)
	if err != nil {
		return err
	}
	l.gw = gw
	return f.do("route", "%s default via %s", ifname, gw)
}

func (f *fakeIdentityOS) FlushNeighbours(ifname string) error {
	l, err := f.link(ifname)
	if err != nil {
		return err
	}
	n := len(l.neigh)
	l.neigh = nil
	return f.do("neighbours", "%s %d flushed", ifname, n)
}

func (f *fakeIdentityOS) Announce(ifname string, addr netip.Addr) error {
	l, err := f.link(ifname)
	if err != nil {
		return err
	}
	return f.do("announce", "%s %s at %s", ifname, addr, l.mac)
}

func (f *fakeIdentityOS) SetHostname(name string) error {
	f.mu.Lock()
	f.hostname = name
	f.mu.Unlock()
	return f.do("hostname", "%s", name)
}

// ReloadSSHD notes what sshd would find on disk: the keys must be written
// before it is reloaded.
func (f *fakeIdentityOS) ReloadSSHD(context.Context) error {
	pub, _ := os.ReadFile(filepath.Join(f.root, "etc/ssh", hostKeyPubFile))
	key, _ := os.ReadFile(filepath.Join(f.root, "etc/ssh", hostKeyFile))
	mid, _ := os.ReadFile(filepath.Join(f.root, "etc", machineIDFile))
	return f.do("sshd", "reloaded with %s, machine-id %s", keyTag(pub, key), strings.TrimSpace(string(mid)))
}

// keyTag names a key pair by the end of its public blob, and whether the
// private half belongs to it.
func keyTag(pub, priv []byte) string {
	f := strings.Fields(string(pub))
	if len(f) < 2 || len(f[1]) < 12 {
		return "no key"
	}
	tag := "key …" + f[1][len(f[1])-12:]
	if checkHostKey(priv, pub) != nil {
		tag += " (private half does not match)"
	}
	return tag
}

// testKey is an OpenSSH ed25519 key pair as ssh-keygen writes it.
func testKey(t testing.TB) (priv, pub []byte) {
	t.Helper()
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(sk, "root@vm-b")
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(blk), ssh.MarshalAuthorizedKey(sp)
}

func testIdentity(t testing.TB) Identity {
	priv, pub := testKey(t)
	seed := make([]byte, 64)
	for i := range seed {
		seed[i] = byte(0xa0 + i)
	}
	return Identity{
		Hostname:   "vm-b",
		MachineID:  "0123456789abcdef0123456789abcdef",
		Interface:  "eth0",
		MAC:        "02:00:ac:10:00:05",
		Address:    "172.16.0.5/24",
		Gateway:    "172.16.0.1",
		HostKey:    priv,
		HostKeyPub: pub,
		Time:       time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.UTC),
		Seed:       seed,
	}
}

const oldHosts = "# parent's hosts\n127.0.0.1\tlocalhost\n127.0.1.1\tparent\n::1\tlocalhost ip6-localhost ip6-loopback\n10.1.2.3 db.internal\n127.0.1.1 parent-alias\n"

// guestRoot is a root directory as a cold-booted guest has it.
func guestRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	oldKey, oldPub := testKey(t)
	for name, data := range map[string]string{
		"etc/hostname":                     "parent\n",
		"etc/hosts":                        oldHosts,
		"etc/machine-id":                   "ffffffffffffffffffffffffffffffff\n",
		"etc/ssh/ssh_host_ed25519_key":     string(oldKey),
		"etc/ssh/ssh_host_ed25519_key.pub": string(oldPub),
		"etc/ssh/sshd_config":              "PermitRootLogin prohibit-password\n",
		"var/lib/dbus/machine-id":          "ffffffffffffffffffffffffffffffff\n",
	} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// tree lists everything under dir as text: path, type and mode, content or
// link target.
func tree(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			lines = append(lines, fmt.Sprintf("%s -> %s", rel, target))
		case d.IsDir():
			lines = append(lines, fmt.Sprintf("%s/ %v", rel, fi.Mode().Perm()))
		default:
			b, _ := os.ReadFile(p)
			lines = append(lines, fmt.Sprintf("%s %v %q", rel, fi.Mode(), b))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func identityServer(t *testing.T) (*Client, *fakeIdentityOS, string) {
	t.Helper()
	root := guestRoot(t)
	fos := newFakeIdentityOS(root)
	c := pair(t, &Server{Identity: IdentityConfig{Root: root, OS: fos}})
	return c, fos, root
}

func readFile(t *testing.T, p string) (string, fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), fi.Mode()
}

func TestReidentify(t *testing.T) {
	c, fos, root := identityServer(t)
	id := testIdentity(t)
	if err := c.Reidentify(testCtx(t, 10*time.Second), id); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"clock 2031-05-06T07:08:09.123456789Z",
		"rng 64 bytes credited, first a0",
		"mac eth0 02:00:ac:10:00:05",
		"address eth0 172.16.0.5/24",
		"route eth0 default via 172.16.0.1",
		"neighbours eth0 1 flushed",
		"announce eth0 172.16.0.5 at 02:00:ac:10:00:05",
		"hostname vm-b",
		"sshd reloaded with " + keyTag(id.HostKeyPub, id.HostKey) + ", machine-id 0123456789abcdef0123456789abcdef",
	}, "\n")
	if got := fos.text(); got != want {
		t.Fatalf("steps:\n%s\nwant:\n%s", got, want)
	}
	for _, f := range []struct {
		path string
		data string
		mode fs.FileMode
	}{
		{"etc/hostname", "vm-b\n", 0o644},
		{"etc/hosts", "# parent's hosts\n127.0.0.1\tlocalhost\n127.0.1.1\tvm-b\n::1\tlocalhost ip6-localhost ip6-loopback\n10.1.2.3 db.internal\n", 0o644},
		{"etc/machine-id", "0123456789abcdef0123456789abcdef\n", 0o444},
		{"var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n", 0o444},
		{"etc/ssh/ssh_host_ed25519_key", string(id.HostKey), 0o600},
		{"etc/ssh/ssh_host_ed25519_key.pub", string(id.HostKeyPub), 0o644},
		{"etc/ssh/sshd_config", "PermitRootLogin prohibit-password\n", 0o644},
	} {
		data, mode := readFile(t, filepath.Join(root, f.path))
		if data != f.data || mode != f.mode {
			t.Errorf("%s: %v %q\nwant %v %q", f.path, mode, data, f.mode, f.data)
		}
	}
	// No temporary file is left beside the ones replaced.
	for _, d := range []string{"etc", "etc/ssh", "var/lib/dbus"} {
		ents, _ := os.ReadDir(filepath.Join(root, d))
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") {
				t.Errorf("left over in %s: %s", d, e.Name())
			}
		}
	}
	// Again: the same identity applies cleanly over itself.
	if err := c.Reidentify(testCtx(t, 10*time.Second), id); err != nil {
		t.Fatalf("second run: %v", err)
	}
	if data, _ := readFile(t, filepath.Join(root, "etc/hosts")); strings.Count(data, "127.0.1.1") != 1 {
		t.Fatalf("hosts after a second run:\n%s", data)
	}
}

// A Debian guest's /var/lib/dbus/machine-id is a symlink to /etc/machine-id:
// it stays one.
func TestReidentifyDbusSymlink(t *testing.T) {
	c, _, root := identityServer(t)
	p := filepath.Join(root, "var/lib/dbus/machine-id")
	os.Remove(p)
	if err := os.Symlink("/etc/machine-id", p); err != nil {
		t.Fatal(err)
	}
	if err := c.Reidentify(testCtx(t, 10*time.Second), testIdentity(t)); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(p); err != nil || target != "/etc/machine-id" {
		t.Fatalf("dbus machine-id: %q %v", target, err)
	}
}

// Symlinks in the guest's root are replaced, never written through.
func TestReidentifySymlinksNotFollowed(t *testing.T) {
	c, _, root := identityServer(t)
	outside := t.TempDir()
	for _, l := range []struct{ link, target string }{
		{"etc/hostname", "hostname-target"},
		{"etc/hosts", "hosts-target"},
		{"etc/machine-id", "machine-id-target"},
		{"etc/ssh/ssh_host_ed25519_key", "key-target"},
		{"etc/ssh/ssh_host_ed25519_key.pub", "pub-target"},
	} {
		target := filepath.Join(outside, l.target)
		if err := os.WriteFile(target, []byte("untouched\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, l.link)
		os.Remove(p)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	before := tree(t, outside)
	id := testIdentity(t)
	if err := c.Reidentify(testCtx(t, 10*time.Second), id); err != nil {
		t.Fatal(err)
	}
	if after := tree(t, outside); after != before {
		t.Fatalf("written through a symlink:\n%s\nwas:\n%s", after, before)
	}
	for p, want := range map[string]string{
		"etc/hostname":                 "vm-b\n",
		"etc/hosts":                    "127.0.0.1\tlocalhost\n127.0.1.1\tvm-b\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/ssh/ssh_host_ed25519_key": string(id.HostKey),
	} {
		if data, mode := readFile(t, filepath.Join(root, p)); data != want || !mode.IsRegular() {
			t.Errorf("%s: %v %q, want a regular file %q", p, mode, data, want)
		}
	}
}

// A symlinked directory on the way is refused before anything changes.
func TestReidentifySymlinkedDirRefused(t *testing.T) {
	for _, dir := range []string{"etc/ssh", "var/lib/dbus"} {
		t.Run(strings.ReplaceAll(dir, "/", "_"), func(t *testing.T) {
			c, fos, root := identityServer(t)
			outside := t.TempDir()
			p := filepath.Join(root, dir)
			if err := os.Rename(p, filepath.Join(outside, "moved")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(outside, "moved"), p); err != nil {
				t.Fatal(err)
			}
			before, beforeOut := tree(t, root), tree(t, outside)
			err := c.Reidentify(testCtx(t, 10*time.Second), testIdentity(t))
			if err == nil || !strings.Contains(err.Error(), "agent identity: identity files: "+dir) || !strings.Contains(err.Error(), "not following") {
				t.Fatalf("err = %v", err)
			}
			if fos.text() != "" || tree(t, root) != before || tree(t, outside) != beforeOut {
				t.Fatalf("changed before refusing: %q", fos.text())
			}
		})
	}
}

// A missing /etc/ssh (an image without sshd) is created; nothing else
// needs sshd.
func TestReidentifyNoSSH(t *testing.T) {
	c, _, root := identityServer(t)
	if err := os.RemoveAll(filepath.Join(root, "etc/ssh")); err != nil {
		t.Fatal(err)
	}
	id := testIdentity(t)
	if err := c.Reidentify(testCtx(t, 10*time.Second), id); err != nil {
		t.Fatal(err)
	}
	if data, mode := readFile(t, filepath.Join(root, "etc/ssh/ssh_host_ed25519_key")); data != string(id.HostKey) || mode != 0o600 {
		t.Fatalf("key %v", mode)
	}
}

func TestReidentifyInvalid(t *testing.T) {
	_, otherPub := testKey(t)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecBlock, _ := ssh.MarshalPrivateKey(ecKey, "")
	ecSigner, _ := ssh.NewSignerFromKey(ecKey)
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	encBlock, _ := ssh.MarshalPrivateKeyWithPassphrase(sk, "", []byte("secret"))
	encPub, _ := ssh.NewPublicKey(sk.Public())

	cases := []struct {
		name, want string
		mut        func(*Identity)
	}{
		{"hostname upper", "hostname", func(id *Identity) { id.Hostname = "VM-B" }},
		{"hostname leading dash", "hostname", func(id *Identity) { id.Hostname = "-vm" }},
		{"hostname trailing dash", "hostname", func(id *Identity) { id.Hostname = "vm-" }},
		{"hostname 33", "hostname", func(id *Identity) { id.Hostname = strings.Repeat("a", 33) }},
		{"hostname empty", "hostname", func(id *Identity) { id.Hostname = "" }},
		{"hostname newline", "hostname", func(id *Identity) { id.Hostname = "vm\nb" }},
		{"machine id upper", "machine id", func(id *Identity) { id.MachineID = strings.ToUpper(id.MachineID) }},
		{"machine id short", "machine id", func(id *Identity) { id.MachineID = id.MachineID[:31] }},
		{"machine id zero", "machine id", func(id *Identity) { id.MachineID = strings.Repeat("0", 32) }},
		{"interface slash", "interface", func(id *Identity) { id.Interface = "eth0/x" }},
		{"interface dots", "interface", func(id *Identity) { id.Interface = ".." }},
		{"interface long", "interface", func(id *Identity) { id.Interface = "eth0123456789abc" }},
		{"interface empty", "interface", func(id *Identity) { id.Interface = "" }},
		{"mac multicast", "mac", func(id *Identity) { id.MAC = "03:00:ac:10:00:05" }},
		{"mac broadcast", "mac", func(id *Identity) { id.MAC = "ff:ff:ff:ff:ff:ff" }},
		{"mac zero", "mac", func(id *Identity) { id.MAC = "00:00:00:00:00:00" }},
		{"mac eui64", "mac", func(id *Identity) { id.MAC = "02:00:ac:10:00:05:00:01" }},
		{"mac junk", "mac", func(id *Identity) { id.MAC = "eth0" }},
		{"address v6", "address", func(id *Identity) { id.Address = "fd00::5/64" }},
		{"address bare", "address", func(id *Identity) { id.Address = "172.16.0.5" }},
		{"address network", "address", func(id *Identity) { id.Address = "172.16.0.0/24" }},
		{"address broadcast", "address", func(id *Identity) { id.Address = "172.16.0.255/24" }},
		{"address /31", "address", func(id *Identity) { id.Address = "172.16.0.5/31" }},
		{"address /0", "address", func(id *Identity) { id.Address = "172.16.0.5/0" }},
		{"address loopback", "address", func(id *Identity) { id.Address = "127.0.0.5/8"; id.Gateway = "127.0.0.1" }},
		{"gateway outside", "gateway", func(id *Identity) { id.Gateway = "172.16.1.1" }},
		{"gateway is address", "gateway", func(id *Identity) { id.Gateway = "172.16.0.5" }},
		{"gateway broadcast", "gateway", func(id *Identity) { id.Gateway = "172.16.0.255" }},
		{"gateway v6", "gateway", func(id *Identity) { id.Gateway = "fd00::1" }},
		{"gateway empty", "gateway", func(id *Identity) { id.Gateway = "" }},
		{"key garbage", "host key", func(id *Identity) { id.HostKey = []byte("not a key") }},
		{"key empty", "host key", func(id *Identity) { id.HostKey = nil }},
		{"key huge", "host key", func(id *Identity) { id.HostKey = make([]byte, maxHostKey+1) }},
		{"key ecdsa", "is not ssh-ed25519", func(id *Identity) {
			id.HostKey, id.HostKeyPub = pem.EncodeToMemory(ecBlock), ssh.MarshalAuthorizedKey(ecSigner.PublicKey())
		}},
		{"key encrypted", "host key", func(id *Identity) {
			id.HostKey, id.HostKeyPub = pem.EncodeToMemory(encBlock), ssh.MarshalAuthorizedKey(encPub)
		}},
		{"key trailing junk", "host key", func(id *Identity) { id.HostKey = append(id.HostKey, "junk"...) }},
		{"pub mismatch", "does not match", func(id *Identity) { id.HostKeyPub = otherPub }},
		{"pub two lines", "host public key", func(id *Identity) { id.HostKeyPub = append(id.HostKeyPub, id.HostKeyPub...) }},
		{"pub garbage", "host public key", func(id *Identity) { id.HostKeyPub = []byte("ssh-ed25519 !!!") }},
		{"time zero", "time", func(id *Identity) { id.Time = time.Time{} }},
		{"time 1970", "time", func(id *Identity) { id.Time = time.Unix(5, 0) }},
		{"seed short", "seed of 31 bytes", func(id *Identity) { id.Seed = id.Seed[:31] }},
		{"seed long", "seed of 513 bytes", func(id *Identity) { id.Seed = make([]byte, 513) }},
		{"seed none", "seed of 0 bytes", func(id *Identity) { id.Seed = nil }},
	}
	c, fos, root := identityServer(t)
	before := tree(t, root)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := testIdentity(t)
			tc.mut(&id)
			// The client refuses it before sending.
			err := c.Reidentify(testCtx(t, 10*time.Second), id)
			if !errors.Is(err, ErrInvalidIdentity) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("client: err = %v, want %q", err, tc.want)
			}
			// The agent refuses it too, when a host sends it anyway.
			err = rawIdentity(t, c, &id)
			if err == nil || !strings.Contains(err.Error(), "agent identity: identity: invalid identity: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("agent: err = %v, want %q", err, tc.want)
			}
		})
	}
	err = rawIdentity(t, c, nil)
	if err == nil || !strings.Contains(err.Error(), "no identity in the request") {
		t.Fatalf("no identity: err = %v", err)
	}
	if fos.text() != "" || tree(t, root) != before {
		t.Fatalf("changed by invalid requests: %q", fos.text())
	}
}

// rawIdentity sends an identity request past the client's checks.
func rawIdentity(t *testing.T, c *Client, id *Identity) error {
	t.Helper()
	cl, err := c.open(testCtx(t, 10*time.Second), request{Op: opIdentity, Identity: id})
	if err != nil {
		return err
	}
	defer cl.close()
	return cl.result(nil, nil, nil)
}

func TestReidentifyOversized(t *testing.T) {
	c, fos, root := identityServer(t)
	before := tree(t, root)
	ctx := testCtx(t, 10*time.Second)

	// Within a request frame, over the identity's bounds: refused by the agent.
	id := testIdentity(t)
	id.Seed = make([]byte, 40<<10)
	if err := rawIdentity(t, c, &id); err == nil || !strings.Contains(err.Error(), "seed of 40960 bytes") {
		t.Fatalf("big seed: err = %v", err)
	}
	// Over a request frame: the client cannot send it...
	id.Seed = make([]byte, MaxControl)
	if err := c.Reidentify(ctx, id); !errors.Is(err, ErrInvalidIdentity) {
		t.Fatalf("client: err = %v", err)
	}
	if err := rawIdentity(t, c, &id); err == nil || !strings.Contains(err.Error(), "exceeds the 65536-byte limit") {
		t.Fatalf("client frame: err = %v", err)
	}
	// ...and the agent drops a stream that announces one, reading none of it.
	st, err := c.openStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b, _ := json.Marshal(request{Op: opIdentity, Identity: &id})
	if _, err := st.Write(append(header(frameRequest, uint32(len(b))), b...)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := newFrameReader(st).next(); err == nil {
		t.Fatal("the agent answered an oversized request")
	}
	if fos.text() != "" || tree(t, root) != before {
		t.Fatalf("changed by oversized requests: %q", fos.text())
	}
	// The session survives.
	if _, err := c.Info(ctx); err != nil {
		t.Fatal(err)
	}
}

// A failing step is named, and the steps after it are not taken.
func TestReidentifyStepFails(t *testing.T) {
	c, fos, root := identityServer(t)
	before := tree(t, root)
	fos.fail = map[string]error{"route": errors.New("network is unreachable")}
	err := c.Reidentify(testCtx(t, 10*time.Second), testIdentity(t))
	if err == nil || err.Error() != "agent identity: identity route: network is unreachable" {
		t.Fatalf("err = %v", err)
	}
	if got, want := fos.text(), "clock 2031-05-06T07:08:09.123456789Z\nrng 64 bytes credited, first a0\nmac eth0 02:00:ac:10:00:05\naddress eth0 172.16.0.5/24"; got != want {
		t.Fatalf("steps:\n%s\nwant:\n%s", got, want)
	}
	if tree(t, root) != before {
		t.Fatal("files written after a failed network step")
	}

	// A missing interface fails at the first network step.
	fos.fail, fos.journal = nil, nil
	id := testIdentity(t)
	id.Interface = "eth1"
	if err := c.Reidentify(testCtx(t, 10*time.Second), id); err == nil || !strings.HasPrefix(err.Error(), "agent identity: identity mac: link eth1") {
		t.Fatalf("err = %v", err)
	}
}

// fakeOldAgent answers the handshake with protocol version proto and every
// operation with "unknown operation"; it counts the streams opened.
func fakeOldAgent(t *testing.T, proto string) (*Client, *atomic.Int32) {
	var streams atomic.Int32
	c := fakeAgent(t, proto, "old", func(st *yamux.Stream) {
		streams.Add(1)
		_, p, err := newFrameReader(st).next()
		if err != nil {
			return
		}
		var req request
		_ = json.Unmarshal(p, &req)
		_ = (&frameWriter{w: st}).writeJSON(frameError, errorMsg{Message: fmt.Sprintf("unknown operation %q", req.Op)})
	})
	return c, &streams
}

func TestReidentifyOldAgent(t *testing.T) {
	// A 1.0 agent is not sent the identity (nor its private key).
	c, streams := fakeOldAgent(t, "1.0")
	err := c.Reidentify(testCtx(t, 10*time.Second), testIdentity(t))
	if !errors.Is(err, ErrAgentTooOld) || err.Error() != "agent identity: guest agent too old for identity (protocol 1.0)" {
		t.Fatalf("err = %v", err)
	}
	if n := streams.Load(); n != 0 {
		t.Fatalf("%d streams opened to a 1.0 agent", n)
	}
	// One that claims the version but lacks the operation says the same.
	c, _ = fakeOldAgent(t, "1.1")
	err = c.Reidentify(testCtx(t, 10*time.Second), testIdentity(t))
	if !errors.Is(err, ErrAgentTooOld) || err.Error() != "agent identity: guest agent too old for identity (protocol 1.1)" {
		t.Fatalf("err = %v", err)
	}
}

func TestRewriteHosts(t *testing.T) {
	for _, tc := range []struct{ name, old, want string }{
		{"empty", "", "127.0.0.1\tlocalhost\n127.0.1.1\tvm-b\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
		{"replaced in place", "127.0.0.1 localhost\n127.0.1.1 parent\n10.0.0.1 x\n", "127.0.0.1 localhost\n127.0.1.1\tvm-b\n10.0.0.1 x\n"},
		{"duplicates dropped", "127.0.1.1 a\n127.0.1.1 b\n", "127.0.1.1\tvm-b\n"},
		{"inserted after localhost", "# c\n127.0.0.1 localhost\n::1 localhost\n", "# c\n127.0.0.1 localhost\n127.0.1.1\tvm-b\n::1 localhost\n"},
		{"appended", "10.0.0.1 x", "10.0.0.1 x\n127.0.1.1\tvm-b\n"},
		{"not a prefix match", "127.0.1.10 other\n", "127.0.1.10 other\n127.0.1.1\tvm-b\n"},
	} {
		if got := string(rewriteHosts([]byte(tc.old), "vm-b")); got != tc.want {
			t.Errorf("%s: got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

// FuzzRewriteHosts: whatever the guest's /etc/hosts holds, the result has
// exactly one 127.0.1.1 line, ours, and every other line in order.
func FuzzRewriteHosts(f *testing.F) {
	f.Add([]byte(oldHosts))
	f.Add([]byte("127.0.1.1\n\n\n127.0.0.1"))
	f.Fuzz(func(t *testing.T, old []byte) {
		out := string(rewriteHosts(old, "vm-b"))
		var own, others []string
		for _, l := range strings.SplitAfter(out, "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[0] == hostnameLoopIP {
				own = append(own, l)
			} else if l != "" {
				others = append(others, strings.TrimSuffix(l, "\n"))
			}
		}
		if len(own) != 1 || own[0] != "127.0.1.1\tvm-b\n" {
			t.Fatalf("127.0.1.1 lines %q in %q", own, out)
		}
		if len(strings.TrimSpace(string(old))) == 0 {
			return
		}
		var kept []string
		for _, l := range strings.SplitAfter(string(old), "\n") {
			if f := strings.Fields(l); (len(f) == 0 || f[0] != hostnameLoopIP) && l != "" {
				kept = append(kept, strings.TrimSuffix(l, "\n"))
			}
		}
		if strings.Join(kept, "\n") != strings.Join(others, "\n") {
			t.Fatalf("lines changed: %q -> %q", old, out)
		}
	})
}

func TestHostKeyParser(t *testing.T) {
	pk, sk, _ := ed25519.GenerateKey(rand.Reader)
	blk, err := ssh.MarshalPrivateKey(sk, "a comment")
	if err != nil {
		t.Fatal(err)
	}
	sp, _ := ssh.NewPublicKey(pk)
	pub := ssh.MarshalAuthorizedKey(sp)
	if err := checkHostKey(pem.EncodeToMemory(blk), pub); err != nil {
		t.Fatalf("a key of x/crypto/ssh refused: %v", err)
	}
	// ssh-keygen's .pub carries a comment.
	withComment := append(bytes.TrimSuffix(pub, []byte("\n")), " root@vm-b\n"...)
	if err := checkHostKey(pem.EncodeToMemory(blk), withComment); err != nil {
		t.Fatalf("pub with a comment refused: %v", err)
	}
	// A private key whose seed does not derive the public key it carries.
	i := bytes.Index(blk.Bytes, sk)
	if i < 0 {
		t.Fatal("private key not found in the block")
	}
	bad := &pem.Block{Type: blk.Type, Bytes: bytes.Clone(blk.Bytes)}
	bad.Bytes[i] ^= 1
	if err := checkHostKey(pem.EncodeToMemory(bad), pub); err == nil || !strings.Contains(err.Error(), "does not derive") {
		t.Fatalf("tampered seed: err = %v", err)
	}
	// Check words that differ: what a wrong passphrase gives.
	bad.Bytes = bytes.Clone(blk.Bytes)
	j := bytes.LastIndex(bad.Bytes[:i], []byte(sshEd25519)) - 4 - 8
	bad.Bytes[j] ^= 1
	if err := checkHostKey(pem.EncodeToMemory(bad), pub); err == nil || !strings.Contains(err.Error(), "check words differ") {
		t.Fatalf("check words: err = %v", err)
	}
}

// FuzzHostKey: what the agent's parser accepts, x/crypto/ssh accepts too,
// as the same ed25519 key.
func FuzzHostKey(f *testing.F) {
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	blk, _ := ssh.MarshalPrivateKey(sk, "c")
	f.Add(blk.Bytes)
	f.Add([]byte(openSSHKeyMagic))
	f.Fuzz(func(t *testing.T, body []byte) {
		key := pem.EncodeToMemory(&pem.Block{Type: "OPENSSH PRIVATE KEY", Bytes: body})
		pub, err := parseOpenSSHEd25519(key)
		if err != nil {
			return
		}
		raw, err := ssh.ParseRawPrivateKey(key)
		if err != nil {
			t.Fatalf("accepted, x/crypto/ssh refuses: %v", err)
		}
		k, ok := raw.(*ed25519.PrivateKey)
		if !ok || !k.Public().(ed25519.PublicKey).Equal(pub) {
			t.Fatalf("accepted as %x, x/crypto/ssh reads %T", pub, raw)
		}
	})
}

// FuzzIdentityNames: the name checks are the documented patterns.
func FuzzIdentityNames(f *testing.F) {
	hostRE := regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)
	ifRE := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)
	idRE := regexp.MustCompile(`^[0-9a-f]{32}$`)
	for _, s := range []string{"vm-b", "-a", "a-", "eth0", "0123456789abcdef0123456789abcdef", strings.Repeat("a", 33), "a\n", ".x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if validHostname(s) != hostRE.MatchString(s) {
			t.Fatalf("hostname %q: %v", s, validHostname(s))
		}
		if validIfname(s) != ifRE.MatchString(s) {
			t.Fatalf("interface %q: %v", s, validIfname(s))
		}
		if validMachineID(s) != (idRE.MatchString(s) && strings.Trim(s, "0") != "") {
			t.Fatalf("machine id %q: %v", s, validMachineID(s))
		}
	})
}

func TestIdentityLogValue(t *testing.T) {
	id := testIdentity(t)
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "identity", id)
	if out := b.String(); strings.Contains(out, "PRIVATE") || !strings.Contains(out, "identity.hostname=vm-b") || !strings.Contains(out, "identity.seed_bytes=64") {
		t.Fatalf("logged %s", out)
	}
}
