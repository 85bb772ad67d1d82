package privileged

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/opid"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
)

// fakePriv keeps state (TAPs, rules per VM) and a log of the calls that
// reached it, so a refused call is visible as one that never arrived.
type fakePriv struct {
	mu    sync.Mutex
	taps  map[string]int // name -> owner uid
	rules map[string]string
	calls []string
}

func newFake() *fakePriv { return &fakePriv{taps: map[string]int{}, rules: map[string]string{}} }

func (f *fakePriv) rec(format string, a ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, a...))
}

func (f *fakePriv) Calls() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, "\n")
}

func (f *fakePriv) EnsureBridge(ctx context.Context) error { f.rec("ensure_bridge"); return nil }
func (f *fakePriv) CreateTap(ctx context.Context, name string, uid int) error {
	f.rec("create_tap %s %d", name, uid)
	f.mu.Lock()
	f.taps[name] = uid
	f.mu.Unlock()
	return nil
}
func (f *fakePriv) DeleteTap(ctx context.Context, name string) error {
	f.rec("delete_tap %s", name)
	f.mu.Lock()
	delete(f.taps, name)
	f.mu.Unlock()
	return nil
}
func (f *fakePriv) ReleaseTap(ctx context.Context, name string) error {
	f.rec("release_tap %s", name)
	return nil
}
func (f *fakePriv) PoolTaps(ctx context.Context) ([]string, error) {
	f.rec("pool_taps")
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for t := range f.taps {
		out = append(out, t)
	}
	sort.Strings(out)
	return out, nil
}
func (f *fakePriv) FlushNeigh(ctx context.Context, ip netip.Addr) error {
	f.rec("flush_neigh %s", ip)
	return nil
}
func (f *fakePriv) OpenTap(ctx context.Context, name string) (*os.File, error) {
	f.rec("open_tap %s", name)
	f.mu.Lock()
	_, ok := f.taps[name]
	f.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("tap %s: %w", name, api.ErrNotFound)
	}
	return os.Open(os.DevNull)
}
func (f *fakePriv) Apply(ctx context.Context, v hostnet.VMNet) error {
	f.rec("apply %s %s %s %s nat=%v", v.ID, v.IP, v.MAC, v.Tap, v.NAT)
	f.mu.Lock()
	f.rules[v.ID] = v.Tap
	f.mu.Unlock()
	return nil
}
func (f *fakePriv) Remove(ctx context.Context, id, tap string) error {
	f.rec("remove %s %s", id, tap)
	f.mu.Lock()
	delete(f.rules, id)
	f.mu.Unlock()
	return nil
}
func (f *fakePriv) Prune(ctx context.Context, keep map[string]string) error {
	f.rec("prune %d", len(keep))
	return nil
}
func (f *fakePriv) ListenDNS(ctx context.Context) (*hostnet.DNSConns, error) {
	f.rec("listen_dns")
	return hostnet.ListenDNS(ctx, "127.0.0.1:0")
}
func (f *fakePriv) RouteDNS(ctx context.Context) (bool, error) { f.rec("route_dns"); return false, nil }
func (f *fakePriv) RevertDNS(ctx context.Context) error        { f.rec("revert_dns"); return nil }

var testSubnet = netip.MustParsePrefix("172.30.9.0/24")

