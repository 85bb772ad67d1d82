package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"
)

// Server is the guest end: banger-agent serve.
type Server struct {
	Log     *slog.Logger
	Version string // build version, sent in the handshake and by Info
	// Poweroff is run after Shutdown's reply went out; nil means
	// "systemctl --no-block poweroff", falling back to reboot(2).
	Poweroff func() error
	// Sync flushes file systems before Shutdown replies; nil means sync(2).
	Sync func()
	// Stats samples the guest for the stats operation; nil reads /proc and
	// statfs (a test seam, like Sync and Poweroff).
	Stats func() (Stats, error)
	// Sessions places supervised sessions (session_linux.go).
	Sessions SessionConfig
	// Identity places the identity operation (identity_linux.go).
	Identity IdentityConfig

	identityMu sync.Mutex // one identity operation at a time
}

// errAborted is an operation the host abandoned mid-way.
var errAborted = errors.New("aborted by the host")

// session is the state of one connection: the running execs by stream ID,
// for ctl requests.
type session struct {
	mu    sync.Mutex
	execs map[uint32]*execProc
}

func (s *session) lookup(id uint32) *execProc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.execs[id]
}

func (s *session) set(id uint32, p *execProc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p == nil {
		delete(s.execs, id)
	} else {
		s.execs[id] = p
	}
}

// ServeConn serves one host connection: the handshake, then every stream the
// host opens, until the connection or ctx ends. It closes conn; execs still
// running then are killed.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn) error {
	log := orDiscard(s.Log)
	defer conn.Close()
	br, err := serverHandshake(ctx, conn, s.Version)
	if err != nil {
		return err
	}
	ymux, err := yamux.Server(&bufConn{Conn: conn, r: br}, yamuxConfig(log, 256))
	if err != nil {
		return fmt.Errorf("agent session: %w", err)
	}
	// Handlers see ctx cancelled when the session ends, so nothing outlives it.
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	defer ymux.Close()
	stop := context.AfterFunc(ctx, func() { _ = ymux.Close() })
	defer stop()
	sess := &session{execs: map[uint32]*execProc{}}
	for {
		st, err := ymux.AcceptStream()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return nil // the host went away
		}
		wg.Go(func() { s.serveStream(ctx, sess, st) })
	}
}

func (s *Server) serveStream(ctx context.Context, sess *session, st *yamux.Stream) {
	log := orDiscard(s.Log)
	defer st.Close()
	fr, fw := newFrameReader(st), &frameWriter{w: st}
	t, p, err := fr.next()
	if err != nil || t != frameRequest {
		log.Warn("agent: bad request frame", "type", t, "err", err)
		return
	}
	var req request
	if err := json.Unmarshal(p, &req); err != nil {
		_ = fw.writeJSON(frameError, errorMsg{Message: "bad request: " + err.Error()})
		return
	}
	if req.Op != opExec && req.Op != opPut && req.Op != opDial && req.Op != opSessionAttach && req.Op != opSessionSend && req.Op != opSessionLogs {
		// Operations without input: a host that closes its end aborts them
		// (a Get stuck on a full window must not wait for the close timeout).
		go func() {
			_, _ = io.Copy(io.Discard, st)
			_ = st.Close()
		}()
	}
	var res any = struct{}{}
	switch req.Op {
	case opInfo:
		res, err = s.info()
	case opStats:
		res, err = s.stats()
	case opPorts:
		err = writePorts(fw)
	case opExec:
		res, err = s.exec(ctx, sess, st.StreamID(), req, fr, fw)
	case opCtl:
		err = ctl(sess, req)
	case opPut:
		err = put(req.Path, &inputReader{fr: fr})
	case opGet:
		err = get(req.Path, fw)
	case opShutdown:
		s.shutdown(fw)
		return
	case opIdentity:
		err = s.reidentify(ctx, req.Identity)
	case opDial:
		err = s.dial(ctx, req, fr, fw)
	case opSessionStart:
		res, err = s.sessionStart(ctx, req.Session)
	case opSessionList:
		err = s.writeSessionList(fw)
	case opSessionLogs:
		err = s.sessionLogs(ctx, req.Session, fr, fw)
	case opSessionAttach:
		err = s.sessionProxy(ctx, supAttach, req.Session, st, fw)
	case opSessionSend:
		err = s.sessionProxy(ctx, supSend, req.Session, st, fw)
	case opSessionKill:
		err = s.sessionCtl(supKill, req.Session)
	case opSessionResize:
		err = s.sessionCtl(supResize, req.Session)
	default:
		err = fmt.Errorf("unknown operation %q", req.Op)
	}
	if errors.Is(err, errReplied) {
		return
	}
	if err != nil {
		log.Debug("agent: operation failed", "op", req.Op, "err", err)
		msg := err.Error()
		if len(msg) > 8<<10 {
			msg = msg[:8<<10]
		}
		_ = fw.writeJSON(frameError, errorMsg{Message: msg, Code: errCode(err)})
		return
	}
	if err := fw.writeJSON(frameResult, res); err != nil {
		log.Debug("agent: sending result", "op", req.Op, "err", err)
	}
}

// shutdown syncs, replies, then powers off: the host learns the disks are
// safe before the guest disappears.
func (s *Server) shutdown(fw *frameWriter) {
	log := orDiscard(s.Log)
	if s.Sync != nil {
		s.Sync()
	} else {
		unix.Sync()
	}
	// A yamux Write returns once the frame is written to the connection.
	if err := fw.writeJSON(frameResult, struct{}{}); err != nil {
		log.Warn("agent: shutdown reply", "err", err)
	}
	poweroff := s.Poweroff
	if poweroff == nil {
		poweroff = defaultPoweroff
	}
	log.Info("agent: powering off")
	if err := poweroff(); err != nil {
		log.Error("agent: poweroff", "err", err)
	}
}

func defaultPoweroff() error {
	cmd := exec.Command("systemctl", "--no-block", "poweroff")
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	// No systemd: power off directly, after a moment for the reply to leave.
	time.Sleep(200 * time.Millisecond)
	if rerr := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); rerr != nil {
		return fmt.Errorf("systemctl poweroff: %v: %s; reboot(2): %w", err, printable(string(out), 512), rerr)
	}
	return nil
}

// inputReader reads the input frames of a stream up to the end-of-input
// frame; a stream that ends before it was aborted.
type inputReader struct {
	fr   *frameReader
	rest []byte
	eof  bool
}

func (r *inputReader) Read(p []byte) (int, error) {
	for len(r.rest) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		t, b, err := r.fr.next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return 0, errAborted
			}
			return 0, err
		}
		switch t {
		case frameInput:
			r.rest = b
		case frameInEOF:
			r.eof = true
		default:
			return 0, fmt.Errorf("%w: frame %q in input", ErrProtocol, t)
		}
	}
	n := copy(p, r.rest)
	r.rest = r.rest[n:]
	return n, nil
}

// outputWriter packs writes into output frames of dataChunk bytes; Flush
// sends the rest.
type outputWriter struct {
	fw  *frameWriter
	buf []byte // header space, then payload
}

func newOutputWriter(fw *frameWriter) *outputWriter {
	return &outputWriter{fw: fw, buf: make([]byte, frameHeader, frameHeader+dataChunk)}
}

func (w *outputWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+c]
		p, n = p[c:], n+c
		if len(w.buf) == cap(w.buf) {
			if err := w.Flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func (w *outputWriter) Flush() error {
	if len(w.buf) == frameHeader {
		return nil
	}
	err := w.fw.writeBuf(frameOutput, w.buf)
	w.buf = w.buf[:frameHeader]
	return err
}
