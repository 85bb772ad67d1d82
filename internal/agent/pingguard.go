package agent

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
)

// yamux frame header: version(1) type(1) flags(2) stream id(4) length(4),
// big-endian. Only data frames carry a payload, of length bytes.
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	yamuxTypePing   = 2
	yamuxFlagSYN    = 1
)

// maxPingsPerSecond bounds the pings the agent may send the host. yamux
// (v0.1.2) answers every ping SYN from a goroutine of its own that waits up
// to ConnectionWriteTimeout to write the reply, so a guest that writes pings
// without reading the replies would grow the daemon without bound. A real
// agent sends a keepalive ping every KeepAliveInterval (3 s).
const maxPingsPerSecond = 64

// pingGuard sits between the connection and the host's yamux session: it
// follows the frame headers of everything read and fails the read, ending the
// session, when the agent sends more than maxPingsPerSecond ping SYNs in a
// second. Any other malformation is left for yamux to refuse.
type pingGuard struct {
	r   io.Reader
	log *slog.Logger
	now func() time.Time

	hdr    [yamuxHeaderSize]byte
	nhdr   int    // header bytes collected
	skip   uint64 // payload bytes of the current data frame still to pass
	window time.Time
	pings  int
	err    error
}

func newPingGuard(r io.Reader, log *slog.Logger) *pingGuard {
	return &pingGuard{r: r, log: orDiscard(log), now: time.Now}
}

func (g *pingGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	if ferr := g.scan(p[:n]); ferr != nil {
		g.err = ferr
		g.log.Warn("closing the agent session", "err", ferr)
		return 0, ferr // the session ends; the rest of the flood is never parsed
	}
	return n, err
}

// scan follows the frames in b.
func (g *pingGuard) scan(b []byte) error {
	for len(b) > 0 {
		if g.skip > 0 {
			k := uint64(len(b))
			if k > g.skip {
				k = g.skip
			}
			g.skip -= k
			b = b[k:]
			continue
		}
		k := copy(g.hdr[g.nhdr:], b)
		g.nhdr += k
		b = b[k:]
		if g.nhdr < yamuxHeaderSize {
			return nil
		}
		g.nhdr = 0
		typ := g.hdr[1]
		flags := binary.BigEndian.Uint16(g.hdr[2:4])
		length := binary.BigEndian.Uint32(g.hdr[8:12])
		switch {
		case typ == yamuxTypeData:
			g.skip = uint64(length)
		case typ == yamuxTypePing && flags&yamuxFlagSYN != 0:
			if err := g.ping(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (g *pingGuard) ping() error {
	now := g.now()
	if now.Sub(g.window) >= time.Second || now.Before(g.window) {
		g.window, g.pings = now, 0
	}
	g.pings++
	if g.pings > maxPingsPerSecond {
		return fmt.Errorf("%w: ping flood: more than %d pings from the agent in a second", ErrProtocol, maxPingsPerSecond)
	}
	return nil
}

// guardedConn is the host's connection as yamux sees it: reads go through a
// pingGuard.
type guardedConn struct {
	net.Conn
	g *pingGuard
}

func (c *guardedConn) Read(p []byte) (int, error) { return c.g.Read(p) }
