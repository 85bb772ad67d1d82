package privileged

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/opid"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
)

// Client talks to the helper's socket: one connection per call, so a
// helper restart costs nothing but the calls in flight.
type Client struct {
	Path string
}

var _ Privileged = (*Client)(nil)

// ErrUnreachable is wrapped when no helper answers on the socket.
var ErrUnreachable = errors.New("banger helper not reachable")

func (c *Client) call(ctx context.Context, op string, args, result any) ([]*os.File, error) {
	req := request{Op: op, OpID: opid.FromContext(ctx)}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return nil, err
		}
		req.Args = b
	}
	line, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return nil, fmt.Errorf("%w at %s (%v): start it as root with `sudo banger system helper --owner %s`, or run bangerd as root for the all-in-one mode: %w",
			ErrUnreachable, c.Path, err, currentUser(), api.ErrNotRunning)
	}
	conn := nc.(*net.UnixConn)
	defer conn.Close()
	deadline := time.Now().Add(callTimeout + 5*time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if _, werr := conn.Write(append(line, '\n')); werr != nil {
		// A refused peer is answered and closed before its request is read:
		// the answer says why, the broken pipe does not.
		if rep, files, err := readReply(conn); err == nil && rep.Error != nil {
			closeAll(files)
			return nil, fmt.Errorf("helper %s: %w", op, rep.Error)
		}
		return nil, fmt.Errorf("helper %s: %w", op, werr)
	}
	rep, files, err := readReply(conn)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("helper %s: %w", op, err)
	}
	if rep.Error != nil {
		closeAll(files)
		return nil, fmt.Errorf("helper %s: %w", op, rep.Error)
	}
	if len(files) != rep.FDs {
		closeAll(files)
		return nil, fmt.Errorf("helper %s: %d fds received, %d announced", op, len(files), rep.FDs)
	}
	if result != nil && len(rep.Result) > 0 {
		if err := json.Unmarshal(rep.Result, result); err != nil {
			closeAll(files)
			return nil, fmt.Errorf("helper %s: reply: %w", op, err)
		}
	}
	return files, nil
}

// readReply reads one reply line; fds arrive with its first bytes.
func readReply(conn *net.UnixConn) (reply, []*os.File, error) {
	var files []*os.File
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	var line []byte
	first := true
	for !bytes.Contains(line, []byte{'\n'}) {
		if len(line) > maxReply {
			closeAll(files)
			return reply{}, nil, fmt.Errorf("reply larger than %d bytes", maxReply)
		}
		var n, oobn int
		var err error
		if first {
			n, oobn, _, _, err = conn.ReadMsgUnix(buf, oob)
			first = false
			if oobn > 0 {
				fs, perr := parseRights(oob[:oobn])
				files = append(files, fs...)
				if perr != nil {
					closeAll(files)
					return reply{}, nil, perr
				}
			}
		} else {
			n, err = conn.Read(buf)
		}
		line = append(line, buf[:n]...)
		if err != nil {
			closeAll(files)
			return reply{}, nil, fmt.Errorf("read reply: %w", err)
		}
	}
	var rep reply
	if err := json.Unmarshal(line[:bytes.IndexByte(line, '\n')], &rep); err != nil {
		closeAll(files)
		return reply{}, nil, fmt.Errorf("reply: %w", err)
	}
	return rep, files, nil
}

func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "helper-fd"))
		}
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

func currentUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return fmt.Sprint(os.Getuid())
}

func (c *Client) do(ctx context.Context, op string, args any) error {
	_, err := c.call(ctx, op, args, nil)
	return err
}

func (c *Client) EnsureBridge(ctx context.Context) error { return c.do(ctx, opEnsureBridge, nil) }
func (c *Client) CreateTap(ctx context.Context, name string, uid int) error {
	return c.do(ctx, opCreateTap, tapArgs{Name: name, UID: uid})
}
func (c *Client) DeleteTap(ctx context.Context, name string) error {
	return c.do(ctx, opDeleteTap, tapArgs{Name: name})
}
func (c *Client) ReleaseTap(ctx context.Context, name string) error {
	return c.do(ctx, opReleaseTap, tapArgs{Name: name})
}
func (c *Client) PoolTaps(ctx context.Context) ([]string, error) {
	var out []string
	_, err := c.call(ctx, opPoolTaps, nil, &out)
	return out, err
}
func (c *Client) FlushNeigh(ctx context.Context, ip netip.Addr) error {
	return c.do(ctx, opFlushNeigh, ipArgs{IP: ip})
}
func (c *Client) OpenTap(ctx context.Context, name string) (*os.File, error) {
	files, err := c.call(ctx, opOpenTap, tapArgs{Name: name}, nil)
	if err != nil {
		return nil, err
	}
	if len(files) != 1 {
		closeAll(files)
		return nil, fmt.Errorf("helper open_tap: %d fds", len(files))
	}
	return files[0], nil
}
func (c *Client) Apply(ctx context.Context, v hostnet.VMNet) error {
	return c.do(ctx, opFWApply, vmNetToArgs(v))
}
func (c *Client) Remove(ctx context.Context, id, tap string) error {
	return c.do(ctx, opFWRemove, removeArgs{ID: id, Tap: tap})
}
func (c *Client) Prune(ctx context.Context, keep map[string]string) error {
	if keep == nil {
		keep = map[string]string{}
	}
	return c.do(ctx, opFWPrune, pruneArgs{Keep: keep})
}
func (c *Client) ListenDNS(ctx context.Context) (*hostnet.DNSConns, error) {
	files, err := c.call(ctx, opListenDNS, nil, nil)
	if err != nil {
		return nil, err
	}
	defer closeAll(files) // net.File* dup the fds
	if len(files) != 2 {
		return nil, fmt.Errorf("helper listen_dns: %d fds", len(files))
	}
	pc, err := net.FilePacketConn(files[0])
	if err != nil {
		return nil, fmt.Errorf("helper listen_dns: udp: %w", err)
	}
	ln, err := net.FileListener(files[1])
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("helper listen_dns: tcp: %w", err)
	}
	return &hostnet.DNSConns{UDP: pc, TCP: ln}, nil
}
func (c *Client) RouteDNS(ctx context.Context) (bool, error) {
	var ok bool
	_, err := c.call(ctx, opRouteDNS, nil, &ok)
	return ok, err
}
func (c *Client) RevertDNS(ctx context.Context) error { return c.do(ctx, opRevertDNS, nil) }

// LaunchJailer asks the helper to start Firecracker's jailer for one VM.
func (c *Client) LaunchJailer(ctx context.Context, q firecracker.JailRequest) (firecracker.JailResult, error) {
	var res firecracker.JailResult
	files, err := c.call(ctx, opLaunchJailer, q, &res)
	closeAll(files)
	return res, err
}
