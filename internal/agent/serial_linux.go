package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// Guest transports.
const (
	SerialPortName = "banger.agent" // virtio-serial port name (QEMU)
	VsockPort      = 1024           // AF_VSOCK port (Firecracker)
)

// SerialPort serves the agent on a virtio-serial port. The guest has no
// udev: the port is found by its name in sysfs, and devtmpfs names the device
// after the sysfs directory (/dev/vport0p1).
type SerialPort struct {
	Name   string        // port name; SerialPortName when empty
	SysDir string        // "/sys/class/virtio-ports" when empty
	DevDir string        // "/dev" when empty
	Poll   time.Duration // wait between checks for the host; 50ms when zero
	Log    *slog.Logger
}

func (p *SerialPort) defaults() (name, sysDir, devDir string, poll time.Duration) {
	name, sysDir, devDir, poll = p.Name, p.SysDir, p.DevDir, p.Poll
	if name == "" {
		name = SerialPortName
	}
	if sysDir == "" {
		sysDir = "/sys/class/virtio-ports"
	}
	if devDir == "" {
		devDir = "/dev"
	}
	if poll == 0 {
		poll = 50 * time.Millisecond
	}
	return
}

// ErrNoPort is a guest without the agent's virtio-serial port.
var ErrNoPort = errors.New("agent serial port not found")

// Find returns the device path of the port.
func (p *SerialPort) Find() (string, error) {
	name, sysDir, devDir, _ := p.defaults()
	dirs, err := os.ReadDir(sysDir)
	if err != nil && !os.IsNotExist(err) {
		return "", err
	}
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(sysDir, d.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join(devDir, d.Name()), nil
		}
	}
	return "", fmt.Errorf("%w: no %q in %s", ErrNoPort, name, sysDir)
}

// Serve serves one host session after another until ctx ends. While the host
// end of a virtio-serial port is closed, reads return EOF at once, so each
// round waits for the host (poll(2) reports POLLHUP until it connects), then
// serves until the session ends (the host disconnected: EOF), and reopens the
// port. Stale bytes a new host finds are skipped by the handshake.
func (p *SerialPort) Serve(ctx context.Context, s *Server) error {
	_, _, _, poll := p.defaults()
	log := orDiscard(p.Log)
	var lastErr string
	for ctx.Err() == nil {
		err := p.serveOnce(ctx, s)
		if err != nil && err.Error() != lastErr {
			log.Warn("agent: serial session", "err", err)
		}
		if err != nil {
			lastErr = err.Error()
		} else {
			lastErr = ""
		}
		sleep(ctx, poll)
	}
	return ctx.Err()
}

func (p *SerialPort) serveOnce(ctx context.Context, s *Server) error {
	path, err := p.Find()
	if err != nil {
		sleep(ctx, time.Second) // the module may still be loading
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		sleep(ctx, time.Second)
		return err
	}
	wake(f)
	if err := p.waitHost(ctx, f); err != nil {
		_ = f.Close()
		return err
	}
	return s.ServeConn(ctx, &fileConn{File: f})
}

// waitHost returns once f is readable without a hang-up: the host is
// connected and has written (a HELLO, or stale bytes before one).
func (p *SerialPort) waitHost(ctx context.Context, f *os.File) error {
	_, _, _, poll := p.defaults()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	for ctx.Err() == nil {
		var revents int16
		var perr error
		if err := rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			_, perr = unix.Poll(fds, 200)
			revents = fds[0].Revents
		}); err != nil {
			return err
		}
		switch {
		case perr != nil && !errors.Is(perr, unix.EINTR):
			return fmt.Errorf("poll %s: %w", f.Name(), perr)
		case revents&unix.POLLNVAL != 0:
			return fmt.Errorf("poll %s: invalid", f.Name())
		case revents&(unix.POLLHUP|unix.POLLERR) != 0:
			sleep(ctx, poll)
		case revents&unix.POLLIN != 0:
			return nil
		}
	}
	return ctx.Err()
}

// WakeLine is what a (re)started agent writes on its port. A host still
// holding the session of the agent that died reads it as a yamux frame of
// the wrong version and ends that session at once, then redials with a
// HELLO; a host in the middle of a handshake skips it as junk.
const WakeLine = "\nBANGER-AGENT-WAKE\n"

// wake writes WakeLine if the host end is connected: while it is not, a
// write to the port blocks, so it is bounded by a short deadline.
func wake(f *os.File) {
	if err := f.SetWriteDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		return
	}
	_, _ = f.Write([]byte(WakeLine))
	_ = f.SetWriteDeadline(time.Time{})
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// fileConn is a character device as a net.Conn; the runtime poller gives it
// deadlines.
type fileConn struct{ *os.File }

type fileAddr string

func (a fileAddr) Network() string { return "file" }
func (a fileAddr) String() string  { return string(a) }

func (c *fileConn) LocalAddr() net.Addr  { return fileAddr(c.Name()) }
func (c *fileConn) RemoteAddr() net.Addr { return fileAddr(c.Name()) }

// ServeVsock accepts host connections on AF_VSOCK port VsockPort and serves
// each one concurrently until ctx ends.
func ServeVsock(ctx context.Context, s *Server, log *slog.Logger) error {
	log = orDiscard(log)
	l, err := vsock.Listen(VsockPort, nil)
	if err != nil {
		return fmt.Errorf("vsock listen %d: %w", VsockPort, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			log.Warn("agent: vsock accept", "err", err)
			sleep(ctx, 100*time.Millisecond)
			continue
		}
		go func() {
			if err := s.ServeConn(ctx, c); err != nil {
				log.Warn("agent: vsock session", "remote", c.RemoteAddr().String(), "err", err)
			}
		}()
	}
}
