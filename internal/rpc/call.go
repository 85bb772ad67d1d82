package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// Call is one request as seen by a handler.
type Call struct {
	Method string
	Params json.RawMessage
	OpID   string
	// PeerUID and PeerPID identify the client process (SO_PEERCRED).
	PeerUID int
	PeerPID int

	w  *frameWriter
	in chan api.Input
	// ctx is the call's context; sv the Serve it belongs to (nil in a Call
	// made outside a server).
	ctx context.Context
	sv  *serving
}

// Detach returns a context for work that must outlive the client: it is not
// cancelled when the client hangs up, only when the server interrupts its
// calls at shutdown (cause api.ErrShuttingDown). Serve does not return
// before done is called, so the work is never cut short by the process
// exiting. Call it from the handler, before it returns; call done once.
func (c *Call) Detach() (ctx context.Context, done func()) {
	if c.sv == nil {
		return context.WithoutCancel(c.context()), func() {}
	}
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(c.context()))
	stop := context.AfterFunc(c.sv.calls, func() { cancel(context.Cause(c.sv.calls)) })
	c.sv.wg.Add(1) // the handler's own connection is still counted: never from zero
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			stop()
			cancel(nil)
			c.sv.wg.Done()
		})
	}
}

func (c *Call) context() context.Context {
	if c.ctx == nil {
		return context.Background()
	}
	return c.ctx
}

// Decode decodes the request params into v strictly: unknown fields and
// trailing data are refused. Absent params decode as an empty object. Every
// failure wraps api.ErrInvalid.
func (c *Call) Decode(v any) error {
	p := c.Params
	if len(p) == 0 || string(p) == "null" {
		p = json.RawMessage("{}")
	}
	if err := decodeStrict(p, v); err != nil {
		return fmt.Errorf("%s params: %w: %v", c.Method, api.ErrInvalid, err)
	}
	return nil
}

// Event sends a progress or output frame. Safe for concurrent use; fails
// once the final frame has been sent or the client is gone.
func (c *Call) Event(ev api.Event) error {
	return c.w.write(api.Response{OpID: c.OpID, Event: &ev})
}

// Progress sends Event{Stage, Message}; a client that went away is noticed
// through ctx, so the error is not interesting here.
func (c *Call) Progress(stage, msg string) {
	_ = c.Event(api.Event{Stage: stage, Message: msg})
}

// Stdout returns a writer whose writes become stdout event frames.
func (c *Call) Stdout() io.Writer { return streamWriter{c, api.StreamStdout} }

// Stderr returns a writer whose writes become stderr event frames.
func (c *Call) Stderr() io.Writer { return streamWriter{c, api.StreamStderr} }

// Input delivers the frames the client sent after the request, in order. It
// is closed when the client half-closes its write side or disconnects. Frames
// not read here back up into the socket (flow control), they are not dropped.
func (c *Call) Input() <-chan api.Input { return c.in }

type streamWriter struct {
	c      *Call
	stream string
}

func (s streamWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), streamChunk)]
		// Copy: the caller may reuse p once Write returns, and the frame is
		// encoded synchronously, but keep Data independent regardless.
		data := append([]byte(nil), chunk...)
		if err := s.c.Event(api.Event{Stream: s.stream, Data: data}); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

var errCallDone = errors.New("call already finished")

// frameWriter serialises response frames onto the connection.
type frameWriter struct {
	mu   sync.Mutex
	conn net.Conn
	done bool
}

func (w *frameWriter) write(resp api.Response) error {
	b, err := json.Marshal(resp)
	if err != nil {
		return fmt.Errorf("encode frame: %w", err)
	}
	if len(b) > MaxResponseFrame {
		return fmt.Errorf("%w: response frame over %d bytes", api.ErrInvalid, MaxResponseFrame)
	}
	b = append(b, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return errCallDone
	}
	if resp.Done {
		w.done = true
		// A client that stopped reading must not pin this goroutine forever.
		_ = w.conn.SetWriteDeadline(time.Now().Add(finalWriteTimeout))
	}
	if _, err := w.conn.Write(b); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	return nil
}