// syncBuf is a log sink the server writes to from its goroutines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startHelper serves a helper for owner on a socket in a temp dir (real
// transport, real SO_PEERCRED) and returns a client and its log.
func startHelper(t *testing.T, owner int, impl Privileged) (*Client, *syncBuf, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "helper.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	log := slog.New(opid.Handler(slog.NewJSONHandler(logs, nil)))
	srv := NewServer(log, Rules{Subnet: testSubnet, Owner: owner}, impl)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeListener(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return &Client{Path: path}, logs, path
}

func TestHelperServesValidCalls(t *testing.T) {
	f := newFake()
	c, logs, _ := startHelper(t, os.Getuid(), f)
	ctx := opid.NewContext(context.Background(), "op-test-1")
	ip := netip.MustParseAddr("172.30.9.7")
	v := hostnet.VMNet{ID: "0123456789ab", IP: ip, MAC: hostnet.MACForIP(ip), Tap: "bgr-p3", NAT: true}
	steps := []error{
		c.EnsureBridge(ctx),
		c.CreateTap(ctx, "bgr-p3", os.Getuid()),
		c.FlushNeigh(ctx, ip),
		c.Apply(ctx, v),
		c.Remove(ctx, v.ID, v.Tap),
		c.Remove(ctx, v.ID, ""),
		c.Prune(ctx, map[string]string{v.ID: "bgr-p3"}),
		c.ReleaseTap(ctx, "bgr-p3"),
		c.DeleteTap(ctx, "bgr-0123456789a"), // a legacy per-VM TAP may still be removed
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	f2, err := c.OpenTap(ctx, "bgr-p9")
	if !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("open of a missing tap: %v %v, want ErrNotFound through the wire", f2, err)
	}
	taps, err := c.PoolTaps(ctx)
	if err != nil || strings.Join(taps, ",") != "bgr-p3" {
		t.Fatalf("pool taps %v %v", taps, err)
	}
	fd, err := c.OpenTap(ctx, "bgr-p3")
	if err != nil {
		t.Fatal(err)
	}
	fd.Close()
	conns, err := c.ListenDNS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The passed sockets are the bound ones: a query to the UDP one arrives.
	a := conns.UDP.LocalAddr().(*net.UDPAddr)
	s, err := net.DialUDP("udp4", nil, a)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = s.Write([]byte("x"))
	buf := make([]byte, 8)
	n, _, err := conns.UDP.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "x" {
		t.Fatalf("passed udp socket: %q %v", buf[:n], err)
	}
	s.Close()
	conns.UDP.Close()
	conns.TCP.Close()
	want := strings.Join([]string{
		"ensure_bridge", "create_tap bgr-p3 " + fmt.Sprint(os.Getuid()), "flush_neigh 172.30.9.7",
		"apply 0123456789ab 172.30.9.7 02:ba:ac:1e:09:07 bgr-p3 nat=true", "remove 0123456789ab bgr-p3",
		"remove 0123456789ab ", "prune 1", "release_tap bgr-p3", "delete_tap bgr-0123456789a",
		"open_tap bgr-p9", "pool_taps", "open_tap bgr-p3", "listen_dns"}, "\n")
	if got := f.Calls(); got != want {
		t.Fatalf("calls:\n%s\nwant:\n%s", got, want)
	}
	// One line per call, with the forwarded op id and a duration.
	var completed int
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		switch rec["msg"] {
		case "helper rpc completed", "helper rpc failed":
			completed++
			if rec["op_id"] != "op-test-1" || rec["duration_ms"] == nil || rec["op"] == nil {
				t.Errorf("log line without op id/duration/op: %s", line)
			}
		}
	}
	if completed != 13 {
		t.Errorf("%d helper rpc lines for 13 calls:\n%s", completed, logs.String())
	}
}

// TestHelperRefusesOutOfRange: every verb with an argument outside banger's
// rules is refused before it reaches the implementation, and the reason is
// logged.
// launch calls launch_jailer with a valid request changed by mod.
func launch(c *Client, mod func(*firecracker.JailRequest)) error {
	q := firecracker.JailRequest{ID: "0123456789ab", UID: os.Getuid(), VCPU: 2, MemoryMiB: 512, Links: []firecracker.JailLink{
		{Src: "/home/o/.local/share/banger/vmlinux", Dst: firecracker.JailKernel, ReadOnly: true},
		{Src: "/home/o/.local/share/banger/vms/0123456789ab/root.ext4", Dst: firecracker.JailDiskName(0)},
	}}
	mod(&q)
	_, err := c.LaunchJailer(context.Background(), q)
	return err
}

