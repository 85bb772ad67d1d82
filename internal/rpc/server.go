package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/opid"
)

const (
	// requestTimeout bounds how long a connection may take to send its request.
	requestTimeout = 30 * time.Second
	// finalWriteTimeout bounds writing the final frame.
	finalWriteTimeout = 10 * time.Second
	// cancelGrace is how long writes may still block after a call's ctx ended.
	cancelGrace = 5 * time.Second
	// hangupPoll is how often a call checks whether its client is gone.
	hangupPoll = 100 * time.Millisecond
	// interruptWait bounds how long shutdown waits for interrupted calls to
	// return (their rollbacks have their own, shorter bounds).
	interruptWait = 2 * time.Minute
	// refuseTimeout bounds writing the busy frame to a refused connection.
	refuseTimeout = 100 * time.Millisecond
)

// MaxConns caps the connections a server holds at once (each may buffer a
// request frame and run a call). Beyond it, the oldest connection that has
// not sent its request yet is closed to make room, so idle connections
// cannot lock clients out; with none idle, the new one gets a busy error.
const MaxConns = 64

// errClientGone is the cancel cause of a call whose client disconnected.
var errClientGone = errors.New("client disconnected")

// Handler serves one method. The returned value is JSON-encoded as the
// result; the error is mapped to a wire code with api.CodeOf.
type Handler func(ctx context.Context, c *Call) (any, error)

// Server dispatches requests on a unix socket to registered handlers.
type Server struct {
	log      *slog.Logger
	allowUID int

	// ShutdownGrace is how long Serve lets in-flight calls (and the work
	// they detached) finish once its ctx ends, before interrupting them.
	// The listener is closed first, so no new connection arrives meanwhile.
	// Zero interrupts at once. Set it before Serve.
	ShutdownGrace time.Duration

	mu       sync.RWMutex
	handlers map[string]Handler

	connMu  sync.Mutex
	conns   map[*net.UnixConn]*connSlot // connections being served
	arrival uint64
}

// connSlot is a served connection's place under MaxConns.
type connSlot struct {
	seq  uint64 // arrival order
	idle bool   // its request has not been read yet
}

// admit counts conn against MaxConns, closing the oldest idle connection
// when full. It reports false when every slot runs a call.
func (s *Server) admit(conn *net.UnixConn) bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.conns == nil {
		s.conns = map[*net.UnixConn]*connSlot{}
	}
	if len(s.conns) >= MaxConns {
		var oldest *net.UnixConn
		for c, sl := range s.conns {
			if sl.idle && (oldest == nil || sl.seq < s.conns[oldest].seq) {
				oldest = c
			}
		}
		if oldest == nil {
			return false
		}
		// Its goroutine sees the read fail and returns; the slot is free now.
		delete(s.conns, oldest)
		oldest.Close()
	}
	s.arrival++
	s.conns[conn] = &connSlot{seq: s.arrival, idle: true}
	return true
}

// busy marks conn as past its request (no longer evictable); it reports
// false if conn was evicted meanwhile.
func (s *Server) busy(conn *net.UnixConn) bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	sl, ok := s.conns[conn]
	if ok {
		sl.idle = false
	}
	return ok
}

// release frees conn's slot (a no-op after an eviction).
func (s *Server) release(conn *net.UnixConn) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	delete(s.conns, conn)
}

// active is the number of connections being served (for tests).
func (s *Server) active() int {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	return len(s.conns)
}

// refuse answers a connection over the cap with a busy error and closes it.
func (s *Server) refuse(conn *net.UnixConn) {
	defer conn.Close()
	id := opid.New()
	_ = conn.SetWriteDeadline(time.Now().Add(refuseTimeout))
	_ = (&frameWriter{conn: conn}).write(api.Response{OpID: id, Done: true, Error: &api.Error{
		Code: api.CodeBusy, OpID: id,
		Message: fmt.Sprintf("server busy: %d calls in progress (limit); retry later", MaxConns),
	}})
	s.log.Warn("rpc connection refused: too many in progress", "limit", MaxConns, "op_id", id)
}

