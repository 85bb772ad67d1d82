package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The dial operation (protocol 1.2) carries one TCP connection to a port on
// the guest's loopback, for `vm forward`. The host sends the request
// {"op":"dial","port":N}; the agent connects to 127.0.0.1:N (then [::1]:N)
// and answers 'S' (connected) or 'X' (the dial failed: its message says why,
// the host names the port). Then the stream is the connection:
//
//	host  → agent  'I' bytes for the guest service, 'e' when the host's client
//	                closed its sending side (the agent half-closes its socket)
//	agent → host   'O' bytes from the guest service, then 'R' when the
//	                service closed its sending side, or 'X' when the socket
//	                failed (reset), the agent's last frame
//
// Each direction ends on its own (half-close is honoured both ways). The host
// closes the stream when both are over; a stream the host closes earlier
// (before the agent's 'R' or 'X') is an abort, and the agent closes its socket.
// Data frames carry at most forwardChunk bytes, and neither side holds more
// than a frame and a yamux window per connection.

// dialMinor is the protocol minor that brought the dial operation.
const dialMinor = 2

const (
	// forwardChunk is the payload of one data frame of a dial stream, both
	// ways: many connections may be open at once.
	forwardChunk = 32 << 10
	// dialTimeout bounds each connect attempt inside the guest.
	dialTimeout = 10 * time.Second
)

var (
	// ErrDial: nothing in the guest accepted the connection.
	ErrDial = errors.New("cannot connect in the guest")
	// ErrInvalidPort: a port outside 1-65535.
	ErrInvalidPort = errors.New("invalid port")
)

// speaks reports whether the agent's handshake version has the given minor,
// and the version for an error message.
func (c *Client) speaks(minor int) (string, bool) {
	proto, _, _ := strings.Cut(c.version, " ")
	major, m, ok := parseVersion(proto)
	return token(proto, 16), ok && major == ProtoMajor && m >= minor
}

// Conn is one TCP connection to a port on the guest's loopback, carried by an
// agent stream (Client.Dial). Read returns the guest service's bytes and
// io.EOF once it closed its sending side; Write sends to it; CloseWrite
// closes the sending side (the service reads EOF); Close ends the connection,
// aborting it (the agent closes its socket) unless both sides had finished.
// One reader and one writer may use it at once. Nothing read is interpreted:
// the guest's bytes are only bytes for the caller.
type Conn struct {
	cl   *call
	port int

	rmu  sync.Mutex
	rest []byte // of the current output frame
	rerr error  // io.EOF after 'R'; the failure otherwise

	wmu    sync.Mutex
	wbuf   []byte
	wshut  bool
	closed sync.Once
}

// Dial connects to TCP port on the guest's loopback (127.0.0.1, else ::1)
// through the agent. ctx bounds the dial only; the Conn lives until Close.
// An agent older than protocol 1.2 is sent nothing and the error wraps
// ErrAgentTooOld; a refused or failed connect wraps ErrDial.
func (c *Client) Dial(ctx context.Context, port int) (*Conn, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("agent %s: port %d: want 1-65535: %w", opDial, port, ErrInvalidPort)
	}
	proto, ok := c.speaks(dialMinor)
	if !ok {
		return nil, fmt.Errorf("agent %s: %w for forward (protocol %s)", opDial, ErrAgentTooOld, proto)
	}
	cl, err := c.open(ctx, request{Op: opDial, Port: port})
	if err != nil {
		return nil, err
	}
	cl.fr.alloc = forwardChunk
	t, p, err := cl.fr.next()
	switch {
	case err != nil:
		if errors.Is(err, io.EOF) {
			err = errors.New("stream ended")
		}
		err = cl.wrap(err)
	case t == frameStarted:
		// From here the connection outlives ctx.
		cl.stop()
		cl.ctx = context.WithoutCancel(ctx)
		return &Conn{cl: cl, port: port}, nil
	case t == frameError:
		var m errorMsg
		if jerr := json.Unmarshal(p, &m); jerr != nil {
			err = cl.wrap(fmt.Errorf("%w: error frame: %v", ErrProtocol, jerr))
			break
		}
		msg := printable(m.Message, maxErrorText)
		if strings.Contains(msg, fmt.Sprintf("unknown operation %q", opDial)) {
			err = fmt.Errorf("agent %s: %w for forward (protocol %s)", opDial, ErrAgentTooOld, proto)
		} else {
			err = fmt.Errorf("agent %s: guest port %d: %w: %s", opDial, port, ErrDial, msg)
		}
	default:
		err = cl.wrap(fmt.Errorf("%w: frame %q before the connection", ErrProtocol, t))
	}
	cl.close()
	return nil, err
}

// Port is the guest port the connection goes to.
func (c *Conn) Port() int { return c.port }

// Read reads the guest service's bytes.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.rest) == 0 {
		if c.rerr != nil {
			return 0, c.rerr
		}
		t, b, err := c.cl.fr.next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: stream ended without a result", ErrProtocol)
			}
			c.rerr = c.cl.wrap(err)
			continue
		}
		c.rest, c.rerr = dialFrame(c.port, t, b)
		if errors.Is(c.rerr, ErrProtocol) {
			c.rerr = c.cl.wrap(c.rerr)
		}
	}
	n := copy(p, c.rest)
	c.rest = c.rest[n:]
	return n, nil
}