func TestHelperRefusesOutOfRange(t *testing.T) {
	f := newFake()
	c, logs, _ := startHelper(t, os.Getuid(), f)
	ctx := context.Background()
	ip := netip.MustParseAddr("172.30.9.7")
	good := hostnet.VMNet{ID: "0123456789ab", IP: ip, MAC: hostnet.MACForIP(ip), Tap: "bgr-p3"}
	with := func(mod func(*hostnet.VMNet)) hostnet.VMNet { v := good; mod(&v); return v }
	cases := []struct {
		name string
		call func() error
		why  string
	}{
		{"create foreign link", func() error { return c.CreateTap(ctx, "eth0", os.Getuid()) }, "not a pooled banger tap"},
		{"create legacy name", func() error { return c.CreateTap(ctx, "bgr-abc", os.Getuid()) }, "not a pooled banger tap"},
		{"create padded index", func() error { return c.CreateTap(ctx, "bgr-p01", os.Getuid()) }, "not a pooled banger tap"},
		{"create beyond the pool", func() error { return c.CreateTap(ctx, "bgr-p4096", os.Getuid()) }, "beyond the pool"},
		{"create for another uid", func() error { return c.CreateTap(ctx, "bgr-p1", os.Getuid()+4242) }, "serves uid"},
		{"open the bridge", func() error { _, err := c.OpenTap(ctx, "banger0"); return err }, "not a pooled banger tap"},
		{"open host link", func() error { _, err := c.OpenTap(ctx, "lo"); return err }, "not a pooled banger tap"},
		{"delete host link", func() error { return c.DeleteTap(ctx, "eth0") }, "not a banger tap"},
		{"delete bridge", func() error { return c.DeleteTap(ctx, "banger0") }, "not a banger tap"},
		{"release host link", func() error { return c.ReleaseTap(ctx, "wlan0") }, "not a banger tap"},
		{"flush outside subnet", func() error { return c.FlushNeigh(ctx, netip.MustParseAddr("10.0.0.1")) }, "outside the subnet"},
		{"flush gateway", func() error { return c.FlushNeigh(ctx, netip.MustParseAddr("172.30.9.1")) }, "gateway"},
		{"apply ip outside subnet", func() error {
			o := netip.MustParseAddr("192.168.1.7")
			return c.Apply(ctx, with(func(v *hostnet.VMNet) { v.IP, v.MAC = o, hostnet.MACForIP(o) }))
		}, "outside the subnet"},
		{"apply broadcast", func() error {
			o := netip.MustParseAddr("172.30.9.255")
			return c.Apply(ctx, with(func(v *hostnet.VMNet) { v.IP, v.MAC = o, hostnet.MACForIP(o) }))
		}, "broadcast"},
		{"apply ipv6", func() error {
			return c.Apply(ctx, with(func(v *hostnet.VMNet) { v.IP = netip.MustParseAddr("fd00::7") }))
		}, "want ipv4"},
		{"apply foreign mac", func() error {
			return c.Apply(ctx, with(func(v *hostnet.VMNet) { v.MAC = net.HardwareAddr{2, 0, 0, 0, 0, 1} }))
		}, "banger derives"},
		{"apply another vm's mac", func() error {
			return c.Apply(ctx, with(func(v *hostnet.VMNet) { v.MAC = hostnet.MACForIP(netip.MustParseAddr("172.30.9.8")) }))
		}, "banger derives"},
		{"apply bad id", func() error { return c.Apply(ctx, with(func(v *hostnet.VMNet) { v.ID = "x\" accept" })) }, "vm id"},
		{"apply name as id", func() error { return c.Apply(ctx, with(func(v *hostnet.VMNet) { v.ID = "devbox" })) }, "vm id"},
		{"apply foreign tap", func() error { return c.Apply(ctx, with(func(v *hostnet.VMNet) { v.Tap = "eth0" })) }, "not a pooled banger tap"},
		{"remove bad id", func() error { return c.Remove(ctx, "../../x", "bgr-p1") }, "vm id"},
		{"remove foreign tap", func() error { return c.Remove(ctx, "0123456789ab", "docker0") }, "not a banger tap"},
		{"prune bad id", func() error { return c.Prune(ctx, map[string]string{"ABC": "bgr-p1"}) }, "vm id"},
		{"prune foreign tap", func() error { return c.Prune(ctx, map[string]string{"0123456789ab": "veth1"}) }, "not a banger tap"},
		{"jail bad id", func() error { return launch(c, func(q *firecracker.JailRequest) { q.ID = "../../etc" }) }, "vm id"},
		{"jail another uid", func() error { return launch(c, func(q *firecracker.JailRequest) { q.UID = os.Getuid() + 4242 }) }, "serves uid"},
		{"jail 33 vcpus", func() error { return launch(c, func(q *firecracker.JailRequest) { q.VCPU = 33 }) }, "jail vcpu"},
		{"jail 2 TiB", func() error { return launch(c, func(q *firecracker.JailRequest) { q.MemoryMiB = 2 << 20 }) }, "jail memory"},
		{"jail relative src", func() error {
			return launch(c, func(q *firecracker.JailRequest) { q.Links[1].Src = "disk.img" })
		}, "clean absolute path"},
		{"jail dotdot src", func() error {
			return launch(c, func(q *firecracker.JailRequest) { q.Links[1].Src = "/home/o/.local/../../../etc/shadow" })
		}, "clean absolute path"},
		{"jail dst outside layout", func() error {
			return launch(c, func(q *firecracker.JailRequest) { q.Links[1].Dst = "/dev/kvm" })
		}, "jail layout"},
		{"jail dst escaping", func() error {
			return launch(c, func(q *firecracker.JailRequest) { q.Links[1].Dst = "/../../etc/passwd" })
		}, "jail layout"},
		{"jail dst twice", func() error {
			return launch(c, func(q *firecracker.JailRequest) { q.Links[1].Dst = firecracker.JailKernel })
		}, "jail layout"},
		{"jail no links", func() error { return launch(c, func(q *firecracker.JailRequest) { q.Links = nil }) }, "jail links"},
	}
	for _, tc := range cases {
		err := tc.call()
		if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s: %v, want ErrInvalid saying %q", tc.name, err, tc.why)
		}
	}
	if calls := f.Calls(); calls != "" {
		t.Fatalf("refused calls reached the implementation:\n%s", calls)
	}
	if n := strings.Count(logs.String(), `"refused":true`); n != len(cases) {
		t.Errorf("%d refusals logged for %d refused calls:\n%s", n, len(cases), logs.String())
	}
	if !strings.Contains(logs.String(), `"reason":"tap \"eth0\": not a pooled banger tap`) {
		t.Errorf("reason not logged:\n%s", logs.String())
	}
}