// NewServer returns a server that accepts only peers running as allowUID.
// Its log records carry the op id of the request they belong to.
func NewServer(log *slog.Logger, allowUID int) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		log:      slog.New(opid.Handler(log.Handler())),
		allowUID: allowUID,
		handlers: map[string]Handler{},
	}
}

// Handle registers h for method. It panics on a malformed or duplicate
// method name: both are programming errors.
func (s *Server) Handle(method string, h Handler) {
	if !validMethod(method) {
		panic(fmt.Sprintf("rpc: malformed method name %q", method))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.handlers[method]; dup {
		panic(fmt.Sprintf("rpc: method %q registered twice", method))
	}
	s.handlers[method] = h
}

func (s *Server) handler(method string) (Handler, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h, ok := s.handlers[method]
	return h, ok
}

// Serve accepts connections until ctx is done or ln is closed; it closes ln
// (unlinking the socket) when ctx ends. It then shuts down: in-flight calls
// and the work they detached get ShutdownGrace to finish, then are
// interrupted (their ctx cancelled with cause api.ErrShuttingDown, their
// clients told "the daemon is shutting down; <method> was interrupted"), and
// Serve returns only once all of them have returned. It returns nil on those
// two normal ends. Call it once per Server.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	sv := &serving{stopping: ctx}
	// Calls outlive ctx by the grace period: they end with interrupt.
	sv.calls, sv.interrupt = context.WithCancelCause(context.WithoutCancel(ctx))
	defer s.shutdown(sv)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	// Close here too, synchronously: Serve returns only once the socket is
	// closed and unlinked, whichever of the two Close calls ran first.
	defer ln.Close()

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
				errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EINTR) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("rpc accept", "error", err, "retry_in", backoff.String())
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		backoff = 0
		uc, ok := conn.(*net.UnixConn)
		if !ok {
			conn.Close()
			s.log.Error("rpc: listener returned a non-unix connection")
			continue
		}
		if !s.admit(uc) {
			s.refuse(uc)
			continue
		}
		sv.wg.Add(1)
		go func() {
			defer sv.wg.Done()
			s.serveConn(sv, uc)
		}()
	}
}

// serving is one Serve's shutdown state, shared with its calls.
type serving struct {
	// stopping ends when shutdown begins: a request read after that is not run.
	stopping context.Context
	// calls is the parent of every call's ctx and of detached work; it ends
	// (cause api.ErrShuttingDown) when the grace period is over.
	calls     context.Context
	interrupt context.CancelCauseFunc
	// wg counts connections being served and detached work.
	wg sync.WaitGroup
}

// shutdown runs after the listener is closed: it waits ShutdownGrace for
// in-flight calls, then interrupts the rest and waits for them to return
// (rollbacks are bounded by the operations themselves; shutdown by
// interruptWait).
func (s *Server) shutdown(sv *serving) {
	drained := make(chan struct{})
	go func() { sv.wg.Wait(); close(drained) }()
	t := time.NewTimer(s.ShutdownGrace)
	defer t.Stop()
	select {
	case <-drained:
	case <-t.C:
		s.log.Warn("rpc shutdown: interrupting calls still in flight", "grace", s.ShutdownGrace.String())
		sv.interrupt(api.ErrShuttingDown)
		// Connections that never sent a request would hold the wait until
		// their request timeout.
		s.closeIdle()
		select {
		case <-drained:
		case <-time.After(interruptWait):
			// A call that ignores its ctx must not keep the process alive
			// forever; what it leaves is reconciled at the next start.
			s.log.Error("rpc shutdown: calls still running after being interrupted; exiting without them",
				"waited", interruptWait.String())
		}
	}
	sv.interrupt(nil)
}

// closeIdle closes the connections that have not sent their request yet.
func (s *Server) closeIdle() {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	for c, sl := range s.conns {
		if sl.idle {
			delete(s.conns, c)
			c.Close()
		}
	}
}

// interrupted is the wire error of a call the shutdown cut short (err says
// how it ended) or never started (err nil).
func interrupted(method string, err error) *api.Error {
	if err == nil {
		return &api.Error{Code: api.CodeShutdown, Message: fmt.Sprintf("%v; %s was not started", api.ErrShuttingDown, method)}
	}
	return &api.Error{Code: api.CodeShutdown, Message: fmt.Sprintf("%v; %s was interrupted: %v", api.ErrShuttingDown, method, err)}
}

