package privileged

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/opid"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
)

const (
	// callTimeout bounds one helper call, reading the request included.
	callTimeout = 2 * time.Minute
	// maxConns is how many calls the helper serves at once; more are closed.
	maxConns = 32
)

// Server is the helper: it authorizes each connection by the peer's uid
// (only the owner), decodes one typed request, validates every argument
// with Rules and only then calls Impl.
type Server struct {
	log   *slog.Logger
	rules Rules
	impl  Privileged
	sem   chan struct{}

	// BeforeVerb, when set, runs before an authorized verb is dispatched.
	// Failure injection only (`banger system helper` sets it from
	// BANGER_HELPER_FAILPOINT to kill the helper at a chosen verb); nil in
	// production.
	BeforeVerb func(op string)
}

// NewServer returns a helper serving rules.Owner with impl doing the work.
func NewServer(log *slog.Logger, rules Rules, impl Privileged) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{log: log, rules: rules, impl: impl, sem: make(chan struct{}, maxConns)}
}

// PeerCred returns the uid and pid of the process at the other end of conn
// (SO_PEERCRED: the credentials it had when it connected).
func PeerCred(conn *net.UnixConn) (uid, pid int, err error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if cerr != nil {
		return 0, 0, cerr
	}
	return int(cred.Uid), int(cred.Pid), nil
}

// ServeConn serves the one request of conn on the calling goroutine and
// closes conn.
func (s *Server) ServeConn(ctx context.Context, conn *net.UnixConn) {
	defer conn.Close()
	start := time.Now()
	uid, pid, err := PeerCred(conn)
	if err != nil {
		s.log.Warn("helper refused connection", "reason", "peer credentials: "+err.Error())
		return
	}
	if uid != s.rules.Owner {
		reason := fmt.Sprintf("uid %d is not the owner (uid %d)", uid, s.rules.Owner)
		s.log.Warn("helper refused connection", "peer_uid", uid, "peer_pid", pid, "reason", reason)
		_ = writeReply(conn, reply{Error: &api.Error{Code: api.CodePermission, Message: "banger helper: " + reason}}, nil)
		return
	}
	_ = conn.SetDeadline(start.Add(callTimeout))
	req, err := readRequest(conn)
	if err != nil {
		s.log.Warn("helper rpc failed", "peer_pid", pid, "reason", err.Error())
		_ = writeReply(conn, reply{Error: &api.Error{Code: api.CodeOf(err), Message: err.Error()}}, nil)
		return
	}
	id := req.OpID
	if !opid.Valid(id) {
		id = opid.New()
	}
	cctx, cancel := context.WithTimeout(opid.NewContext(ctx, id), callTimeout)
	defer cancel()
	if s.BeforeVerb != nil {
		s.BeforeVerb(req.Op)
	}
	result, files, err := s.dispatch(cctx, req)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	attrs := []any{"op", req.Op, "peer_pid", pid, "duration_ms", time.Since(start).Milliseconds()}
	rep := reply{FDs: len(files)}
	if err == nil && result != nil {
		rep.Result, err = json.Marshal(result)
	}
	if err != nil {
		rep = reply{Error: &api.Error{Code: api.CodeOf(err), Message: err.Error(), OpID: id}}
		if errors.Is(err, api.ErrInvalid) {
			attrs = append(attrs, "refused", true)
		}
		s.log.WarnContext(cctx, "helper rpc failed", append(attrs, "reason", err.Error())...)
	} else {
		s.log.InfoContext(cctx, "helper rpc completed", attrs...)
	}
	// What is sent, not files: the deferred close must still see every fd.
	sent := files
	if rep.Error != nil {
		sent = nil
	}
	if werr := writeReply(conn, rep, sent); werr != nil {
		s.log.WarnContext(cctx, "helper reply", "op", req.Op, "err", werr)
	}
}

func readRequest(conn *net.UnixConn) (request, error) {
	line, err := bufio.NewReaderSize(io.LimitReader(conn, maxRequest+1), 4096).ReadBytes('\n')
	if err != nil {
		if len(line) > maxRequest {
			return request{}, refuse("request larger than %d bytes", maxRequest)
		}
		return request{}, fmt.Errorf("read request: %w", err)
	}
	var req request
	if err := strictDecode(line, &req); err != nil {
		return request{}, refuse("request: %v", err)
	}
	return req, nil
}

func strictDecode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func writeReply(conn *net.UnixConn, rep reply, files []*os.File) error {
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	n, _, err := conn.WriteMsgUnix(b, oob, nil)
	if err == nil && n < len(b) {
		_, err = conn.Write(b[n:])
	}
	return err
}