// TestHelperRefusesRawRequests: what a hand-written client could send.
func TestHelperRefusesRawRequests(t *testing.T) {
	f := newFake()
	_, logs, path := startHelper(t, os.Getuid(), f)
	for _, raw := range []string{
		`{"op":"run","args":{"cmd":"sh"}}`,
		`{"op":"create_tap","args":{"name":"bgr-p1","uid":0,"bridge":"eth0"}}`, // unknown field
		`{"op":"create_tap"}`,
		`not json`,
		`{"op":"open_tap","args":{"name":"bgr-p1"},"x":1}`,
		strings.Repeat("a", maxRequest+10),
	} {
		conn, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write([]byte(raw + "\n"))
		rep, _, err := readReply(conn.(*net.UnixConn))
		conn.Close()
		if err != nil || rep.Error == nil || rep.Error.Code != api.CodeInvalid {
			t.Errorf("%.60q: reply %+v %v, want invalid", raw, rep, err)
		}
	}
	if calls := f.Calls(); calls != "" {
		t.Fatalf("raw requests reached the implementation:\n%s", calls)
	}
	if !strings.Contains(logs.String(), `unknown verb \"run\"`) {
		t.Errorf("unknown verb not logged:\n%s", logs.String())
	}
}

// TestHelperRefusesOtherUID connects from a thread whose effective uid is
// not the owner's (setresuid on a locked OS thread; SO_PEERCRED records the
// connecting thread's credentials) and checks the refusal and its log line.
func TestHelperRefusesOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as another uid")
	}
	f := newFake()
	c, logs, path := startHelper(t, 0, f)
	// The socket is 0600 in production; open it up here so the refusal
	// tested is the peer-credential check, not the file mode.
	if err := os.Chmod(path, 0o777); err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(path); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const other = 65534
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Raw syscalls change only this thread (Go's Setresuid changes all).
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), other, ^uintptr(0)); e != 0 {
			errc <- fmt.Errorf("setresuid: %v", e)
			return // the locked thread exits with the goroutine
		}
		err := c.EnsureBridge(context.Background())
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			errc <- fmt.Errorf("restore uid: %v (thread discarded)", e)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	err := <-errc
	if !errors.Is(err, api.ErrPermission) || !strings.Contains(err.Error(), "uid 65534 is not the owner") {
		t.Fatalf("call as uid %d: %v, want permission denied", other, err)
	}
	if calls := f.Calls(); calls != "" {
		t.Fatalf("a call of another uid reached the implementation:\n%s", calls)
	}
	if !strings.Contains(logs.String(), `"msg":"helper refused connection","peer_uid":65534`) {
		t.Fatalf("refusal not logged:\n%s", logs.String())
	}
	// The owner still gets through.
	if err := c.EnsureBridge(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestClientUnreachable(t *testing.T) {
	c := &Client{Path: filepath.Join(t.TempDir(), "none.sock")}
	err := c.EnsureBridge(context.Background())
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "sudo banger system helper --owner") {
		t.Fatalf("no helper: %v", err)
	}
}
