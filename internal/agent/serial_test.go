package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/term"
)

// A pty pair stands in for the virtio-serial port: the slave is the guest's
// char device, the master the host's socket. Closing the master is the host
// disconnecting (the guest's reads then fail, as they return EOF on a port).
func fakePort(t *testing.T) (master *os.File, slavePath string) {
	t.Helper()
	m, s, err := openPTY()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := term.MakeRaw(int(s.Fd())); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); m.Close() })
	return m, s.Name()
}

func TestSerialFind(t *testing.T) {
	sys := t.TempDir()
	p := &SerialPort{SysDir: sys, DevDir: "/devx"}
	if _, err := p.Find(); !errors.Is(err, ErrNoPort) {
		t.Fatalf("empty sysfs: %v", err)
	}
	for dir, name := range map[string]string{"vport0p0": "org.qemu.guest_agent.0\n", "vport1p3": "banger.agent\n"} {
		os.Mkdir(filepath.Join(sys, dir), 0o755)
		os.WriteFile(filepath.Join(sys, dir, "name"), []byte(name), 0o644)
	}
	if got, err := p.Find(); err != nil || got != "/devx/vport1p3" {
		t.Fatalf("found %q %v", got, err)
	}
}

func TestSerialReconnect(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(sys, "vport0p1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sys, "vport0p1", "name"), []byte(SerialPortName+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(dev, "vport0p1")
	m1, s1 := fakePort(t)
	if err := os.Symlink(s1, node); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- (&SerialPort{SysDir: sys, DevDir: dev, Poll: 10 * time.Millisecond}).Serve(ctx, &Server{Version: "serial"})
	}()
	defer func() {
		cancel()
		select {
		case <-served:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	}()

	c1, err := NewClient(testCtx(t, 10*time.Second), &fileConn{File: m1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Info(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}

	// The device node now leads to a port holding stale bytes from before
	// the next host connects; then the first host goes away.
	m2, s2 := fakePort(t)
	if err := os.Remove(node); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(s2, node); err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Write(junk(1500)); err != nil {
		t.Fatal(err)
	}
	c1.Close()
	select {
	case <-c1.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session 1 did not end")
	}

	c2, err := NewClient(testCtx(t, 10*time.Second), &fileConn{File: m2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	info, err := c2.Info(testCtx(t, 10*time.Second))
	if err != nil || info.Version != "serial" {
		t.Fatalf("session 2: %+v %v", info, err)
	}
	code, err := c2.Exec(testCtx(t, 10*time.Second), ExecRequest{Command: "exit 5"})
	if err != nil || code != 5 {
		t.Fatalf("exec over session 2: %d %v", code, err)
	}
}
