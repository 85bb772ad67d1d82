package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"github.com/banger-dev/banger/internal/api"
)

// ErrNoDaemon means nothing is listening on the socket (it is missing, or
// stale); starting the daemon may help.
var ErrNoDaemon = errors.New("daemon not running")

// Client calls a server on a unix socket; one connection per call.
type Client struct {
	path string
}

// NewClient returns a client for the socket at socketPath.
func NewClient(socketPath string) *Client { return &Client{path: socketPath} }

type callOpts struct {
	events func(api.Event)
	input  <-chan api.Input
	opID   string
}

// CallOption configures one Call.
type CallOption func(*callOpts)

// WithEvents calls fn for each event frame, in order, on the calling goroutine.
func WithEvents(fn func(api.Event)) CallOption { return func(o *callOpts) { o.events = fn } }

// WithInput forwards frames from in to the server until in is closed, then
// half-closes the connection's write side (the server's Call.Input closes).
func WithInput(in <-chan api.Input) CallOption { return func(o *callOpts) { o.input = in } }

// WithOpID forwards an operation id for the server to adopt.
func WithOpID(id string) CallOption { return func(o *callOpts) { o.opID = id } }

// Call sends method with params (JSON-encoded unless nil), streams events,
// and decodes the final result into result (when non-nil). An error frame is
// returned as *api.Error, so errors.Is(err, api.ErrNotFound) works. Cancelling
// ctx closes the connection, which cancels the handler on the server.
func (c *Client) Call(ctx context.Context, method string, params, result any, opts ...CallOption) error {
	var o callOpts
	for _, fn := range opts {
		fn(&o)
	}
	req := api.Request{Version: api.Version, Method: method, OpID: o.opID}
	if params != nil {
		b, err := json.Marshal(params)
		if err != nil {
			return fmt.Errorf("%s: %w: encode params: %v", method, api.ErrInvalid, err)
		}
		req.Params = b
	}
	line, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("%s: encode request: %w", method, err)
	}
	if len(line) > MaxRequestFrame {
		return fmt.Errorf("%s: %w: request over %d bytes", method, api.ErrInvalid, MaxRequestFrame)
	}
	line = append(line, '\n')

	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w: %w", ErrNoDaemon, err)
		}
		return fmt.Errorf("connect to daemon: %w", err)
	}
	uc := conn.(*net.UnixConn)
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer func() {
		close(done)
		conn.Close()
		wg.Wait()
	}()
	// Closing the connection is what tells the server to cancel the handler.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	_, werr := conn.Write(line)
	if werr == nil && o.input != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			forwardInput(uc, o.input, done)
		}()
	}

	br := bufio.NewReaderSize(conn, 64<<10)
	for {
		frame, err := readFrame(br, MaxResponseFrame)
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return fmt.Errorf("%s: %w", method, ctx.Err())
			case werr != nil:
				// The server may have refused us before reading it all.
				return fmt.Errorf("%s: send request: %w", method, werr)
			case errors.Is(err, io.EOF):
				return fmt.Errorf("%s: connection closed before the final frame: %w", method, io.ErrUnexpectedEOF)
			default:
				return fmt.Errorf("%s: read response: %w", method, err)
			}
		}
		// Lenient on purpose: a newer server may add fields.
		var resp api.Response
		if err := json.Unmarshal(frame, &resp); err != nil {
			return fmt.Errorf("%s: malformed response frame: %w", method, err)
		}
		if !resp.Done {
			if resp.Event != nil && o.events != nil {
				o.events(*resp.Event)
			}
			continue
		}
		if resp.Error != nil {
			e := *resp.Error
			if e.OpID == "" {
				e.OpID = resp.OpID
			}
			return &e
		}
		if result != nil && len(resp.Result) > 0 {
			if err := json.Unmarshal(resp.Result, result); err != nil {
				return fmt.Errorf("%s: decode result: %w", method, err)
			}
		}
		return nil
	}
}

// forwardInput writes input frames until in closes (then half-closes) or
// the call is over. Large stdin is split so no frame exceeds the limit.
func forwardInput(conn *net.UnixConn, in <-chan api.Input, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case msg, ok := <-in:
			if !ok {
				_ = conn.CloseWrite()
				return
			}
			for len(msg.Stdin) > streamChunk {
				if writeInput(conn, api.Input{Stdin: msg.Stdin[:streamChunk]}) != nil {
					return
				}
				msg.Stdin = msg.Stdin[streamChunk:]
			}
			if writeInput(conn, msg) != nil {
				return // the server is gone or done; the read loop reports it
			}
		}
	}
}

func writeInput(conn net.Conn, msg api.Input) error {
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	_, err = conn.Write(append(b, '\n'))
	return err
}
