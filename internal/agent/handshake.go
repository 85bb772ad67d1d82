package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

// Protocol version. A major bump breaks compatibility; a minor one adds
// operations or JSON fields an older peer ignores.
const (
	ProtoMajor = 1
	ProtoMinor = 2 // 1.1: identity; 1.2: dial
)

const (
	helloPrefix = "BANGER-AGENT-HELLO "
	replyPrefix = "BANGER-AGENT-"
	okVerb      = "BANGER-AGENT-OK"
	errVerb     = "BANGER-AGENT-ERR"

	maxJunk = 1 << 20 // stale bytes skipped before a handshake line
	maxLine = 4 << 10 // length of a handshake line
)

// scanLine reads r until a line holding marker and returns that line from the
// last occurrence of marker on, without the line end. Everything before it is
// junk, charged to *junk and limited to maxJunk in total; a marker line longer
// than maxLine is an error. Reading byte by byte from a bufio.Reader never
// consumes more than the handshake, so what follows stays for yamux.
func scanLine(r io.ByteReader, marker string, junk *int) (string, error) {
	m := []byte(marker)
	var line []byte
	for {
		if *junk > maxJunk {
			return "", fmt.Errorf("%w: no %q line in %d bytes of stale input", ErrProtocol, strings.TrimSpace(marker), maxJunk)
		}
		c, err := r.ReadByte()
		if err != nil {
			return "", err
		}
		if c == '\n' {
			if i := bytes.LastIndex(line, m); i >= 0 {
				*junk += i
				return strings.TrimRight(string(line[i:]), "\r"), nil
			}
			*junk += len(line) + 1
			line = line[:0]
			continue
		}
		line = append(line, c)
		if len(line) <= maxLine {
			continue
		}
		// Over-long: keep the marker line if there is one, else only a tail
		// that may hold the start of the next marker.
		keep := len(m) - 1
		if i := bytes.LastIndex(line, m); i >= 0 {
			if i == 0 {
				return "", fmt.Errorf("%w: %q line longer than %d bytes", ErrProtocol, strings.TrimSpace(marker), maxLine)
			}
			keep = len(line) - i
		}
		*junk += len(line) - keep
		line = append(line[:0], line[len(line)-keep:]...)
	}
}

