package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/vmm"
)

// maxVsockReply bounds Firecracker's "OK <port>\n" answer; the line comes
// from the VMM, but the VMM runs with the guest's memory and is not trusted
// to keep it short.
const maxVsockReply = 32

// vsockHandshakeTimeout bounds CONNECT when ctx has no sooner deadline: a
// guest that does not listen makes Firecracker close the socket, so only a
// wedged VMM waits this long.
const vsockHandshakeTimeout = 5 * time.Second

// DialVsock opens a stream to port in the guest through Firecracker's hybrid
// vsock: connect to the unix socket, send "CONNECT <port>\n", read
// "OK <host port>\n". What follows is the guest's stream. The reply is read
// a byte at a time so none of the guest's first bytes are swallowed.
func DialVsock(ctx context.Context, uds string, port uint32) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", uds)
	if err != nil {
		return nil, fmt.Errorf("vsock %s: %w", uds, err)
	}
	dl := time.Now().Add(vsockHandshakeTimeout)
	if t, ok := ctx.Deadline(); ok && t.Before(dl) {
		dl = t
	}
	_ = c.SetDeadline(dl)
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		c.Close()
		return nil, fmt.Errorf("vsock %s: connect %d: %w", uds, port, err)
	}
	line, err := readLine(c, maxVsockReply)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("vsock %s: port %d: %w", uds, port, err)
	}
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "OK" {
		c.Close()
		return nil, fmt.Errorf("vsock %s: port %d: unexpected reply %q", uds, port, line)
	}
	if _, err := strconv.ParseUint(f[1], 10, 32); err != nil {
		c.Close()
		return nil, fmt.Errorf("vsock %s: port %d: unexpected reply %q", uds, port, line)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// readLine reads up to '\n' one byte at a time, at most max bytes.
func readLine(c net.Conn, max int) (string, error) {
	var b strings.Builder
	one := make([]byte, 1)
	for b.Len() < max {
		n, err := c.Read(one)
		if n == 1 {
			if one[0] == '\n' {
				return b.String(), nil
			}
			b.WriteByte(one[0])
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return "", fmt.Errorf("closed before the reply (no listener in the guest?)")
			}
			return "", err
		}
	}
	return "", fmt.Errorf("reply longer than %d bytes", max)
}

// DialAgent connects to the guest agent over the VM's vsock.
func (d *Driver) DialAgent(ctx context.Context, dir string) (net.Conn, error) {
	if d.VsockCID == 0 {
		return nil, fmt.Errorf("firecracker: no vsock device (VsockCID unset): %w", api.ErrNotRunning)
	}
	if d.Jailer != nil {
		// The jail's directory is the privileged side's; the daemon falls
		// back to SSH for jailed VMs until the launcher reports it.
		return nil, fmt.Errorf("firecracker: agent channel of a jailed vm: %w", errors.ErrUnsupported)
	}
	return DialVsock(ctx, filepath.Join(dir, VsockSocket), vmm.AgentVsockPort)
}