func (s *Server) serveConn(sv *serving, conn *net.UnixConn) {
	ctx := sv.calls
	defer s.release(conn)
	defer conn.Close()
	start := time.Now()
	w := &frameWriter{conn: conn}

	cred, err := peerCred(conn)
	if err != nil {
		s.log.Error("rpc peer credentials", "error", err)
		return
	}
	if int(cred.Uid) != s.allowUID {
		id := opid.New()
		s.log.WarnContext(opid.NewContext(ctx, id), "rpc peer refused",
			"peer_uid", cred.Uid, "peer_pid", cred.Pid, "allowed_uid", s.allowUID)
		_ = w.write(api.Response{OpID: id, Done: true, Error: &api.Error{
			Code: api.CodePermission, OpID: id,
			Message: fmt.Sprintf("uid %d may not use this socket", cred.Uid),
		}})
		return
	}

	br := bufio.NewReaderSize(conn, 64<<10)
	_ = conn.SetReadDeadline(time.Now().Add(requestTimeout))
	frame, err := readFrame(br, MaxRequestFrame)
	_ = conn.SetReadDeadline(time.Time{})
	if !s.busy(conn) {
		if sv.calls.Err() == nil {
			s.log.Warn("rpc idle connection closed to make room", "limit", MaxConns)
		}
		return
	}
	if errors.Is(err, io.EOF) {
		return // connected and left: a liveness probe, e.g. Listen's stale check
	}
	var req api.Request
	if err == nil {
		req, err = decodeRequest(frame)
	} else if errors.Is(err, errFrameTooLarge) {
		err = fmt.Errorf("%w: request %v", api.ErrInvalid, err)
	} else {
		err = fmt.Errorf("%w: reading request: %v", api.ErrInvalid, err)
	}
	id := req.OpID
	if !opid.Valid(id) {
		id = opid.New()
	}
	ctx = opid.NewContext(ctx, id)
	if err != nil {
		s.finish(ctx, w, "", start, nil, err)
		return
	}
	if req.OpID != "" && req.OpID != id {
		s.log.WarnContext(ctx, "rpc ignored malformed forwarded op id", "method", req.Method)
	}
	s.log.InfoContext(ctx, "rpc start", "method", req.Method, "peer_pid", cred.Pid)
	if sv.stopping.Err() != nil {
		s.finish(ctx, w, req.Method, start, nil, interrupted(req.Method, nil))
		return
	}
	h, ok := s.handler(req.Method)
	if !ok {
		s.finish(ctx, w, req.Method, start, nil, &api.Error{
			Code: api.CodeUnknown, Message: fmt.Sprintf("unknown method %q", req.Method), OpID: id,
		})
		return
	}

	callCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Once the call is over (or the client gone), bounded writes only.
	stopGrace := context.AfterFunc(callCtx, func() {
		_ = conn.SetWriteDeadline(time.Now().Add(cancelGrace))
	})
	defer stopGrace()

	c := &Call{
		Method: req.Method, Params: req.Params, OpID: id,
		PeerUID: int(cred.Uid), PeerPID: int(cred.Pid),
		w: w, in: make(chan api.Input, 16),
		ctx: callCtx, sv: sv,
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		s.finish(ctx, w, req.Method, start, nil, fmt.Errorf("raw conn: %w", err))
		return
	}
	var bg sync.WaitGroup
	bg.Add(2)
	go func() { defer bg.Done(); readInputs(callCtx, cancel, br, raw, c.in) }()
	go func() { defer bg.Done(); watchHangup(callCtx, cancel, raw) }()

	result, herr := s.invoke(callCtx, h, c)
	if herr != nil && errors.Is(context.Cause(callCtx), api.ErrShuttingDown) {
		herr = interrupted(req.Method, herr)
	} else if herr != nil && (errors.Is(herr, context.Canceled) || errors.Is(herr, context.DeadlineExceeded)) {
		// Report why the call was cancelled (bad input frame, client gone) when we know.
		if cause := context.Cause(callCtx); cause != nil && !errors.Is(cause, context.Canceled) {
			herr = fmt.Errorf("%w: %w", herr, cause)
		}
	}
	s.finish(ctx, w, req.Method, start, result, herr)
	cancel(nil)
	conn.Close() // unblocks the input reader
	bg.Wait()
}

