package daemon

import (
	"context"
	"fmt"
	"io"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
)

// registerSession installs vm.session.*.
func (dm *Daemon) registerSession(srv *rpc.Server) {
	srv.Handle(api.MethodVMSessionStart, dm.sessionStart)
	srv.Handle(api.MethodVMSessionList, dm.sessionList)
	srv.Handle(api.MethodVMSessionLogs, dm.sessionLogs)
	srv.Handle(api.MethodVMSessionAttach, dm.sessionAttach)
	srv.Handle(api.MethodVMSessionSend, dm.sessionSend)
	srv.Handle(api.MethodVMSessionKill, dm.sessionKill)
}

func (dm *Daemon) sessionStart(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.SessionStartParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Name == "" {
		return nil, fmt.Errorf("name is required: %w", api.ErrInvalid)
	}
	if len(p.Argv) == 0 && p.Command == "" {
		return nil, fmt.Errorf("a command is required: %w", api.ErrInvalid)
	}
	return dm.d.VMs.SessionStart(ctx, p)
}

func (dm *Daemon) sessionList(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	return dm.d.VMs.SessionList(ctx, n)
}

// sessionParams decodes params naming a VM and one of its sessions.
func sessionParams(c *rpc.Call) (api.SessionParams, error) {
	var p api.SessionParams
	if err := c.Decode(&p); err != nil {
		return p, err
	}
	if p.Name == "" || p.Session == "" {
		return p, fmt.Errorf("vm and session names are required: %w", api.ErrInvalid)
	}
	return p, nil
}

func (dm *Daemon) sessionLogs(ctx context.Context, c *rpc.Call) (any, error) {
	p, err := sessionParams(c)
	if err != nil {
		return nil, err
	}
	return nil, dm.d.VMs.SessionLogs(ctx, p.Name, p.Session, p.Tail, p.Follow, c.Stdout())
}

// stdinPipe feeds the call's stdin frames to a pipe, closed at the client's
// EOF or when it goes; window changes go to resize when given. The caller
// closes the reader when the call ends, so a pump blocked on a write that
// nobody will read again returns (one goroutine per call otherwise leaks).
func stdinPipe(c *rpc.Call, resize chan<- agent.Winsize) *io.PipeReader {
	r, w := io.Pipe()
	go func() {
		defer w.Close()
		for in := range c.Input() {
			switch {
			case in.Resize != nil && resize != nil:
				select {
				case resize <- agent.Winsize{Cols: in.Resize.Cols, Rows: in.Resize.Rows}:
				default:
				}
			case len(in.Stdin) > 0:
				if _, err := w.Write(in.Stdin); err != nil {
					return
				}
			}
			if in.EOF {
				return
			}
		}
	}()
	return r
}

func (dm *Daemon) sessionAttach(ctx context.Context, c *rpc.Call) (any, error) {
	p, err := sessionParams(c)
	if err != nil {
		return nil, err
	}
	resize := make(chan agent.Winsize, 4)
	stdin := stdinPipe(c, resize)
	defer stdin.CloseWithError(io.ErrClosedPipe)
	req := agent.AttachRequest{Stdin: stdin, Stdout: c.Stdout(), Resize: resize}
	if p.Cols > 0 && p.Rows > 0 {
		req.Size = &agent.Winsize{Cols: p.Cols, Rows: p.Rows}
	}
	return dm.d.VMs.SessionAttach(ctx, p.Name, p.Session, req)
}

func (dm *Daemon) sessionSend(ctx context.Context, c *rpc.Call) (any, error) {
	p, err := sessionParams(c)
	if err != nil {
		return nil, err
	}
	stdin := stdinPipe(c, nil)
	defer stdin.CloseWithError(io.ErrClosedPipe)
	return nil, dm.d.VMs.SessionSend(ctx, p.Name, p.Session, stdin, p.EOF)
}

func (dm *Daemon) sessionKill(ctx context.Context, c *rpc.Call) (any, error) {
	p, err := sessionParams(c)
	if err != nil {
		return nil, err
	}
	return nil, dm.d.VMs.SessionKill(ctx, p.Name, p.Session, p.Signal)
}
