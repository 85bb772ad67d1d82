package privileged

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/testenv"
)

// inNewNetns moves the test goroutine's locked thread into a fresh network
// namespace for the rest of the test.
func inNewNetns(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("restore netns: %v", err) // the thread stays locked and dies
			return
		}
		orig.Close()
		ns.Close()
		runtime.UnlockOSThread()
	})
}

// callVia runs call in a goroutine (the client side: a unix socket in the
// file system, any thread will do) and serves its one connection on this
// locked thread, which is in the test's namespace, as the helper would be.
func callVia(t *testing.T, ln *net.UnixListener, srv *Server, call func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- call() }()
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	srv.ServeConn(context.Background(), conn)
	return <-errc
}

// TestOpenTapPassesFD: the helper (root, real hostnet in a test netns) opens
// a pooled TAP and passes the fd; a frame written to the received fd comes
// out of the TAP, seen by a packet socket on it.
func TestOpenTapPassesFD(t *testing.T) {
	inNewNetns(t)
	lo, _ := netlink.LinkByName("lo")
	_ = netlink.LinkSetUp(lo)
	cfg := hostnet.Config{Subnet: testSubnet}
	path := filepath.Join(t.TempDir(), "helper.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	log := slog.New(slog.DiscardHandler)
	srv := NewServer(log, Rules{Subnet: testSubnet, Owner: os.Getuid()}, NewLocal(log, nil, cfg))
	c := &Client{Path: path}
	ctx := context.Background()
	if err := callVia(t, ln, srv, func() error { return c.EnsureBridge(ctx) }); err != nil {
		t.Fatal(err)
	}
	if err := callVia(t, ln, srv, func() error { return c.CreateTap(ctx, "bgr-p0", os.Getuid()) }); err != nil {
		t.Fatal(err)
	}
	var tapf *os.File
	if err := callVia(t, ln, srv, func() (err error) { tapf, err = c.OpenTap(ctx, "bgr-p0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer tapf.Close()
	// A TAP that does not exist is not created by the open.
	if err := callVia(t, ln, srv, func() error { f, err := c.OpenTap(ctx, "bgr-p7"); f.Close(); return err }); err == nil {
		t.Fatal("open of a missing tap succeeded")
	}
	if _, err := netlink.LinkByName("bgr-p7"); err == nil {
		t.Fatal("open created bgr-p7")
	}

	link, err := netlink.LinkByName("bgr-p0")
	if err != nil {
		t.Fatal(err)
	}
	sock, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	if err := unix.Bind(sock, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: link.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	_ = unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})

	payload := []byte("banger-fd-passing-test")
	frame := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0xba, 0xac, 0x1e, 0x09, 0x07, 0x88, 0xb5}, payload...)
	vnetHdr := make([]byte, 10) // IFF_VNET_HDR: a zero virtio_net_hdr first
	if _, err := tapf.Write(append(vnetHdr, frame...)); err != nil {
		t.Fatalf("write to the passed tap fd: %v", err)
	}
	buf := make([]byte, 2048)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(sock, buf, 0)
		if err != nil {
			t.Fatalf("no frame on bgr-p0: %v", err)
		}
		if bytes.Equal(buf[:n], frame) {
			return
		}
	}
	t.Fatal("the frame written to the fd never showed up on the tap")
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
