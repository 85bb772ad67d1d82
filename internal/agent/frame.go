package agent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Frame types; see the package documentation.
const (
	frameRequest byte = 'Q'
	frameInput   byte = 'I'
	frameInEOF   byte = 'e'
	frameOutput  byte = 'O'
	frameStderr  byte = 'E'
	frameResult  byte = 'R'
	frameError   byte = 'X'
	frameStarted byte = 'S' // exec: the process runs; nothing of it ran before
)

// Payload limits.
const (
	MaxControl = 64 << 10  // JSON payloads
	MaxData    = 256 << 10 // input, output and stderr payloads

	frameHeader = 5
	dataChunk   = 128 << 10 // what senders put in one data frame
)

var (
	// ErrProtocol marks a peer that broke the protocol: an unknown frame, an
	// over-size length, a frame out of order. From an agent it means a broken
	// or hostile guest.
	ErrProtocol = errors.New("agent protocol violation")
	// ErrNotStarted: an exec failed before the agent said the process
	// started, so nothing ran and no stdin was read: the caller may run it
	// another way.
	ErrNotStarted = errors.New("agent exec did not start")
	// ErrVersion is a protocol major version the other side does not speak.
	ErrVersion = errors.New("agent protocol version mismatch")
)

// frameLimit is the largest payload a frame of type t may carry; -1 for an
// unknown type.
func frameLimit(t byte) int {
	switch t {
	case frameInput, frameOutput, frameStderr:
		return MaxData
	case frameRequest, frameResult, frameError:
		return MaxControl
	case frameInEOF, frameStarted:
		return 0
	}
	return -1
}

// frameReader reads frames into one reused buffer: a payload is valid until
// the next call.
type frameReader struct {
	r   io.Reader
	hdr [frameHeader]byte
	buf []byte
	// alloc, when set, is the buffer allocated for a frame of at most that
	// many bytes instead of the type's limit (dial streams: many of them,
	// small frames).
	alloc int
}

func newFrameReader(r io.Reader) *frameReader { return &frameReader{r: r} }

// next returns the next frame. The length is checked against the type's limit
// before anything is allocated.
func (fr *frameReader) next() (byte, []byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return 0, nil, err
	}
	t, n := fr.hdr[0], binary.BigEndian.Uint32(fr.hdr[1:])
	limit := frameLimit(t)
	if limit < 0 {
		return 0, nil, fmt.Errorf("%w: unknown frame type 0x%02x", ErrProtocol, t)
	}
	if uint64(n) > uint64(limit) {
		return 0, nil, fmt.Errorf("%w: frame %q of %d bytes exceeds the %d-byte limit", ErrProtocol, t, n, limit)
	}
	if cap(fr.buf) < int(n) {
		// One allocation at the type's limit, so a stream of growing frames
		// does not reallocate each time.
		size := limit
		if fr.alloc > 0 && int(n) <= fr.alloc {
			size = fr.alloc
		}
		fr.buf = make([]byte, size)
	}
	p := fr.buf[:n]
	if _, err := io.ReadFull(fr.r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return t, p, nil
}

// frameWriter serialises whole frames onto a stream written by several
// goroutines (stdout and stderr pumps, stdin and signal forwarders).
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// write sends one frame; header and payload go out in one Write.
func (fw *frameWriter) write(t byte, p []byte) error {
	b := make([]byte, frameHeader+len(p))
	copy(b[frameHeader:], p)
	return fw.writeBuf(t, b)
}

// writeBuf sends a frame whose payload is already at b[frameHeader:]; it
// saves a copy for data frames.
func (fw *frameWriter) writeBuf(t byte, b []byte) error {
	if l := frameLimit(t); l < 0 || len(b)-frameHeader > l {
		return fmt.Errorf("frame %q of %d bytes exceeds the %d-byte limit", t, len(b)-frameHeader, l)
	}
	b[0] = t
	binary.BigEndian.PutUint32(b[1:frameHeader], uint32(len(b)-frameHeader))
	fw.mu.Lock()
	defer fw.mu.Unlock()
	_, err := fw.w.Write(b)
	return err
}

// writeJSON sends v as a control frame.
func (fw *frameWriter) writeJSON(t byte, v any) error {
	p, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return fw.write(t, p)
}

// pumpData copies r into data frames of type t until EOF, which it returns as
// nil. Read and write errors are told apart for the caller.
func (fw *frameWriter) pumpData(t byte, r io.Reader) (readErr, writeErr error) {
	buf := make([]byte, frameHeader+dataChunk)
	for {
		n, err := r.Read(buf[frameHeader:])
		if n > 0 {
			if werr := fw.writeBuf(t, buf[:frameHeader+n]); werr != nil {
				return nil, werr
			}
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return err, nil
		}
	}
}

// request is the first frame of every stream.
type request struct {
	Op      string      `json:"op"`
	Command string      `json:"command,omitempty"` // exec
	Stdin   bool        `json:"stdin,omitempty"`   // exec: input frames follow
	TTY     *TTY        `json:"tty,omitempty"`     // exec
	Path    string      `json:"path,omitempty"`    // put (directory), get
	Stream  uint32      `json:"stream,omitempty"`  // ctl: the exec's stream
	Signal  string      `json:"signal,omitempty"`  // ctl
	Resize  *Winsize    `json:"resize,omitempty"`  // ctl
	Kill    bool        `json:"kill,omitempty"`    // ctl
	Port    int         `json:"port,omitempty"`    // dial (forward.go)
	Session *sessionReq `json:"session,omitempty"` // session_* (session.go)

	Identity *Identity `json:"identity,omitempty"` // identity (identity.go)
}

// Operation names.
const (
	opInfo     = "info"
	opExec     = "exec"
	opPut      = "put"
	opGet      = "get"
	opStats    = "stats"
	opPorts    = "ports"
	opShutdown = "shutdown"
	opCtl      = "ctl"
	opIdentity = "identity"
	opDial     = "dial"

	opSessionStart  = "session_start"
	opSessionList   = "session_list"
	opSessionLogs   = "session_logs"
	opSessionAttach = "session_attach"
	opSessionSend   = "session_send"
	opSessionKill   = "session_kill"
	opSessionResize = "session_resize"
)

type execResult struct {
	ExitCode int `json:"exit_code"`
}

type errorMsg struct {
	Message string `json:"message"`
	Code    string `json:"code,omitempty"` // sessions: not_found, exists, ended, invalid
}