func (s *Server) dispatch(ctx context.Context, req request) (any, []*os.File, error) {
	r, p := s.rules, s.impl
	args := func(v any) error {
		if len(req.Args) == 0 {
			return refuse("%s: missing arguments", req.Op)
		}
		if err := strictDecode(req.Args, v); err != nil {
			return refuse("%s: arguments: %v", req.Op, err)
		}
		return nil
	}
	switch req.Op {
	case opEnsureBridge:
		return nil, nil, p.EnsureBridge(ctx)
	case opPoolTaps:
		taps, err := p.PoolTaps(ctx)
		return taps, nil, err
	case opCreateTap, opDeleteTap, opReleaseTap, opOpenTap:
		var a tapArgs
		if err := args(&a); err != nil {
			return nil, nil, err
		}
		switch req.Op {
		case opCreateTap:
			if err := errors.Join(r.PoolTap(a.Name), r.TapOwner(a.UID)); err != nil {
				return nil, nil, err
			}
			return nil, nil, p.CreateTap(ctx, a.Name, a.UID)
		case opOpenTap:
			if err := r.PoolTap(a.Name); err != nil {
				return nil, nil, err
			}
			f, err := p.OpenTap(ctx, a.Name)
			if err != nil {
				return nil, nil, err
			}
			return nil, []*os.File{f}, nil
		}
		if err := r.AnyTap(a.Name); err != nil {
			return nil, nil, err
		}
		if req.Op == opDeleteTap {
			return nil, nil, p.DeleteTap(ctx, a.Name)
		}
		return nil, nil, p.ReleaseTap(ctx, a.Name)
	case opFlushNeigh:
		var a ipArgs
		if err := args(&a); err != nil {
			return nil, nil, err
		}
		if err := r.GuestIP(a.IP); err != nil {
			return nil, nil, err
		}
		return nil, nil, p.FlushNeigh(ctx, a.IP)
	case opFWApply:
		var a vmNetArgs
		if err := args(&a); err != nil {
			return nil, nil, err
		}
		mac, err := a.mac()
		if err != nil {
			return nil, nil, refuse("mac %q: %v", a.MAC, err)
		}
		v := vmNetFromArgs(a, mac)
		if err := r.VMNet(v); err != nil {
			return nil, nil, err
		}
		return nil, nil, p.Apply(ctx, v)
	case opFWRemove:
		var a removeArgs
		if err := args(&a); err != nil {
			return nil, nil, err
		}
		if err := r.removeArgs(a.ID, a.Tap); err != nil {
			return nil, nil, err
		}
		return nil, nil, p.Remove(ctx, a.ID, a.Tap)
	case opFWPrune:
		var a pruneArgs
		if err := args(&a); err != nil {
			return nil, nil, err
		}
		for id, tap := range a.Keep {
			if err := r.removeArgs(id, tap); err != nil {
				return nil, nil, err
			}
		}
		return nil, nil, p.Prune(ctx, a.Keep)
	case opListenDNS:
		c, err := p.ListenDNS(ctx)
		if err != nil {
			return nil, nil, err
		}
		files, err := dnsFiles(c)
		return nil, files, err
	case opRouteDNS:
		ok, err := p.RouteDNS(ctx)
		return ok, nil, err
	case opRevertDNS:
		return nil, nil, p.RevertDNS(ctx)
	case opLaunchJailer:
		var a firecracker.JailRequest
		if err := args(&a); err != nil {
			return nil, nil, err
		}
		if err := r.JailRequest(a); err != nil {
			return nil, nil, err
		}
		jl, ok := p.(firecracker.Launcher)
		if !ok {
			return nil, nil, refuse("launch_jailer: not supported by this helper")
		}
		res, err := jl.LaunchJailer(ctx, a)
		return res, nil, err
	}
	return nil, nil, refuse("unknown verb %q", req.Op)
}

func (r Rules) removeArgs(id, tap string) error {
	if err := r.VMID(id); err != nil {
		return err
	}
	if tap == "" {
		return nil
	}
	return r.AnyTap(tap)
}

// dnsFiles turns bound sockets into files to pass (dup'ed), closing the conns.
func dnsFiles(c *hostnet.DNSConns) ([]*os.File, error) {
	defer c.UDP.Close()
	defer c.TCP.Close()
	u, ok := c.UDP.(*net.UDPConn)
	t, ok2 := c.TCP.(*net.TCPListener)
	if !ok || !ok2 {
		return nil, errors.New("dns sockets: unexpected types")
	}
	uf, err := u.File()
	if err != nil {
		return nil, err
	}
	tf, err := t.File()
	if err != nil {
		uf.Close()
		return nil, err
	}
	return []*os.File{uf, tf}, nil
}