// dialFrame is one frame the agent sent on a connected dial stream: the
// guest service's bytes, or the end of them (io.EOF after 'R', the
// guest's failure after 'X', ErrProtocol for anything else).
func dialFrame(port int, t byte, b []byte) (data []byte, end error) {
	switch t {
	case frameOutput:
		return b, nil
	case frameResult:
		return nil, io.EOF
	case frameError:
		var m errorMsg
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("%w: error frame: %v", ErrProtocol, err)
		}
		return nil, fmt.Errorf("agent %s: guest port %d: connection failed in the guest: %s", opDial, port, printable(m.Message, maxErrorText))
	}
	return nil, fmt.Errorf("%w: unexpected frame %q", ErrProtocol, t)
}

// errWriteShut is a Write after CloseWrite.
var errWriteShut = errors.New("write after CloseWrite")

// Write sends p to the guest service, in frames of at most forwardChunk.
// It blocks while the connection's window is full (the service does not
// read).
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wshut {
		return 0, fmt.Errorf("agent %s: %w", opDial, errWriteShut)
	}
	if c.wbuf == nil {
		c.wbuf = make([]byte, frameHeader+forwardChunk)
	}
	n := 0
	for len(p) > 0 {
		k := copy(c.wbuf[frameHeader:], p)
		if err := c.cl.fw.writeBuf(frameInput, c.wbuf[:frameHeader+k]); err != nil {
			return n, c.cl.wrap(err)
		}
		n, p = n+k, p[k:]
	}
	return n, nil
}

// CloseWrite tells the guest service there is no more input (it reads EOF);
// its bytes still arrive.
func (c *Conn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wshut {
		return nil
	}
	c.wshut = true
	if err := c.cl.fw.write(frameInEOF, nil); err != nil {
		return c.cl.wrap(err)
	}
	return nil
}

// Close ends the connection and unblocks a Read or Write in progress.
func (c *Conn) Close() error {
	c.closed.Do(func() {
		_ = c.cl.st.SetDeadline(time.Unix(1, 0))
		c.cl.close()
	})
	return nil
}

// dialLoopback connects to port on 127.0.0.1, else on ::1.
func dialLoopback(ctx context.Context, port int) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	var errs []string
	for _, host := range []string{"127.0.0.1", "::1"} {
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			return c.(*net.TCPConn), nil
		}
		errs = append(errs, err.Error())
	}
	return nil, errors.New(strings.Join(errs, "; "))
}

// dial serves the dial operation: the connection is spliced to the stream
// until both directions are over or the host aborts.
func (s *Server) dial(ctx context.Context, req request, fr *frameReader, fw *frameWriter) error {
	if req.Port < 1 || req.Port > 65535 {
		return fmt.Errorf("port %d: want 1-65535: %w", req.Port, ErrInvalidPort)
	}
	conn, err := dialLoopback(ctx, req.Port)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	if err := fw.write(frameStarted, nil); err != nil {
		return errReplied
	}

	// host → service, then wait for the host to close the stream: closing it
	// before our last frame aborts the connection.
	hostDone := make(chan struct{})
	// inErr is a failed write to the service: the output loop reports it
	// rather than the read error it causes by closing the socket.
	var inErr error
	var inMu sync.Mutex
	go func() {
		defer close(hostDone)
		defer conn.Close()
		shut := false
		for {
			t, b, err := fr.next()
			if err != nil {
				return // the host closed the stream (or the session ended)
			}
			switch {
			case t == frameInput && !shut:
				if _, err := conn.Write(b); err != nil {
					inMu.Lock()
					inErr = err
					inMu.Unlock()
					_ = conn.Close()
					shut = true // discard the rest until the host closes
				}
			case t == frameInEOF && !shut:
				_ = conn.CloseWrite()
				shut = true
			case t == frameInput || t == frameInEOF:
			default:
				return // a protocol error: abort
			}
		}
	}()

	// service → host.
	buf := make([]byte, frameHeader+forwardChunk)
	var rerr error
	for {
		n, err := conn.Read(buf[frameHeader:])
		if n > 0 {
			if werr := fw.writeBuf(frameOutput, buf[:frameHeader+n]); werr != nil {
				rerr = nil // the stream is gone: nobody to tell
				break
			}
		}
		if err != nil {
			rerr = err
			break
		}
	}
	select {
	case <-hostDone: // aborted by the host: no last frame
	default:
		switch {
		case rerr == io.EOF:
			_ = fw.writeJSON(frameResult, struct{}{})
		case rerr != nil:
			inMu.Lock()
			if inErr != nil {
				rerr = inErr
			}
			inMu.Unlock()
			_ = fw.writeJSON(frameError, errorMsg{Message: rerr.Error()})
		}
	}
	select {
	case <-hostDone:
	case <-ctx.Done():
	}
	return errReplied
}