// parseVersion parses "<major>.<minor>".
func parseVersion(s string) (major, minor int, ok bool) {
	a, b, found := strings.Cut(s, ".")
	if !found {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(a)
	minor, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil || major < 0 || minor < 0 || major > 9999 || minor > 9999 {
		return 0, 0, false
	}
	return major, minor, true
}

func validNonce(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && len(s)%2 == 0
}

// token makes s one printable-ASCII word of at most max bytes, for text that
// crosses the handshake (build versions, reasons) or comes from the guest.
func token(s string, max int) string {
	b := []byte(s)
	for i, c := range b {
		if c <= ' ' || c >= 0x7f {
			b[i] = '_'
		}
	}
	if len(b) > max {
		b = b[:max]
	}
	return string(b)
}

// printable replaces bytes other than printable ASCII and space, and caps s.
func printable(s string, max int) string {
	b := []byte(s)
	for i, c := range b {
		if c < ' ' || c >= 0x7f {
			b[i] = '?'
		}
	}
	if len(b) > max {
		b = b[:max]
	}
	return string(b)
}

// withDeadline bounds the handshake on conn by ctx. The returned function
// clears the deadline and reports ctx's error if ctx ended meanwhile.
func withDeadline(ctx context.Context, conn net.Conn) func() error {
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	return func() error {
		if !stop() && ctx.Err() != nil {
			return ctx.Err()
		}
		return conn.SetDeadline(time.Time{})
	}
}

// handshakeErr reports ctx's end rather than the deadline it caused on the
// connection (which can fire a moment before ctx's own timer).
func handshakeErr(ctx context.Context, err, doneErr error) error {
	if doneErr == nil && (err == nil || !errors.Is(err, os.ErrDeadlineExceeded)) {
		return err
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("agent handshake: %w", cerr)
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return fmt.Errorf("agent handshake: %w", context.DeadlineExceeded)
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("agent handshake: %w", doneErr)
}

// clientHandshake runs the host side; it returns the reader holding whatever
// followed the reply and the agent's version ("1.0 <build>").
func clientHandshake(ctx context.Context, conn net.Conn) (br *bufio.Reader, version string, err error) {
	done := withDeadline(ctx, conn)
	defer func() { err = handshakeErr(ctx, err, done()) }()
	var nb [8]byte
	_, _ = rand.Read(nb[:])
	nonce := hex.EncodeToString(nb[:])
	if _, err := fmt.Fprintf(conn, "%s%d.%d %s\n", helloPrefix, ProtoMajor, ProtoMinor, nonce); err != nil {
		return nil, "", fmt.Errorf("agent handshake: %w", err)
	}
	br = bufio.NewReaderSize(conn, 64<<10)
	junk := 0
	for {
		line, err := scanLine(br, replyPrefix, &junk)
		if err != nil {
			return nil, "", fmt.Errorf("agent handshake: %w", err)
		}
		f := strings.Fields(line)
		// Our own HELLO echoed by a tty, a reply to an earlier daemon: junk.
		if len(f) < 3 || f[2] != nonce || (f[0] != okVerb && f[0] != errVerb) {
			junk += len(line)
			continue
		}
		major, minor, ok := parseVersion(f[1])
		if !ok {
			return nil, "", fmt.Errorf("agent handshake: %w: bad version %q", ErrProtocol, token(f[1], 32))
		}
		if f[0] == errVerb {
			return nil, "", fmt.Errorf("agent handshake: %w: agent speaks %d.%d and refused this daemon's %d.%d (%s): rebuild the image or upgrade banger",
				ErrVersion, major, minor, ProtoMajor, ProtoMinor, printable(strings.Join(f[3:], " "), 200))
		}
		if major != ProtoMajor {
			return nil, "", fmt.Errorf("agent handshake: %w: agent speaks %d.%d, this daemon %d.x: rebuild the image or upgrade banger",
				ErrVersion, major, minor, ProtoMajor)
		}
		version = fmt.Sprintf("%d.%d", major, minor)
		if len(f) > 3 {
			version += " " + token(f[3], 64)
		}
		return br, version, nil
	}
}

// serverHandshake runs the agent side: wait for a HELLO, answer it.
func serverHandshake(ctx context.Context, conn net.Conn, build string) (br *bufio.Reader, err error) {
	done := withDeadline(ctx, conn)
	defer func() { err = handshakeErr(ctx, err, done()) }()
	br = bufio.NewReaderSize(conn, 64<<10)
	junk := 0
	for {
		line, err := scanLine(br, helloPrefix, &junk)
		if err != nil {
			return nil, fmt.Errorf("agent handshake: %w", err)
		}
		f := strings.Fields(line)
		var major, minor int
		ok := len(f) == 3 && validNonce(f[2])
		if ok {
			major, minor, ok = parseVersion(f[1])
		}
		if !ok { // a HELLO cut short by a dying host, then other bytes
			junk += len(line)
			continue
		}
		nonce := f[2]
		if major != ProtoMajor {
			_, _ = fmt.Fprintf(conn, "%s %d.%d %s host protocol %d.%d not supported\n", errVerb, ProtoMajor, ProtoMinor, nonce, major, minor)
			return nil, fmt.Errorf("agent handshake: %w: host speaks %d.%d, this agent %d.x", ErrVersion, major, minor, ProtoMajor)
		}
		if build == "" {
			build = "unknown"
		}
		if _, err := fmt.Fprintf(conn, "%s %d.%d %s %s\n", okVerb, ProtoMajor, ProtoMinor, nonce, token(build, 64)); err != nil {
			return nil, fmt.Errorf("agent handshake: %w", err)
		}
		return br, nil
	}
}

// bufConn reads through the handshake's buffered reader, so no byte that
// arrived with the handshake is lost to yamux.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// yamuxConfig is the session configuration of both sides.
func yamuxConfig(log *slog.Logger, backlog int) *yamux.Config {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = backlog
	c.EnableKeepAlive = true
	// A dead peer whose stream stays open (QEMU keeps the host socket
	// connected when the guest agent dies) ends the session within ~8 s;
	// a restarted agent's WakeLine ends it sooner.
	c.KeepAliveInterval = 3 * time.Second
	c.ConnectionWriteTimeout = 5 * time.Second
	c.MaxStreamWindowSize = 1 << 20 // fewer window round trips on bulk copies
	c.StreamCloseTimeout = 30 * time.Second
	// An open the peer does not acknowledge within this ends the session.
	// Only the host opens streams, and the agent accepts them at once.
	c.StreamOpenTimeout = 10 * time.Second
	c.LogOutput = nil
	c.Logger = slog.NewLogLogger(orDiscard(log).Handler(), slog.LevelDebug)
	return c
}

func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}
