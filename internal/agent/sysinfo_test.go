package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestInfo(t *testing.T) {
	c := pair(t, &Server{Version: "v0.0.1-test"})
	proto := fmt.Sprintf("%d.%d", ProtoMajor, ProtoMinor)
	if c.Version() != proto+" v0.0.1-test" {
		t.Fatalf("handshake version %q", c.Version())
	}
	info, err := c.Info(testCtx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	var u unix.Utsname
	_ = unix.Uname(&u)
	if info.Version != "v0.0.1-test" || info.Protocol != proto || info.Hostname != host ||
		info.Kernel != unix.ByteSliceToString(u.Release[:]) || info.Uptime <= 0 {
		t.Fatalf("info %+v", info)
	}
}

func TestStats(t *testing.T) {
	c := pair(t, &Server{})
	a, err := c.Stats(testCtx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// Burn some CPU so the second sample differs.
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	b, err := c.Stats(testCtx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if a.MemTotal < 1<<20 || a.MemAvailable == 0 || a.Root.Total == 0 || a.Root.Used == 0 || a.Home.Total == 0 ||
		a.CPU.total() == 0 || a.Uptime <= 0 || b.CPU.total() < a.CPU.total() {
		t.Fatalf("stats %+v then %+v", a, b)
	}
	if a.SSH == nil {
		t.Fatal("stats without the ssh connection count")
	}
	if p := CPUPercent(a.CPU, b.CPU); p < 0 || p > 100 {
		t.Fatalf("cpu %v%%", p)
	}
	if CPUPercent(b.CPU, a.CPU) != 0 {
		t.Fatal("out-of-order samples gave a CPU share")
	}
}

func TestCPUPercent(t *testing.T) {
	a := CPUTimes{User: 100, System: 50, Idle: 1000, IOWait: 10, Steal: 40}
	for _, tc := range []struct {
		name string
		d    CPUTimes
		want float64
	}{
		{"half busy", CPUTimes{User: 40, System: 10, Idle: 40, IOWait: 10}, 50},
		{"steal is not busy", CPUTimes{User: 10, Idle: 10, Steal: 80}, 50},
		{"only steal", CPUTimes{Steal: 100}, 0},
		{"idle", CPUTimes{Idle: 100}, 0},
	} {
		b := a
		b.User += tc.d.User
		b.System += tc.d.System
		b.Idle += tc.d.Idle
		b.IOWait += tc.d.IOWait
		b.Steal += tc.d.Steal
		if got := CPUPercent(a, b); got != tc.want {
			t.Errorf("%s: %v%%, want %v%%", tc.name, got, tc.want)
		}
	}
}

// TestSessionOutputAge: Stats reports how long ago a session last wrote
// output, from the newest session log.
func TestSessionOutputAge(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	if a := sessionOutputAge(filepath.Join(dir, "none"), now); a != NoSessionOutput {
		t.Fatalf("no directory: %d", a)
	}
	write := func(name string, data string, age time.Duration) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, now.Add(-age), now.Add(-age)); err != nil {
			t.Fatal(err)
		}
	}
	write("a.json", "{}", 0)   // a state file is not output
	write("b.log", "", 0)      // nor an empty log
	write("c.log.1", "old", 0) // nor a rotated segment
	if a := sessionOutputAge(dir, now); a != NoSessionOutput {
		t.Fatalf("no output: %d", a)
	}
	write("d.log", "x", 90*time.Second)
	write("e.log", "y", 42500*time.Millisecond)
	if a := sessionOutputAge(dir, now); a != 42 {
		t.Fatalf("age %d, want 42", a)
	}
	write("f.log", "z", -time.Hour) // dated in the future
	if a := sessionOutputAge(dir, now); a != 0 {
		t.Fatalf("age %d, want 0", a)
	}
	c := pair(t, &Server{Sessions: SessionConfig{StateDir: dir}})
	st, err := c.Stats(testCtx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if st.SessionOutputAge == nil || *st.SessionOutputAge != 0 {
		t.Fatalf("stats session output age %v", st.SessionOutputAge)
	}
}

func TestPorts(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	comm, _ := os.ReadFile("/proc/self/comm")
	want := []Port{
		{Proto: "tcp", Addr: "127.0.0.1", Port: l.Addr().(*net.TCPAddr).Port, Process: strings.TrimSpace(string(comm)), PID: os.Getpid()},
		{Proto: "udp", Addr: "127.0.0.1", Port: u.LocalAddr().(*net.UDPAddr).Port, Process: strings.TrimSpace(string(comm)), PID: os.Getpid()},
	}
	c := pair(t, &Server{})
	ports, err := c.Ports(testCtx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if !slices.Contains(ports, w) {
			t.Errorf("%+v missing from %+v", w, ports)
		}
	}
	// The client side of a connection is not listening.
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ports, _ = c.Ports(testCtx(t, 10*time.Second))
	for _, p := range ports {
		if p.Port == conn.LocalAddr().(*net.TCPAddr).Port && p.Proto == "tcp" {
			t.Errorf("connected socket listed: %+v", p)
		}
	}
}

func TestParseProcNet(t *testing.T) {
	tcp6 := "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0\n" +
		"   1: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0\n" +
		"   2: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 01 00000000:00000000 00:00000000 00000000     0        0 5 1\n" +
		"   3: garbage\n"
	got := parseProcNet([]byte(tcp6), "tcp", tcpListen)
	want := "::1 22 1234|127.0.0.1 80 99"
	var s []string
	for _, e := range got {
		s = append(s, e.addr.String()+" "+itoa(e.port)+" "+itoa(int(e.inode)))
	}
	if strings.Join(s, "|") != want {
		t.Fatalf("got %q want %q", strings.Join(s, "|"), want)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// eventConn records writes into a shared event log.
type eventConn struct {
	net.Conn
	log *eventLog
}

func (c *eventConn) Write(p []byte) (int, error) {
	c.log.add("write:" + string(p))
	return c.Conn.Write(p)
}

type eventLog struct {
	mu sync.Mutex
	ev []string
}

func (l *eventLog) add(e string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ev = append(l.ev, e)
}

func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.ev, " ")
}

func TestShutdown(t *testing.T) {
	events := &eventLog{}
	powered := make(chan struct{})
	srv := &Server{
		Sync:     func() { events.add("sync") },
		Poweroff: func() error { events.add("poweroff"); close(powered); return nil },
	}
	host, guest := socketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.ServeConn(ctx, &eventConn{Conn: guest, log: events})
	c, err := NewClient(testCtx(t, 10*time.Second), host, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	events.mu.Lock()
	mark := len(events.ev) // the handshake's writes
	events.mu.Unlock()
	if err := c.Shutdown(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-powered:
	case <-time.After(5 * time.Second):
		t.Fatal("poweroff not called")
	}
	// The result frame went out after the sync and before the poweroff.
	events.mu.Lock()
	ev := events.ev[mark:]
	events.mu.Unlock()
	var order []string
	var between string
	for _, e := range ev {
		switch {
		case e == "sync" || e == "poweroff":
			order = append(order, e)
		case len(order) == 1:
			between += strings.TrimPrefix(e, "write:")
		}
	}
	if strings.Join(order, " ") != "sync poweroff" || !strings.Contains(between, string(header(frameResult, 2))+"{}") {
		t.Fatalf("events %q", ev)
	}
}

// The agent counts established connections to local port 22 only, from both
// tables, and names at most MaxSSHPeers of them.
func TestCountSSH(t *testing.T) {
	hdr := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	tcp := hdr +
		"   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 11 1\n" + // listening
		"   1: 0A00001E:0016 0100001E:D431 01 00000000:00000000 00:00000000 00000000     0        0 12 1\n" + // ssh from 30.0.0.1:54321
		"   2: 0A00001E:0050 0100001E:D432 01 00000000:00000000 00:00000000 00000000     0        0 13 1\n" + // port 80
		"   3: 0A00001E:0016 0100001E:D433 06 00000000:00000000 00:00000000 00000000     0        0 14 1\n" + // TIME_WAIT
		"   4: garbage\n"
	tcp6 := hdr +
		"   0: 0000000000000000FFFF00000A00001E:0016 0000000000000000FFFF00000100001E:D434 01 00000000:00000000 00:00000000 00000000     0        0 15 1\n" +
		"   1: 00000000000000000000000001000000:0016 00000000000000000000000001000000:9C40 01 00000000:00000000 00:00000000 00000000     0        0 16 1\n"
	c := &SSHConns{}
	countSSH(c, []byte(tcp))
	countSSH(c, []byte(tcp6))
	if got := fmt.Sprintf("%d %v", c.Count, c.Peers); got != "3 [30.0.0.1:54321 30.0.0.1:54324 [::1]:40000]" {
		t.Fatalf("got %s", got)
	}
	many := hdr
	for i := range MaxSSHPeers + 5 {
		many += fmt.Sprintf("   %d: 0A00001E:0016 0100001E:%04X 01 0 0 0 0 0 %d 1\n", i, 1000+i, 100+i)
	}
	c = &SSHConns{}
	countSSH(c, []byte(many))
	if c.Count != MaxSSHPeers+5 || len(c.Peers) != MaxSSHPeers {
		t.Fatalf("count %d peers %d", c.Count, len(c.Peers))
	}
	if err := (Stats{SSH: c}).validate(); err != nil {
		t.Fatalf("the agent's own bounded reply is refused: %v", err)
	}
}