// invoke runs h, turning a panic into an internal error.
func (s *Server) invoke(ctx context.Context, h Handler, c *Call) (result any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.ErrorContext(ctx, "rpc handler panic", "method", c.Method,
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			result, err = nil, errors.New("internal error: handler panicked (see daemon log)")
		}
	}()
	return h(ctx, c)
}

// finish writes the final frame and logs the end of the request.
func (s *Server) finish(ctx context.Context, w *frameWriter, method string, start time.Time, result any, err error) {
	id := opid.FromContext(ctx)
	resp := api.Response{OpID: id, Done: true}
	if err == nil && result != nil {
		b, merr := json.Marshal(result)
		if merr != nil {
			err = fmt.Errorf("encode result: %w", merr)
		} else {
			resp.Result = b
		}
	}
	if err != nil {
		resp.Error = wireError(err, id)
	}
	werr := w.write(resp)

	attrs := []slog.Attr{
		slog.String("method", method),
		slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
	}
	level := slog.LevelInfo
	if resp.Error != nil {
		attrs = append(attrs, slog.String("code", string(resp.Error.Code)), slog.String("error", resp.Error.Message))
		if resp.Error.Code == api.CodeInternal {
			level = slog.LevelError
		}
	}
	if werr != nil {
		attrs = append(attrs, slog.String("write_error", werr.Error()))
	}
	s.log.LogAttrs(ctx, level, "rpc done", attrs...)
}

// wireError maps an error chain to its wire form. Cancellation has its own
// code; an *api.Error (e.g. relayed from the helper) keeps its code.
func wireError(err error, id string) *api.Error {
	var we *api.Error
	if errors.As(err, &we) && err == error(we) {
		e := *we
		e.OpID = id
		return &e
	}
	code := api.CodeOf(err)
	switch {
	case code != api.CodeInternal:
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		code = api.CodeCanceled
	case errors.As(err, &we) && we.Code != "":
		code = we.Code // a wrapped wire error from a downstream server
	}
	return &api.Error{Code: code, Message: err.Error(), OpID: id}
}

// readInputs feeds client frames into in until EOF, a bad frame or ctx end.
func readInputs(ctx context.Context, cancel context.CancelCauseFunc, br *bufio.Reader, raw syscall.RawConn, in chan<- api.Input) {
	defer close(in)
	for {
		frame, err := readFrame(br, MaxInputFrame)
		if err != nil {
			switch {
			case errors.Is(err, io.EOF):
				// Half-close or full close: only a hangup tells them apart.
				if peerGone(raw) {
					cancel(errClientGone)
				}
			case errors.Is(err, errFrameTooLarge):
				cancel(fmt.Errorf("%w: input %v", api.ErrInvalid, err))
			default:
				cancel(errClientGone)
			}
			return
		}
		var msg api.Input
		if err := decodeStrict(frame, &msg); err != nil {
			cancel(fmt.Errorf("%w: malformed input frame: %v", api.ErrInvalid, err))
			return
		}
		select {
		case in <- msg:
		case <-ctx.Done():
			return
		}
	}
}

// watchHangup cancels the call when the client closes its end entirely. A
// read cannot tell that from a half-close (both are EOF), so poll for HUP.
func watchHangup(ctx context.Context, cancel context.CancelCauseFunc, raw syscall.RawConn) {
	t := time.NewTicker(hangupPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if peerGone(raw) {
				cancel(errClientGone)
				return
			}
		}
	}
}

// peerGone reports whether both directions of the socket are shut down,
// i.e. the peer closed it (POLLHUP), without consuming any data.
func peerGone(raw syscall.RawConn) bool {
	gone := false
	err := raw.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd)}} // no events: HUP/ERR/NVAL are always reported
		n, err := unix.Poll(fds, 0)
		gone = err == nil && n > 0 && fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
	})
	return gone || err != nil
}

func peerCred(conn *net.UnixConn) (*unix.Ucred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}
